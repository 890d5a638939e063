"""Package of the HTTP gateway: share links over plain HTTP (gateway.daemon)."""

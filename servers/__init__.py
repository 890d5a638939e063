"""Storage servers: content-addressed chunks on disk, verified, replicated."""

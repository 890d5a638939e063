"""The proxy: the only holder of metadata, and the one that decides placement."""

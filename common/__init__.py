"""Shared pieces of filecluster: the wire codec, message table, errors, hashing and config."""

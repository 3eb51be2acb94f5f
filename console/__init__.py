"""Secure AI Studio console and command line: clients of the daemon's socket."""

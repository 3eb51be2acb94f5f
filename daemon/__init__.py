"""Secure AI Studio daemon: the service that owns the model, the queue, the keys and the audit chain."""

__version__ = "0.1.0"

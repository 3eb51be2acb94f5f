"""The one error of model handling (no imports: the daemon and the worker both raise and catch it)."""

from __future__ import annotations


class ModelError(Exception):
    """The configured model cannot be used; the message names the file and what to change."""

"""Logging to stderr in a form journald understands (sd-daemon `<N>` priority prefixes)."""

from __future__ import annotations

import logging
import os
import sys

SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """`<6>sai.queue: message`: journald adds its own timestamps and reads the priority."""

    def format(self, record: logging.LogRecord) -> str:
        priority = SYSLOG_PRIORITY.get(record.levelno, 6)
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


def plain_formatter() -> logging.Formatter:
    """`2025-01-31T12:00:00+0000 INFO sai.queue: message`: a terminal, or the embedded daemon's log file."""
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S%z")


def setup(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(plain_formatter())
    root = logging.getLogger("sai")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False

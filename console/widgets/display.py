"""Formatting shared by the panes: times, sizes, bars, and the filter language."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

BAR_FULL, BAR_EMPTY = "█", "░"
WARNING_AT, CRITICAL_AT = 0.75, 0.90


def parse_time(value: Any) -> float | None:
    """RFC 3339 text or epoch seconds as epoch seconds; None when absent or unreadable."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def duration(seconds: float | None) -> str:
    """A short human duration: 42s, 5m, 3h12m, 2d4h."""
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s" if minutes < 10 else f"{minutes}m"
    return f"{secs}s"


def clock_time(epoch: float | None, utc: bool = False) -> str:
    if epoch is None:
        return "-"
    moment = datetime.fromtimestamp(epoch, timezone.utc if utc else None)
    return moment.strftime("%H:%M:%S")


def human_bytes(value: Any) -> str:
    """1.5 GiB; "-" for no value; a non-number (NVML's "n/a") as it is."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-" if value is None else str(value)
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def bytes_of(used: float, total: float) -> str:
    """`12.5/80.0 GiB`: both in the unit that suits the total."""
    unit, scale = "B", 1.0
    for name in ("KiB", "MiB", "GiB", "TiB"):
        if total < scale * 1024:
            break
        unit, scale = name, scale * 1024
    return f"{used / scale:.1f}/{total / scale:.1f} {unit}"


def bar(fraction: float, width: int) -> str:
    fraction = min(1.0, max(0.0, fraction))
    full = round(fraction * width)
    return BAR_FULL * full + BAR_EMPTY * (width - full)


def level(fraction: float) -> str:
    """'ok', 'warning' or 'critical' by the shared thresholds (colours come from the .tcss)."""
    if fraction >= CRITICAL_AT:
        return "critical"
    if fraction >= WARNING_AT:
        return "warning"
    return "ok"


def short_hash(value: str | None, length: int = 12) -> str:
    return (value or "-")[:length]


RELATIVE = re.compile(r"^-?\s*(\d+(?:\.\d+)?)\s*([smhd])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_moment(text: str, now: float) -> float:
    """'-90m', '2h', '14:05', '14:05:30', or an ISO date-time, as epoch seconds (local time)."""
    text = text.strip()
    match = RELATIVE.match(text)
    if match:
        return now - float(match.group(1)) * UNITS[match.group(2)]
    for fmt in ("%H:%M", "%H:%M:%S"):
        try:
            parsed = datetime.strptime(text, fmt)
        except ValueError:
            continue
        today = datetime.fromtimestamp(now)
        moment = today.replace(hour=parsed.hour, minute=parsed.minute, second=parsed.second, microsecond=0)
        stamp = moment.timestamp()
        return stamp - 86400 if stamp > now else stamp
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ValueError(f"{text!r} is not a time: use -30m, 2h, 14:05, 14:05:30 or 2026-11-26T14:05") from None


@dataclass(frozen=True)
class Term:
    text: str
    field: str | None
    negate: bool


class RowFilter:
    """Words that must all match (case-insensitive substrings). `field:value` matches one field;
    a leading `!` negates a word. `state:running !user:bob lighthouse`."""

    def __init__(self, text: str = "") -> None:
        self.text = text.strip()
        self.terms: list[Term] = []
        for word in self.text.split():
            negate = word.startswith("!")
            word = word[1:] if negate else word
            field, sep, value = word.partition(":")
            if sep and field and value:
                self.terms.append(Term(value.lower(), field.lower(), negate))
            elif word:
                self.terms.append(Term(word.lower(), None, negate))

    def __bool__(self) -> bool:
        return bool(self.terms)

    def matches(self, fields: dict[str, str]) -> bool:
        for term in self.terms:
            if term.field is None:
                hit = any(term.text in value for value in fields.values())
            else:
                hit = term.text in fields.get(term.field, "")
            if hit == term.negate:
                return False
        return True


def filtered(items: Iterable[Any], row_filter: RowFilter, fields: Callable[[Any], dict[str, str]]) -> list[Any]:
    if not row_filter:
        return list(items)
    return [item for item in items if row_filter.matches(fields(item))]


def now() -> float:
    return time.time()

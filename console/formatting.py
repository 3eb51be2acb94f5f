"""How the console and `sai` write times, durations, sizes and bars, and read a moment (`-30m`, `14:05`)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

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
    moment = datetime.fromtimestamp(epoch, UTC if utc else None)
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


def now() -> float:
    return time.time()

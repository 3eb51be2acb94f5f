"""Alert rules from `[alerts]` and their hysteresis.

A rule turns a sample into (subject, value) pairs: one for the host, one per GPU. Each pair has a
level, 0 (fine), 1 (warning) or 2 (critical), that moves like this:
- up to a level once the value reaches that level's threshold (for `raise_after` samples in a row);
- down only once the value is back past the threshold by the margin (`hysteresis` × threshold),
  for `clear_after` samples in a row.
So a value hovering around a threshold raises one alert and leaves it raised; it clears once the
value is clearly back. A subject with no value (no worker, a GPU gone, too few jobs) counts as back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from daemon.config import ConfigError

GIB = 1024 ** 3
LEVELS = ("ok", "warning", "critical")
SEVERITY_LEVEL = {"info": 0, "warning": 1, "critical": 2}

Pairs = list[tuple[str, float | None]]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _get(sample: dict[str, Any], *path: str) -> Any:
    node: Any = sample
    for part in path:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _scaled(value: Any, scale: float) -> float | None:
    number = _number(value)
    return None if number is None else number / scale


def _per_gpu(*path: str) -> Callable[[dict[str, Any]], Pairs]:
    def extract(sample: dict[str, Any]) -> Pairs:
        gpus = sample.get("gpus") or []
        return [(f"gpu{gpu.get('index', i)}", _number(_get(gpu, *path))) for i, gpu in enumerate(gpus)]

    return extract


def _single(read: Callable[[dict[str, Any]], float | None]) -> Callable[[dict[str, Any]], Pairs]:
    return lambda sample: [("", read(sample))]


@dataclass(frozen=True)
class Rule:
    name: str
    title: str
    unit: str
    warning: float
    critical: float
    extract: Callable[[dict[str, Any]], Pairs]
    lower_is_worse: bool = False

    @property
    def levels(self) -> list[tuple[int, float]]:
        """(level, threshold) for the levels that are on (a threshold of 0 is off)."""
        return [(lvl, thr) for lvl, thr in ((1, self.warning), (2, self.critical)) if thr > 0]

    def beyond(self, value: float, threshold: float) -> bool:
        return value < threshold if self.lower_is_worse else value >= threshold

    def holds(self, value: float, threshold: float, margin: float) -> bool:
        """Still past the level for an alert already raised: back only past threshold ∓ margin."""
        slack = threshold * margin
        return value <= threshold + slack if self.lower_is_worse else value >= threshold - slack

    def key(self, subject: str) -> str:
        return f"{self.name}:{subject}" if subject else self.name

    def message(self, subject: str, value: float, level: int) -> str:
        threshold = dict(self.levels)[level]
        where = f"{subject.replace('gpu', 'GPU ')} " if subject else ""
        word = "below" if self.lower_is_worse else "at"
        return (f"{where}{self.title} {_fmt(value, self.unit)} ({LEVELS[level]} {word} "
                f"{_fmt(threshold, self.unit)})")


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min"
    return f"{value:.1f}{unit}" if unit in ("%", "°C") else f"{value:.2f} {unit}"


SPECS: list[tuple[str, str, str, str, Callable[[dict[str, Any]], Pairs], bool]] = [
    # name, title, unit, config key stem ("<stem>_warning_<suffix>"), extract, lower is worse
    ("gpu_memory", "memory used", "%", "gpu_memory_{}_percent", _per_gpu("memory", "percent"), False),
    ("gpu_temperature", "temperature", "°C", "gpu_temperature_{}_c", _per_gpu("temperature"), False),
    ("host_memory", "host memory used", "%", "host_memory_{}_percent",
     _single(lambda s: _number(_get(s, "host", "memory", "percent"))), False),
    ("worker_rss", "worker resident memory", "GiB", "worker_rss_{}_gib",
     _single(lambda s: _scaled(_get(s, "worker", "rss"), GIB)), False),
    ("disk_free", "free disk under outputs", "GiB", "disk_free_{}_gib",
     _single(lambda s: _scaled(_get(s, "disk", "free"), GIB)), True),
    ("queue_wait", "oldest queued job waiting", "s", "queue_wait_{}_seconds",
     _single(lambda s: _number(_get(s, "queue", "wait_seconds"))), False),
    ("failure_rate", "job failure rate", "%", "failure_rate_{}_percent",
     _single(lambda s: _number(_get(s, "jobs", "failure_rate_percent"))), False),
]


def rules_from_config(alerts: Any) -> list[Rule]:
    """The rules from `[alerts]`; a critical level on the wrong side of the warning level is a ConfigError."""
    rules = []
    for name, title, unit, stem, extract, lower in SPECS:
        warning, critical = alerts[stem.format("warning")], alerts[stem.format("critical")]
        if warning > 0 and critical > 0 and (critical > warning if lower else critical < warning):
            raise ConfigError("config", f"alerts.{stem.format('critical')}",
                              f"must be {'at most' if lower else 'at least'} alerts.{stem.format('warning')} "
                              f"({warning:g}): {'lower' if lower else 'higher'} is worse (got {critical:g})")
        rules.append(Rule(name, title, unit, float(warning), float(critical), extract, lower))
    return rules


@dataclass
class Tracker:
    """One subject's level, and the level it is moving to with how many samples in a row agree."""

    level: int = 0
    pending: int = 0
    streak: int = 0

    def desired(self, rule: Rule, value: float | None, margin: float) -> int:
        if value is None:
            return 0
        best = 0
        for lvl, threshold in rule.levels:
            if rule.beyond(value, threshold) or (lvl <= self.level and rule.holds(value, threshold, margin)):
                best = lvl
        return best

    def step(self, rule: Rule, value: float | None, margin: float, raise_after: int, clear_after: int) -> int | None:
        """Feed one sample; the new level when it changes, else None."""
        want = self.desired(rule, value, margin)
        if want == self.level:
            self.pending, self.streak = self.level, 0
            return None
        if want != self.pending:
            self.pending, self.streak = want, 0
        self.streak += 1
        if self.streak >= (raise_after if want > self.level else clear_after):
            self.level, self.streak = want, 0
            return want
        return None


@dataclass(frozen=True)
class Change:
    key: str
    rule: Rule
    subject: str
    level: int
    value: float | None


@dataclass
class Evaluator:
    rules: list[Rule]
    margin: float
    raise_after: int
    clear_after: int
    trackers: dict[str, tuple[Rule, str, Tracker]] = field(default_factory=dict)

    def seed(self, key: str, severity: str) -> None:
        """Start a subject at the level of an alert still open from before a restart."""
        for rule in self.rules:
            if key == rule.name or key.startswith(rule.name + ":"):
                subject = key[len(rule.name) + 1:]
                level = SEVERITY_LEVEL.get(severity, 1) or 1
                self.trackers[key] = (rule, subject, Tracker(level, level, 0))

    def evaluate(self, sample: dict[str, Any]) -> tuple[list[Change], list[tuple[str, float | None]]]:
        """(level changes, (key, value) of every subject at a level: still seen)."""
        changes: list[Change] = []
        seen: dict[str, float | None] = {}
        for rule in self.rules:
            for subject, value in rule.extract(sample):
                seen[rule.key(subject)] = value
                if rule.key(subject) not in self.trackers:
                    self.trackers[rule.key(subject)] = (rule, subject, Tracker())
        for key, (rule, subject, tracker) in self.trackers.items():
            value = seen.get(key)
            new = tracker.step(rule, value, self.margin, self.raise_after, self.clear_after)
            if new is not None:
                changes.append(Change(key, rule, subject, new, value))
        active = [(key, seen.get(key)) for key, (_, _, t) in self.trackers.items() if t.level > 0]
        return changes, active

"""`sai doctor`: a preflight of the box the daemon runs on. Each check gives OK, WARN or FAIL, with
a detail naming what it found and, for WARN and FAIL, the fix to apply (docs/operations.md).

Nothing here imports torch: the torch build, its devices and the models are probed in a child
interpreter (daemon.doctor.probe), as the worker is a child process."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from daemon.exitcodes import ExitCode

OK, WARN, FAIL = "OK", "WARN", "FAIL"
EXIT_CODES = {OK: ExitCode.OK, WARN: ExitCode.DOCTOR_WARNINGS, FAIL: ExitCode.DOCTOR_FAILED}


@dataclass(frozen=True)
class Check:
    check: str
    status: str
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ok(check: str, detail: str) -> Check:
    return Check(check, OK, detail)


def warn(check: str, detail: str, fix: str) -> Check:
    return Check(check, WARN, detail, fix)


def fail(check: str, detail: str, fix: str) -> Check:
    return Check(check, FAIL, detail, fix)


def exit_code(checks: Iterable[Check]) -> int:
    """0 when every check is OK, 10 when the worst is a warning, 11 when one failed (daemon.exitcodes)."""
    return max((EXIT_CODES[c.status] for c in checks), default=0)

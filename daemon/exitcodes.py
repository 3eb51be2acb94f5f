"""Exit statuses of every `sai` command, defined once. A script tells them apart: a typo (2) is not
tampering (7), no daemon (3) is not another daemon in the way (8). The table in `sai --help` and
docs/operations.md is made from / checked against `ExitCode.describe()`.

It lives in the daemon package because `sai daemon` returns some of them and the daemon may not
import the console; it imports nothing."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2
    UNAVAILABLE = 3
    DENIED = 4
    JOB_FAILED = 5
    TIMEOUT = 6
    VERIFY_FAILED = 7
    ALREADY_RUNNING = 8
    NOT_STARTED = 9
    DOCTOR_WARNINGS = 10
    DOCTOR_FAILED = 11
    TASK_FAILED = 70
    INTERRUPTED = 130

    @property
    def meaning(self) -> str:
        return MEANINGS[self]

    @classmethod
    def describe(cls) -> list[tuple[int, str, str]]:
        """(status, name, meaning) for each, in order: the documented table."""
        return [(code.value, code.name.lower().replace("_", "-"), code.meaning) for code in cls]


MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "done",
    ExitCode.FAILURE: "the command failed: the daemon refused the request (no such job, bad value, conflict) "
                      "or a file could not be read or written",
    ExitCode.USAGE: "the command line is wrong (unknown option, bad value, missing argument)",
    ExitCode.UNAVAILABLE: "no daemon answers on the socket, or the connection to it was lost, or the daemon has no "
                          "connection to spare, or its fleet database does not answer (try again), or a job's "
                          "outputs are on another box of the fleet that no [fleet] sockets entry reaches",
    ExitCode.DENIED: "not permitted: your role does not allow it, or the socket refuses you",
    ExitCode.JOB_FAILED: "a job waited for (sai wait, submit --wait) failed or was cancelled",
    ExitCode.TIMEOUT: "sai wait --timeout ran out before every job finished",
    ExitCode.VERIFY_FAILED: "a check failed: tampering or damage (audit verify, verify-export, proof, "
                            "consistency, sai verify, a backup that sai restore refuses)",
    ExitCode.ALREADY_RUNNING: "sai daemon: another daemon holds the socket or the state directory",
    ExitCode.NOT_STARTED: "sai daemon refused to start: bad configuration, a damaged key, a rewritten audit log",
    ExitCode.DOCTOR_WARNINGS: "sai doctor: no check failed, but at least one warns",
    ExitCode.DOCTOR_FAILED: "sai doctor: at least one check failed (the box is not ready)",
    ExitCode.TASK_FAILED: "sai daemon: a task it cannot do without died (systemd restarts it)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C); a job already submitted goes on",
}

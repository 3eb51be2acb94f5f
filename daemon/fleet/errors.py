"""What the fleet's store refuses with: each names what a reader needs to act on it."""

from __future__ import annotations


class FleetError(RuntimeError):
    """Base of the fleet store's errors."""


class FleetUnavailable(FleetError):
    """The fleet database cannot be reached (down, restarting, refused); nothing was written."""


class SchemaTooNew(FleetError):
    """The fleet database was migrated by a newer daemon than this one."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(f"the fleet database is at schema version {found}, newer than this daemon knows "
                         f"({known}); upgrade this daemon to the fleet's version before it joins")
        self.found, self.known = found, known


class MigrationRefused(FleetError):
    """The database refused to create or change the fleet's tables (a role without the rights)."""


class StaleAttempt(FleetError):
    """A write for a job by a holder whose attempt is no longer the job's current one (fencing):
    its lease expired and the job was re-queued or claimed by another box since."""

    def __init__(self, job_id: str, attempt: int, current: int | None, state: str | None, box: str | None) -> None:
        where = f" (now {state} on box {box!r})" if box else f" (now {state})" if state else ""
        if current is None:
            reason = f"job {job_id}: no such job in the fleet"
        elif current == attempt:
            reason = f"job {job_id}: attempt {attempt} is no longer running{where}"
        else:
            reason = f"job {job_id}: attempt {attempt} is stale, the current attempt is {current}{where}"
        super().__init__(reason + "; this write was refused")
        self.job_id, self.attempt, self.current, self.state, self.box = job_id, attempt, current, state, box

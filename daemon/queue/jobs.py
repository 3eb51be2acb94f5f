"""Job records and their states."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from daemon.protocol import PRIORITIES
from daemon.timefmt import rfc3339

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINISHED = frozenset({SUCCEEDED, FAILED, CANCELLED})
PRIORITY_RANK = {name: rank for rank, name in enumerate(PRIORITIES)}
SEED_RANGE = 2**32
"""Seeds run from 0 to SEED_RANGE - 1, what torch.Generator.manual_seed takes on every device."""

# Parameters that must match for jobs to share one pipeline call.
SHAPE_KEYS = ("width", "height", "steps", "guidance")


def new_job_id() -> str:
    return "j" + secrets.token_hex(6)


@dataclass(eq=False)
class Job:
    """One job; compared by identity (two records of one job are never alive at once)."""

    job_id: str
    seq: int
    state: str
    priority: int
    params: dict[str, Any]
    prompt: str
    negative_prompt: str
    user: str
    uid: int
    created_at: float
    enqueued_at: float
    client_token: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    progress: float = 0.0
    error: str | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    risk: float = 0.0
    warnings: list[str] = field(default_factory=list)
    model_id: str = ""
    """The configured name of the model the job runs on (job.submit's `model`, else the default)."""
    model_family: str = ""
    weights_sha256: str = ""
    """Both as the worker found them when it ran the job ("" until then)."""
    worker: str = ""
    device: str = ""
    """The worker (`cpu0`, `cuda2`) and the device it ran on for the job's latest attempt ("" until one began)."""
    box: str = ""
    """The fleet box (`[daemon] installation`) that runs or ran the job's latest attempt ("" on a
    single box, whose store does not keep it: every job there is the box's own)."""
    isolate: bool = False
    """Run alone: set after its batch crashed the worker, so a poison job is found and quarantined."""
    handed: bool = False
    """Queued, but already handed to the worker, where it waits behind the running batch (not kept:
    the store has it as queued, which is what it is until the worker begins it)."""

    @property
    def priority_name(self) -> str:
        return PRIORITIES[self.priority]

    @property
    def count(self) -> int:
        return int(self.params["count"])

    @property
    def reproducible(self) -> bool:
        return bool(self.params.get("reproducible"))

    @property
    def runs_alone(self) -> bool:
        return self.reproducible or self.isolate

    def image_seed(self, index: int) -> int | None:
        """The seed image `index` of this job is made with: the job's seed plus the index, modulo
        SEED_RANGE, so that one image of a job can be made again on its own. None without a seed."""
        seed = self.params.get("seed")
        return None if seed is None else (int(seed) + index) % SEED_RANGE

    def shape(self) -> tuple[Any, ...]:
        return (self.model_id, self.params.get("scheduler", ""), *(self.params[k] for k in SHAPE_KEYS))

    def to_api(self, show_prompt: bool) -> dict[str, Any]:
        params = dict(self.params)
        if show_prompt:
            params["prompt"] = self.prompt
            params["negative_prompt"] = self.negative_prompt
        return {
            "job_id": self.job_id,
            "state": self.state,
            "priority": self.priority_name,
            "params": params,
            "prompt_visible": show_prompt,
            "user": self.user,
            "uid": self.uid,
            "created_at": rfc3339(self.created_at),
            "started_at": rfc3339(self.started_at),
            "finished_at": rfc3339(self.finished_at),
            "progress": round(self.progress, 4),
            "error": self.error,
            "outputs": self.outputs,
            "attempts": self.attempts,
            "risk": self.risk,
            "warnings": self.warnings if show_prompt else [],  # they name flagged terms of the prompt
            "model": self.model_id,
            "model_id": self.model_id,
            "model_family": self.model_family or None,
            "weights_sha256": self.weights_sha256 or None,
            "worker": self.worker or None,
            "device": self.device or None,
            "box": self.box or None,
            "next": self.handed,
        }

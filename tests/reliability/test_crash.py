"""Crash suite: the daemon is SIGKILLed again and again while it works, each kill aimed at a moment
that matters (an output being written, an audit append being committed, a batch running, a burst
of submits in flight), and restarted on the same state. At the end every job has ended exactly
once with all its outputs, every output decrypts and verifies, the audit log verifies and extends
every checkpoint saved on the way, and no temp or orphan file is left.

CI runs the short version; `make soak` (SAI_SOAK=1) the long one. SAI_CRASH_SEED replays a run.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from daemon.audit.checkpoint import parse as parse_checkpoint
from daemon.client import DaemonClient, DaemonUnavailable
from tests.harness import DaemonProcess
from tests.reliability.rel_helpers import (
    IN_CREATE,
    IN_MODIFY,
    OUTPUT_SUFFIXES,
    DirWatch,
    export_png,
    incomplete_outputs,
    output_files,
    tail_all,
    temp_files,
)

SOAK = os.environ.get("SAI_SOAK", "") not in ("", "0")
JOBS, KILLS = (200, 12) if SOAK else (40, 4)
SEED = int(os.environ.get("SAI_CRASH_SEED") or time.time_ns() % 2**32)
MODES = ("output_write", "audit_append", "running", "submit_burst")
PRIORITIES = ("low", "normal", "high", "critical")
TERMINAL = ("succeeded", "failed", "cancelled")
CONFIG: dict[str, dict[str, Any]] = {
    "queue": {"max_attempts": 100, "max_batch": 4, "burst": 1000, "rate_per_minute": 60000.0},
    "audit": {"checkpoint_every_entries": 40},
    "worker": {"crash_loop_count": 1000, "max_backoff": 2.0},
}
TRIGGER_TIMEOUT = 120.0

pytestmark = [pytest.mark.soak, pytest.mark.timeout(3600 if SOAK else 400)]


def job_specs(rng: random.Random) -> list[dict[str, Any]]:
    """64x64 jobs of 2 to 4 steps, mixed priorities; some of several images (batched together
    with jobs of the same steps)."""
    return [{"client_token": f"crash-{i}", "prompt": f"crash suite job {i}", "width": 64, "height": 64,
             "steps": rng.randint(2, 4), "priority": rng.choice(PRIORITIES), "seed": rng.randrange(2**32),
             "count": rng.choice((1, 1, 1, 1, 1, 2, 3))} for i in range(JOBS)]


class CrashRun:
    def __init__(self, daemon: DaemonProcess, rng: random.Random) -> None:
        self.daemon = daemon
        self.rng = rng
        self.outputs_dir = daemon.state_dir / "outputs"
        self.job_ids: dict[str, str] = {}
        self.duplicates = 0
        self.unanswered: dict[str, dict[str, Any]] = {}
        self.sent: set[str] = set()
        self.checkpoints: list[str] = []
        self.counts: Counter[str] = Counter()
        self.client: DaemonClient

    async def connect(self) -> None:
        self.client = await DaemonClient.connect(self.daemon.socket)

    async def submit(self, spec: dict[str, Any]) -> None:
        """Submit with the job's client token; a submit the kill cut off is sent again after the
        restart with the same token (the daemon answers with the job if it was committed)."""
        self.sent.add(spec["client_token"])
        reply = await self.client.call("job.submit", **spec)
        self.unanswered.pop(spec["client_token"], None)
        known = self.job_ids.setdefault(spec["client_token"], reply["job_id"])
        assert known == reply["job_id"], f"token {spec['client_token']} got two jobs: {known}, {reply['job_id']}"
        self.duplicates += bool(reply.get("duplicate"))

    async def submit_all(self, specs: list[dict[str, Any]], pipelined: bool = False) -> None:
        if pipelined:
            outcomes = await asyncio.gather(*(self.submit(spec) for spec in specs), return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
        else:
            for spec in specs:
                await self.submit(spec)

    async def restart(self) -> None:
        await self.client.close()
        await asyncio.to_thread(self.daemon.start)
        await self.connect()
        retry = list(self.unanswered.values())
        self.counts["resubmitted"] += sum(spec["client_token"] in self.sent for spec in retry)
        await self.submit_all(retry)
        self.checkpoints.append((await self.client.call("audit.checkpoint"))["checkpoint"])

    def _kill_now(self) -> None:
        assert self.daemon.proc is not None
        self.daemon.proc.kill()

    def _file_trigger(self, mode: str) -> tuple[Path, int, Any]:
        """(directory, inotify mask, name test) of the file writes `mode` aims at; the test passes
        on the first to third such write, at random."""
        directory, mask, name = {
            "output_write": (self.outputs_dir, IN_CREATE, ".tmp-"),        # an atomic write's temp file
            "audit_append": (self.daemon.state_dir, IN_MODIFY, "audit.db-wal"),  # an audit commit
            "submit_burst": (self.daemon.state_dir, IN_MODIFY, "jobs.sqlite3-wal"),  # a job store commit
        }[mode]
        skip = self.rng.randint(0, 2)

        def nth_write(found: str) -> bool:
            nonlocal skip
            skip -= name in found
            return skip < 0

        return directory, mask, nth_write

    async def _fire_on_event(self, feed: DaemonClient, jobs: int) -> bool:
        """Kill right after a `running` state event or a progress step of a batch. A job starts
        running once and reports at least two steps, so the `running` trigger skips one start only
        when the burst has more than one job (a burst of one would wait for a start that never
        comes)."""
        want = self.rng.choice(("running", "progress"))
        skip = self.rng.randint(0, 1 if want == "progress" or jobs > 1 else 0)
        deadline = time.monotonic() + TRIGGER_TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = await feed.next_event(timeout=left)
            except TimeoutError:
                return False
            if event is None:
                return False
            data = event["data"]
            matched = data.get("kind") == "progress" if want == "progress" else data.get("state") == "running"
            if matched:
                if skip == 0:
                    self._kill_now()
                    return True
                skip -= 1
        return False

    async def kill_during(self, mode: str, burst: list[dict[str, Any]]) -> None:
        """Arm the trigger of `mode`, submit `burst` (pipelined for `submit_burst`), SIGKILL the
        daemon the moment the trigger fires, restart it. The burst's jobs give the trigger work."""
        partial_before = set(incomplete_outputs(self.outputs_dir))
        self.unanswered.update((spec["client_token"], spec) for spec in burst)
        watch, feed = None, None
        if mode == "running":
            feed = await DaemonClient.connect(self.daemon.socket)
            await feed.call("events.subscribe", topics=["job"])
            trigger = asyncio.create_task(self._fire_on_event(feed, len(burst)))
        else:
            directory, mask, wanted = self._file_trigger(mode)
            watch = DirWatch(directory, mask)
            trigger = asyncio.create_task(asyncio.to_thread(watch.fire_on, wanted, self._kill_now, TRIGGER_TIMEOUT))
        submitting = asyncio.create_task(self.submit_all(burst, pipelined=mode == "submit_burst"))
        try:
            fired = await trigger
        finally:
            if watch is not None:
                watch.close()
            if feed is not None:
                await feed.close()
        aimed = bool(fired)
        if not aimed:
            self._kill_now()
        assert self.daemon.proc is not None
        await asyncio.to_thread(self.daemon.proc.wait, 30)
        [outcome] = await asyncio.gather(submitting, return_exceptions=True)
        if isinstance(outcome, BaseException) and not isinstance(outcome, DaemonUnavailable):
            raise outcome
        self.counts["kills"] += 1
        self.counts[f"kills_{mode}" if aimed else "kills_untargeted"] += 1
        if temp_files(self.outputs_dir) or set(incomplete_outputs(self.outputs_dir)) - partial_before:
            self.counts["kills_left_output_half_written"] += 1
        await self.restart()

    async def wait_all_finished(self, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            jobs = (await self.client.call("job.list", limit=1000))["jobs"]
            if len(jobs) >= JOBS and all(job["state"] in TERMINAL for job in jobs):
                return jobs
            if time.monotonic() > deadline:
                states = Counter(job["state"] for job in jobs)
                raise TimeoutError(f"after {timeout:.0f} s: {len(jobs)} jobs, {dict(states)}")
            await asyncio.sleep(0.5)


async def check_outputs(run: CrashRun, jobs: list[dict[str, Any]]) -> int:
    """Every succeeded job has exactly `count` outputs that verify (signature, hashes) and export
    (decrypted, PNG checked against the signed hash); the outputs directory holds nothing else."""
    client, verified = run.client, 0
    expected: dict[str, dict[int, set[str]]] = {}
    for job in jobs:
        if job["state"] != "succeeded":
            continue
        count = job["params"]["count"]
        assert sorted(o["index"] for o in job["outputs"]) == list(range(count)), job["job_id"]
        report = await client.call("output.verify", job_id=job["job_id"])
        assert report["ok"] and len(report["outputs"]) == count, report
        for record in job["outputs"]:
            png, digest = await export_png(client, job["job_id"], record["index"])
            assert png.startswith(b"\x89PNG\r\n\x1a\n") and digest == record["png_sha256"]
            verified += 1
        expected[job["job_id"]] = {i: set(OUTPUT_SUFFIXES) for i in range(count)}
    assert output_files(run.outputs_dir) == expected, "orphan or missing output files"
    assert not temp_files(run.daemon.state_dir), temp_files(run.daemon.state_dir)
    return verified


async def check_audit(run: CrashRun, jobs: list[dict[str, Any]], export_dir: Path) -> dict[str, int]:
    """The log verifies deep and extends every checkpoint a client saved and every checkpoint the
    daemon stored. How its job entries line up with the job store is counted, not asserted: the
    two are separate files committed side by side, so a kill between the two commits can leave a
    submit or finish in one and not the other (see the report)."""
    client = run.client
    exported = await client.call("audit.export", directory=str(export_dir))
    stored = [p.read_text() for p in sorted((export_dir / "checkpoints").iterdir())]
    for note in run.checkpoints + stored:
        checkpoint = parse_checkpoint(note)
        against = await client.call("audit.verify", against=note)
        assert against["ok"], (against, note)
        proof = await client.call("audit.consistency", first=checkpoint.size)
        assert bytes.fromhex(proof["first_root"]) == checkpoint.root
    result = await client.call("audit.verify", deep=True)
    assert result["ok"], result
    ids = {job["job_id"]: job for job in jobs}
    submits = Counter(e["subject"] for e in await tail_all(client, "job.submit"))
    finishes: dict[str, list[str]] = {}
    for entry in await tail_all(client, "job.finish"):
        finishes.setdefault(entry["subject"], []).append(entry["details"]["state"])
    return {"audit_entries": result["size"], "exported_entries": exported["entries"],
            "checkpoints_checked": len(run.checkpoints) + len(stored),
            "audit_jobs_without_submit": sum(submits[job_id] == 0 for job_id in ids),
            "audit_submits_of_unknown_jobs": sum(n for job_id, n in submits.items() if job_id not in ids),
            "audit_jobs_without_final_finish": sum(finishes.get(job_id, [None])[-1] != job["state"]
                                                   for job_id, job in ids.items()),
            "audit_finish_entries_repeated": sum(len(states) - 1 for states in finishes.values())}


async def test_sigkill_at_random_moments_loses_nothing(make_daemon, tmp_path):
    rng = random.Random(SEED)
    specs = job_specs(rng)
    modes = [MODES[i % len(MODES)] for i in range(KILLS)]
    rng.shuffle(modes)
    cuts = sorted(rng.sample(range(1, JOBS), KILLS))
    bursts = [specs[a:b] for a, b in zip([0, *cuts], [*cuts, JOBS])]
    started = time.monotonic()
    daemon = make_daemon(CONFIG)
    run = CrashRun(daemon, rng)
    await run.connect()
    run.checkpoints.append((await run.client.call("audit.checkpoint"))["checkpoint"])
    for mode, burst in zip(modes, bursts):
        await run.kill_during(mode, burst)
    await run.submit_all(bursts[-1])
    jobs = await run.wait_all_finished(timeout=1500 if SOAK else 300)

    assert len(jobs) == JOBS and len(run.job_ids) == JOBS and not run.unanswered
    assert sorted(job["job_id"] for job in jobs) == sorted(run.job_ids.values()), "a job lost or duplicated"
    states = Counter(job["state"] for job in jobs)
    assert states["succeeded"] == JOBS, {job["job_id"]: job["error"] for job in jobs if job["state"] != "succeeded"}
    verified = await check_outputs(run, jobs)
    audit = await check_audit(run, jobs, tmp_path / "audit-export")
    await run.client.close()

    assert all(run.counts[f"kills_{mode}"] >= 1 for mode in MODES), run.counts
    figures = {"seed": SEED, "jobs": JOBS, "images": sum(job["params"]["count"] for job in jobs),
               **{k: run.counts[k] for k in ("kills", *(f"kills_{m}" for m in MODES), "kills_untargeted",
                                             "kills_left_output_half_written", "resubmitted")},
               "duplicate_submit_replies": run.duplicates,
               "retries": sum(job["attempts"] - 1 for job in jobs), "most_attempts": max(j["attempts"] for j in jobs),
               "outputs_verified": verified, **audit, "seconds": round(time.monotonic() - started, 1)}
    print("\ncrash suite (" + ("soak" if SOAK else "short") + "): "
          + ", ".join(f"{key} {value}" for key, value in figures.items()))
    # Write-ahead audit: every job and every end it reached are on record (a kill between the two
    # commits may leave an extra submit or finish entry, never a missing one).
    assert figures["audit_jobs_without_submit"] == 0 and figures["audit_jobs_without_final_finish"] == 0, figures

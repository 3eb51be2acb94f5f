"""sai wait JOB...: until every job has finished; the exit status says how they ended. `submit --wait`
follows its job with the same code."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from console.cliargs import add_job_argument, add_json_flag, resolve_job
from console.cliout import print_json
from daemon.client import DaemonClient, DaemonUnavailable
from daemon.exitcodes import ExitCode

TERMINAL = ("succeeded", "failed", "cancelled")
REPOLL_SECONDS = 10.0
"""Without events for this long, the jobs are read again (a state event missed is then only late)."""

Job = dict[str, Any]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("wait", help="wait until jobs finish; the exit status says how they ended",
                       description=f"Waits until every JOB has succeeded, failed or been cancelled. Exit status "
                                   f"{ExitCode.OK:d}: all succeeded; {ExitCode.JOB_FAILED:d}: any failed or was "
                                   f"cancelled; {ExitCode.TIMEOUT:d}: --timeout ran out first. Interrupting it "
                                   "leaves the jobs running.")
    add_job_argument(p, nargs="+", text="job ids, or enough of each one's start to be unique")
    p.add_argument("--timeout", type=_seconds, metavar="SECONDS", help="give up after this long (default: no limit)")
    add_json_flag(p)
    p.set_defaults(handler=wait, needs_daemon=True)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


async def follow(client: DaemonClient, job_ids: list[str], quiet: bool, timeout: float | None = None) -> dict[str, Job]:
    """The jobs' last views, once each is terminal or `timeout` seconds have passed. The client must
    already be subscribed to the `job` topic, so no state change falls between reading and listening."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    jobs = {job_id: await client.call("job.get", job_id=job_id) for job_id in job_ids}
    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                  transient=True, disable=quiet or not sys.stderr.isatty()) as bar:
        tasks = {job_id: bar.add_task(f"{job_id} {job['state']}", total=1.0, completed=job["progress"])
                 for job_id, job in jobs.items()}

        async def refresh(job_id: str) -> None:
            job = jobs[job_id] = await client.call("job.get", job_id=job_id)
            bar.update(tasks[job_id], completed=job["progress"], description=f"{job_id} {job['state']}")

        while any(job["state"] not in TERMINAL for job in jobs.values()):
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                break
            try:
                event = await client.next_event(REPOLL_SECONDS if left is None else min(left, REPOLL_SECONDS))
            except TimeoutError:
                for job_id, job in jobs.items():
                    if job["state"] not in TERMINAL:
                        await refresh(job_id)
                continue
            if event is None:
                raise DaemonUnavailable(f"lost the daemon while waiting for {', '.join(job_ids)}")
            data = event.get("data") or {}
            event_job = data.get("job_id")
            if event_job not in jobs:
                continue
            if data.get("kind") == "progress":
                bar.update(tasks[event_job], completed=data["progress"],
                           description=f"{event_job} step {data['step']}/{data['steps']}")
            elif data.get("kind") == "state":
                await refresh(event_job)
    return jobs


def outcome(jobs: list[Job]) -> ExitCode:
    if any(job["state"] in ("failed", "cancelled") for job in jobs):
        return ExitCode.JOB_FAILED
    if any(job["state"] not in TERMINAL for job in jobs):
        return ExitCode.TIMEOUT
    return ExitCode.OK


def print_outcome(job: Job) -> None:
    """`ID STATE[: error]`, and for a job that succeeded how to get each image: the files in the
    daemon's outputs are encrypted, `sai export` writes the PNG."""
    print(f"{job['job_id']} {job['state']}" + (f": {job['error']}" if job.get("error") else ""))
    if job["state"] != "succeeded":
        return
    outputs = job["outputs"]
    for output in outputs:
        index = output.get("index", 0)
        if len(outputs) == 1:
            print(f"  export: sai export {job['job_id']} -o {job['job_id']}.png")
        else:
            print(f"  export: sai export {job['job_id']} --index {index} -o {job['job_id']}-{index}.png")


def say_still_running(job_ids: list[str]) -> None:
    """What an interrupted wait leaves behind: the jobs go on in the daemon."""
    ids = " ".join(job_ids)
    print(f"sai: stopped waiting; {'the job goes' if len(job_ids) == 1 else 'the jobs go'} on in the daemon. "
          f"Follow with `sai wait {ids}` or `sai job {job_ids[0]}`; stop with `sai cancel {job_ids[0]}`.",
          file=sys.stderr)


async def wait(args: argparse.Namespace, client: DaemonClient) -> int:
    await client.call("events.subscribe", topics=["job"])
    job_ids = list(dict.fromkeys([await resolve_job(client, text) for text in args.job_id]))
    try:
        jobs = list((await follow(client, job_ids, args.json, args.timeout)).values())
    except asyncio.CancelledError:
        say_still_running(job_ids)
        raise
    code = outcome(jobs)
    if args.json:
        print_json({"jobs": jobs, "outcome": code.name.lower().replace("_", "-"), "exit": int(code)})
    else:
        for job in jobs:
            if job["state"] in TERMINAL:
                print_outcome(job)
            else:
                print(f"{job['job_id']} still {job['state']}")
    if code == ExitCode.TIMEOUT:
        unfinished = [job["job_id"] for job in jobs if job["state"] not in TERMINAL]
        print(f"sai: --timeout {args.timeout:g} s ran out; not finished: {', '.join(unfinished)}", file=sys.stderr)
    return code

"""sai submit, jobs, job, cancel, priority, export."""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import sys
import time
from pathlib import Path
from typing import Any

from console.cliargs import add_job_argument, add_json_flag, fleet_sockets, resolve_job
from console.cliout import fail, print_fields, print_json
from console.fleetroute import Call, where_held
from console.listing import fetch_jobs
from daemon.client import DaemonClient
from daemon.exitcodes import ExitCode
from daemon.protocol import PRIORITIES

DEFAULT_LIMIT = 50
"""Jobs `sai jobs` shows without --limit or --all."""
COLUMNS = ("JOB", "PRI", "STATE", "PROGRESS", "USER", "AGE", "SIZE", "PROMPT")


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 512x512") from None
    return width, height


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="queue a generation job")
    p.add_argument("prompt")
    p.add_argument("--model", help="a configured model's name, as `sai models` lists them (default: the default model)")
    p.add_argument("--negative", default="", help="negative prompt (default: none)")
    p.add_argument("--size", type=_size, help="WIDTHxHEIGHT, multiples of 8 (default: the daemon's [defaults])")
    p.add_argument("--steps", type=int, help="denoising steps (default: the daemon's [defaults])")
    p.add_argument("--guidance", type=float, help="guidance scale (default: the daemon's [defaults])")
    p.add_argument("--seed", type=int, help="seed (default: a random one, recorded with the job)")
    p.add_argument("--priority", choices=PRIORITIES, help="place in the queue (default: the daemon's [defaults])")
    p.add_argument("--count", type=int, help="images (default: the daemon's [defaults])")
    p.add_argument("--reproducible", action="store_true", help="run alone, so the pixels depend only on the seed")
    p.add_argument("--token", help="client token: a retried submit with the same token returns the same job")
    p.add_argument("--wait", action="store_true", help="show progress and wait for the job to finish; exit status "
                                                       f"{ExitCode.JOB_FAILED:d} if it fails or is cancelled")
    add_json_flag(p)
    p.set_defaults(handler=submit, needs_daemon=True)

    p = sub.add_parser("jobs", help="list jobs: running, queued, then finished ones newest first",
                       description="Lists jobs: running, queued in start order, then finished ones newest first. "
                                   f"Shows the first {DEFAULT_LIMIT} unless --limit or --all; when more match, says "
                                   "how many on stderr. Piped (not a terminal): one job per line, tab-separated, no "
                                   "header, the columns " + ", ".join(COLUMNS) + ".")
    p.add_argument("--state", choices=("queued", "running", "succeeded", "failed", "cancelled"),
                   help="only jobs in this state (default: all)")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--limit", type=_positive, default=DEFAULT_LIMIT, metavar="N", help="show the first N")
    shown.add_argument("--all", action="store_true", help="show every job (fetched a page at a time)")
    add_json_flag(p)
    p.set_defaults(handler=list_jobs, needs_daemon=True)

    p = sub.add_parser("job", help="one job in full")
    add_job_argument(p)
    add_json_flag(p)
    p.set_defaults(handler=show_job, needs_daemon=True)

    p = sub.add_parser("cancel", help="cancel a queued or running job")
    add_job_argument(p)
    add_json_flag(p)
    p.set_defaults(handler=cancel, needs_daemon=True)

    p = sub.add_parser("priority", help="change a queued job's priority")
    add_job_argument(p)
    p.add_argument("priority", choices=PRIORITIES, metavar="PRIORITY", help=f"one of {', '.join(PRIORITIES)}")
    add_json_flag(p)
    p.set_defaults(handler=set_priority, needs_daemon=True)

    p = sub.add_parser("export", help="write a job's image to a file (mode 0600)")
    add_job_argument(p)
    p.add_argument("--index", type=int, default=0, help="which of the job's images")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="file to write (required)")
    add_json_flag(p)
    p.set_defaults(handler=export, needs_daemon=True)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return value


def _submit_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {"prompt": args.prompt}
    if args.negative:
        params["negative_prompt"] = args.negative
    if args.size:
        params["width"], params["height"] = args.size
    for name in ("model", "steps", "guidance", "seed", "priority", "count"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    if args.reproducible:
        params["reproducible"] = True
    if args.token:
        params["client_token"] = args.token
    return params


async def submit(args: argparse.Namespace, client: DaemonClient) -> int:
    from console.commands.wait import follow, outcome, print_outcome, say_still_running

    if args.wait:
        await client.call("events.subscribe", topics=["job"])
    reply = await client.call("job.submit", **_submit_params(args))
    for warning in reply["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    if not args.wait:
        if args.json:
            print_json(reply)
        else:
            print(f"{reply['job_id']} queued at position {reply['position']} (risk {reply['risk']})")
        return 0
    try:
        job = (await follow(client, [reply["job_id"]], quiet=args.json))[reply["job_id"]]
    except asyncio.CancelledError:
        say_still_running([reply["job_id"]])
        raise
    if args.json:
        print_json(job)
    else:
        print_outcome(job)
    return outcome([job])


def _age(stamp: str | None) -> str:
    if not stamp:
        return "-"
    from daemon.timefmt import parse_rfc3339

    seconds = max(0, int(time.time() - parse_rfc3339(stamp)))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _row(job: dict[str, Any]) -> tuple[str, ...]:
    p = job["params"]
    return (job["job_id"], job["priority"], job["state"],
            f"{job['progress'] * 100:.0f}%" if job["state"] == "running" else "-",
            job["user"], _age(job["created_at"]), f"{p['width']}x{p['height']}x{p['count']}", _prompt(job))


def _prompt(job: dict[str, Any]) -> str:
    """The prompt on one line: newlines and tabs as spaces, so a piped listing keeps one job a line."""
    prompt = job["params"].get("prompt")
    return "(hidden)" if prompt is None else " ".join(prompt.split())


async def list_jobs(args: argparse.Namespace, client: DaemonClient) -> int:
    jobs, total = await fetch_jobs(client.call, args.state, None if args.all else args.limit)
    if args.json:
        print_json({"jobs": jobs, "total": total})
    elif sys.stdout.isatty():
        _print_table(jobs)
    else:
        sys.stdout.writelines("\t".join(_row(job)) + "\n" for job in jobs)
    if len(jobs) < total:
        print(f"sai: {len(jobs)} of {total} jobs shown; --all or --limit N for more", file=sys.stderr)
    return 0


def _print_table(jobs: list[dict[str, Any]]) -> None:
    """For a person: ids and states whole however narrow the terminal; the prompt is cut to fit."""
    from rich.console import Console
    from rich.table import Table

    rows = [_row(job) for job in jobs]
    table = Table(box=None, pad_edge=False)
    for i, column in enumerate(COLUMNS[:-1]):
        table.add_column(column, no_wrap=True, min_width=max([len(column), *(len(row[i]) for row in rows)]))
    table.add_column(COLUMNS[-1], no_wrap=True, overflow="ellipsis", min_width=8)
    for row in rows:
        table.add_row(*row)
    Console(highlight=False).print(table)


async def show_job(args: argparse.Namespace, client: DaemonClient) -> int:
    job = await client.call("job.get", job_id=await resolve_job(client, args.job_id))
    if args.json:
        print_json(job)
        return 0
    print_fields([
        *((key, job[key]) for key in ("job_id", "state", "priority", "user", "created_at", "started_at", "finished_at",
                                      "progress", "attempts", "risk", "error", "model_id")),
        *job["params"].items(),
        *(("warning", warning) for warning in job["warnings"]),
        *(("output", f"{output.get('path')}  sha256 {output.get('sha256', '')[:16]}…") for output in job["outputs"]),
    ])
    return 0


async def cancel(args: argparse.Namespace, client: DaemonClient) -> int:
    reply = await client.call("job.cancel", job_id=await resolve_job(client, args.job_id))
    print_json(reply) if args.json else print(f"{reply['job_id']} {reply['state']}")
    return 0


async def set_priority(args: argparse.Namespace, client: DaemonClient) -> int:
    reply = await client.call("job.set_priority", job_id=await resolve_job(client, args.job_id),
                              priority=args.priority)
    if args.json:
        print_json(reply)
    else:
        print(f"{reply['job_id']} now {reply['priority']}, position {reply['position']}")
    return 0


async def export(args: argparse.Namespace, client: DaemonClient) -> int:
    """Fetch the chunks, check the hash, then write the file atomically with mode 0600."""
    from daemon.safefiles import PrivateDir

    job_id = await resolve_job(client, args.job_id)
    target = Path(args.output)

    async def fetch(call: Call) -> tuple[dict[str, Any], bytes]:
        chunks: list[bytes] = []
        offset, reply = 0, None
        while reply is None or not reply["eof"]:
            reply = await call("output.export", job_id=job_id, index=args.index, offset=offset)
            chunk = base64.b64decode(reply["data"])
            chunks.append(chunk)
            offset += len(chunk)
        return reply, b"".join(chunks)

    reply, data = await where_held(fetch, client.call, lambda: fleet_sockets(args))  # another box's: followed there
    if hashlib.sha256(data).hexdigest() != reply["sha256"]:
        return fail(f"export of {job_id} arrived corrupted (hash mismatch); nothing written", ExitCode.VERIFY_FAILED)
    with PrivateDir(target) as private:  # nothing another user planted beside the target is opened
        private.write(target.name, data)
        private.move_out(target.name)
    result = {"job_id": job_id, "index": args.index, "path": str(target), "bytes": len(data),
              "sha256": reply["sha256"]}
    print_json(result) if args.json else print(f"wrote {target} ({len(data)} bytes, sha256 {reply['sha256'][:16]}…)")
    return 0

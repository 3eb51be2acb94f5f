"""sai submit, jobs, job, cancel, priority, export."""

from __future__ import annotations

import argparse
import base64
import hashlib
import sys
import time
from pathlib import Path
from typing import Any

from daemon.client import DaemonClient
from daemon.protocol import RpcError

TERMINAL = ("succeeded", "failed", "cancelled")


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 512x512") from None
    return width, height


def register(sub: argparse._SubParsersAction) -> None:
    from console.cli import add_json_flag

    p = sub.add_parser("submit", help="queue a generation job")
    p.add_argument("prompt")
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--size", type=_size, help="WIDTHxHEIGHT, multiples of 8")
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--priority", choices=("low", "normal", "high", "critical"))
    p.add_argument("--count", type=int, help="images")
    p.add_argument("--reproducible", action="store_true", help="run alone, so the pixels depend only on the seed")
    p.add_argument("--token", help="client token: a retried submit with the same token returns the same job")
    p.add_argument("--wait", action="store_true", help="show progress and wait for the outputs")
    add_json_flag(p)
    p.set_defaults(handler=submit, needs_daemon=True)

    p = sub.add_parser("jobs", help="list jobs")
    p.add_argument("--state", choices=("queued", "running", "succeeded", "failed", "cancelled"))
    p.add_argument("--limit", type=int, default=50)
    add_json_flag(p)
    p.set_defaults(handler=list_jobs, needs_daemon=True)

    p = sub.add_parser("job", help="one job in full")
    p.add_argument("job_id")
    add_json_flag(p)
    p.set_defaults(handler=show_job, needs_daemon=True)

    p = sub.add_parser("cancel", help="cancel a queued or running job")
    p.add_argument("job_id")
    add_json_flag(p)
    p.set_defaults(handler=cancel, needs_daemon=True)

    p = sub.add_parser("priority", help="change a queued job's priority")
    p.add_argument("job_id")
    p.add_argument("priority", choices=("low", "normal", "high", "critical"))
    add_json_flag(p)
    p.set_defaults(handler=set_priority, needs_daemon=True)

    p = sub.add_parser("export", help="write a job's image to a file (mode 0600)")
    p.add_argument("job_id")
    p.add_argument("--index", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help="file to write")
    add_json_flag(p)
    p.set_defaults(handler=export, needs_daemon=True)


def _submit_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {"prompt": args.prompt}
    if args.negative:
        params["negative_prompt"] = args.negative
    if args.size:
        params["width"], params["height"] = args.size
    for name in ("steps", "guidance", "seed", "priority", "count"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    if args.reproducible:
        params["reproducible"] = True
    if args.token:
        params["client_token"] = args.token
    return params


async def submit(args: argparse.Namespace, client: DaemonClient) -> int:
    from console.cli import print_json

    if args.wait:
        await client.call("events.subscribe", topics=["job"])
    reply = await client.call("job.submit", **_submit_params(args))
    if not args.wait:
        if args.json:
            print_json(reply)
        else:
            print(f"{reply['job_id']} queued at position {reply['position']} (risk {reply['risk']})")
            for warning in reply["warnings"]:
                print(f"warning: {warning}", file=sys.stderr)
        return 0
    for warning in reply["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    job = await _wait(client, reply["job_id"], quiet=args.json)
    if args.json:
        print_json(job)
    else:
        _print_outcome(job)
    return 0 if job["state"] == "succeeded" else 1


async def _wait(client: DaemonClient, job_id: str, quiet: bool) -> dict[str, Any]:
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    job = await client.call("job.get", job_id=job_id)
    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                  transient=True, disable=quiet or not sys.stderr.isatty(), console=None) as bar:
        task = bar.add_task(f"{job_id} {job['state']}", total=1.0, completed=job["progress"])
        while job["state"] not in TERMINAL:
            event = await client.next_event()
            if event is None:
                raise RpcError(-32010, f"lost the daemon while waiting for {job_id}")
            data = event.get("data", {})
            if data.get("job_id") != job_id:
                continue
            if data.get("kind") == "progress":
                bar.update(task, completed=data["progress"], description=f"{job_id} step {data['step']}/{data['steps']}")
            elif data.get("kind") == "state":
                job = await client.call("job.get", job_id=job_id)
                bar.update(task, completed=job["progress"], description=f"{job_id} {job['state']}")
    return job


def _print_outcome(job: dict[str, Any]) -> None:
    print(f"{job['job_id']} {job['state']}" + (f": {job['error']}" if job.get("error") else ""))
    for output in job["outputs"]:
        print(output.get("path", output))


def _age(stamp: str | None) -> str:
    if not stamp:
        return "-"
    from daemon.timefmt import parse_rfc3339

    seconds = max(0, int(time.time() - parse_rfc3339(stamp)))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _snippet(job: dict[str, Any], width: int = 40) -> str:
    prompt = job["params"].get("prompt")
    if prompt is None:
        return "(hidden)"
    return prompt if len(prompt) <= width else prompt[: width - 1] + "…"


async def list_jobs(args: argparse.Namespace, client: DaemonClient) -> int:
    from console.cli import print_json
    from rich.console import Console
    from rich.table import Table

    reply = await client.call("job.list", state=args.state, limit=args.limit)
    if args.json:
        print_json(reply)
        return 0
    table = Table(box=None, pad_edge=False)
    for column in ("JOB", "PRI", "STATE", "PROGRESS", "USER", "AGE", "SIZE", "PROMPT"):
        table.add_column(column)
    for job in reply["jobs"]:
        p = job["params"]
        table.add_row(job["job_id"], job["priority"], job["state"],
                      f"{job['progress'] * 100:.0f}%" if job["state"] == "running" else "",
                      job["user"], _age(job["created_at"]), f"{p['width']}x{p['height']}×{p['count']}", _snippet(job))
    Console(highlight=False, soft_wrap=True).print(table)
    return 0


async def show_job(args: argparse.Namespace, client: DaemonClient) -> int:
    from console.cli import print_fields, print_json

    job = await client.call("job.get", job_id=args.job_id)
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
    from console.cli import print_json

    reply = await client.call("job.cancel", job_id=args.job_id)
    print_json(reply) if args.json else print(f"{reply['job_id']} {reply['state']}")
    return 0


async def set_priority(args: argparse.Namespace, client: DaemonClient) -> int:
    from console.cli import print_json

    reply = await client.call("job.set_priority", job_id=args.job_id, priority=args.priority)
    print_json(reply) if args.json else print(f"{reply['job_id']} now {reply['priority']}, position {reply['position']}")
    return 0


async def export(args: argparse.Namespace, client: DaemonClient) -> int:
    """Fetch the chunks, check the hash, then write the file atomically with mode 0600."""
    from console.cli import fail, print_json
    from daemon.safefiles import PrivateDir

    target = Path(args.output)
    chunks: list[bytes] = []
    offset, reply = 0, None
    while reply is None or not reply["eof"]:
        reply = await client.call("output.export", job_id=args.job_id, index=args.index, offset=offset)
        chunk = base64.b64decode(reply["data"])
        chunks.append(chunk)
        offset += len(chunk)
    data = b"".join(chunks)
    if hashlib.sha256(data).hexdigest() != reply["sha256"]:
        return fail(f"export of {args.job_id} arrived corrupted (hash mismatch); nothing written")
    with PrivateDir(target) as private:  # nothing another user planted beside the target is opened
        private.write(target.name, data)
        private.move_out(target.name)
    result = {"job_id": args.job_id, "index": args.index, "path": str(target), "bytes": len(data),
              "sha256": reply["sha256"]}
    print_json(result) if args.json else print(f"wrote {target} ({len(data)} bytes, sha256 {reply['sha256'][:16]}…)")
    return 0

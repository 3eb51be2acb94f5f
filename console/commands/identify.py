"""sai identify FILE...: what this installation knows about images (output.identify).

Each file is read here, with the caller's rights, and its bytes are sent to the daemon in chunks
that fit a request line; the daemon opens no path a client names. Exit status: 0 when every image
is ours, 1 when one is not, 2 when one could not be identified (unreadable, too large, not an
image); a file's error does not stop the others.
"""

from __future__ import annotations

import argparse
import base64
import secrets
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from console.cliargs import add_json_flag
from console.cliout import print_json
from daemon.client import DaemonClient
from daemon.exitcodes import ExitCode
from daemon.protocol import INVALID_PARAMS, RATE_LIMITED, RpcError

CHUNK = 512 * 1024
"""Bytes per request: base64 makes them 683 KiB, inside the daemon's 1 MiB line."""
MAX_BYTES = 32 * 1024 * 1024
"""The daemon's limit (daemon.outputs.identify.MAX_BYTES), checked here too so a huge file is not read."""
ERROR = 2


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "identify", help="say whether images are this installation's outputs: C2PA, fingerprint, job",
        description="Report what this installation knows about each image (PNG, JPEG or WebP, also re-encoded, "
                    "resized or cropped): its C2PA credentials checked against the installation CA, the invisible "
                    "fingerprint, and the job it names. Exit status: 0 every image is ours, 1 one is not, "
                    "2 one could not be identified (unreadable, too large, not an image).")
    p.add_argument("files", nargs="+", metavar="FILE", help="image files to identify")
    add_json_flag(p)
    p.set_defaults(handler=identify, needs_daemon=True)


def read_image_file(path: Path) -> bytes:
    """The file's bytes; OSError / ValueError naming what was wrong."""
    if path.is_dir():
        raise ValueError("is a directory")
    with path.open("rb") as stream:
        data = stream.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ValueError(f"larger than {MAX_BYTES} bytes; identify takes at most {MAX_BYTES // (1024 * 1024)} MiB")
    if not data:
        raise ValueError("the file is empty")
    return data


async def identify_bytes(call: Callable[..., Awaitable[Any]], data: bytes) -> dict[str, Any]:
    """output.identify for `data` through `call` (a client's or the console's), sent in chunks;
    the daemon's report (RpcError as it refuses)."""
    upload = secrets.token_hex(8)
    for offset in range(0, len(data), CHUNK):
        reply: dict[str, Any] = await call(
            "output.identify", data=base64.b64encode(data[offset:offset + CHUNK]).decode("ascii"), size=len(data),
            offset=offset, upload=upload)
        if reply.get("complete"):
            return reply
    raise RpcError(INVALID_PARAMS, "the daemon did not finish the upload")


def summary_lines(name: str, report: dict[str, Any]) -> list[str]:
    job, c2pa, mark = report["job"], report["c2pa"], report["mark"]
    head = f"{name}: {'ours' if report['ours'] else 'not ours'}"
    if job:
        head += f": job {job['job_id']}" + (f" image {job['index']}" if job["index"] is not None else "")
    size = f"{report['width']}x{report['height']}"
    lines = [head, f"  image     {report['format']} {size}, sha256 {report['sha256'][:16]}…"]
    if c2pa["state"] is None:
        lines.append("  c2pa      none (no manifest: re-encoded, stripped, or never had one)")
    else:
        signer = f", signed by {c2pa.get('signer')} (issuer {c2pa.get('issuer')})" if c2pa.get("signer") else ""
        failed = f"; failures: {', '.join(c2pa['failures'])}" if c2pa["failures"] else ""
        lines.append(f"  c2pa      {c2pa['state']}{signer}{failed}")
    if mark["found"]:
        extra = [f"confidence {mark['confidence']}"]
        if "corrected" in mark:
            extra.append(f"{mark['corrected']} symbol(s) corrected")
        if mark.get("scale") not in (None, 1.0):
            extra.append(f"found at scale {mark['scale']}")
        lines.append(f"  mark      {mark['method']} fingerprint {mark['fingerprint']} ({', '.join(extra)})")
    else:
        lines.append(f"  mark      none found{(': ' + mark['reason']) if mark.get('reason') else ''}")
    if job:
        lines.append(f"  job       {job['job_id']} ({job['state']}), created {job['created_at']}, "
                     f"model {job['model']}, found by {' and '.join(job['found_by'])}")
        lines.append(f"  owner     {job['user'] if job['owner_visible'] else '(not shown to your role)'}")
        if job["prompt_visible"]:
            lines.append(f"  prompt    {job['prompt']}")
        lines.append("  pixels    " + ("match the recorded PNG hash" if job["pixels"] == "match" else
                                      "changed (re-encoded, resized, cropped or edited since export)"))
    return lines


async def identify(args: argparse.Namespace, client: DaemonClient) -> int:
    results: list[dict[str, Any]] = []
    status: int = ExitCode.OK
    for name in args.files:
        try:
            report = await identify_bytes(client.call, read_image_file(Path(name)))
        except (OSError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            results.append({"file": name, "error": f"cannot read {name}: {why}"})
        except RpcError as exc:
            if exc.code not in (INVALID_PARAMS, RATE_LIMITED):
                raise
            results.append({"file": name, "error": f"{name}: {exc.message}"})
        else:
            results.append({"file": name, **report})
        last = results[-1]
        if "error" in last:
            status = ERROR
            print(f"sai: {last['error']}", file=sys.stderr)
        elif not last["ours"] and status == ExitCode.OK:
            status = ExitCode.FAILURE
        if not args.json and "error" not in last:
            print("\n".join(summary_lines(name, last)))
    if args.json:
        print_json(results)
    return status

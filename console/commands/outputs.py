"""sai inspect FILE.png (local) and sai verify JOB|FILE (a file locally, a job through the daemon)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from console.cliargs import add_json_flag, fleet_sockets, resolve_job
from console.cliout import fail, print_json
from console.fleetroute import where_held
from daemon.client import DaemonClient
from daemon.exitcodes import ExitCode

LOCAL_SUFFIXES = (".png.sai", ".manifest.json", ".manifest.sig")


class _Target(argparse.Action):
    """Stores the target and decides at parse time whether the daemon is needed: a file is
    verified locally with public keys, a job id through `output.verify`."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, value)
        namespace.needs_daemon = not _is_file_target(str(value))


def _is_file_target(value: str) -> bool:
    return value.endswith(LOCAL_SUFFIXES) or os.sep in value or Path(value).is_file()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="show an exported PNG's fingerprint, job and watermarks (offline)")
    p.add_argument("file", metavar="FILE", help="a PNG exported with `sai export`")
    p.add_argument("--outputs-dir", metavar="DIR",
                   help="also match the fingerprint against the manifests in this directory")
    p.add_argument("--prompt", action="store_true", help="also print the prompt from the PNG metadata")
    add_json_flag(p)
    p.set_defaults(handler=inspect_file, needs_daemon=False)

    p = sub.add_parser("verify", help="check an output's signature and hashes (no decryption)")
    p.add_argument("target", action=_Target, metavar="JOB|FILE",
                   help="a job id or its unique start (asks the daemon), or a .png.sai / .manifest.json file "
                        "(checked here)")
    p.add_argument("--index", type=int, help="only this image of the job (default: all)")
    p.add_argument("--keys-dir", metavar="DIR", help="public keys for a FILE (default: the state directory's keys/)")
    add_json_flag(p)
    p.set_defaults(handler=verify, needs_daemon=True)


def _keys_dir(args: argparse.Namespace) -> Path:
    if args.keys_dir:
        return Path(args.keys_dir)
    from daemon import config, paths

    try:
        configured = config.load(args.config).daemon.state_dir
    except config.ConfigError:
        configured = ""
    return paths.state_dir(args.state_dir, configured) / "keys"


async def inspect_file(args: argparse.Namespace, client: DaemonClient | None) -> int:
    from daemon.crypto import OutputError
    from daemon.outputs.verify import inspect_png

    try:
        report = inspect_png(Path(args.file), Path(args.outputs_dir) if args.outputs_dir else None)
    except OutputError as exc:
        return fail(str(exc))
    if not args.prompt:
        for key in ("prompt", "negative_prompt"):
            if key in report["metadata"]:
                report["metadata"][key] = f"<{len(report['metadata'][key])} characters; --prompt shows it>"
    if args.json:
        print_json(report)
        return 0
    meta, inv, vis = report["metadata"], report["invisible"], report["visible"]
    print(f"{report['file']}  {report['width']}x{report['height']}  sha256 {report['sha256'][:16]}…")
    if meta:
        shown = ", ".join(f"{k} {meta[k]}" for k in ("job_id", "index", "model_id", "seed", "created_at", "user")
                          if k in meta)
        print(f"  metadata:       {shown}")
        if args.prompt and "prompt" in meta:
            print(f"  prompt:         {meta['prompt']}")
    else:
        print("  metadata:       none (no sai: entries; stripped or not made here)")
    if inv.get("fingerprint") is None:
        print(f"  invisible mark: unreadable ({inv.get('reason')})")
    else:
        state = "present" if inv["present"] else "not detected"
        print(f"  invisible mark: {state}, fingerprint {inv['fingerprint']} (confidence {inv['confidence']})")
        if inv["matched_job"]:
            bits = round(inv["bit_accuracy"] * 64)
            print(f"                  matches job {inv['matched_job']} "
                  f"({bits}/64 bits; job from {inv['match_source']})")
        elif inv.get("bit_accuracy") is not None:
            print(f"                  does NOT match metadata job {meta.get('job_id')} "
                  f"({round(inv['bit_accuracy'] * 64)}/64 bits)")
        else:
            print("                  no job to compare with (give --outputs-dir)")
    if vis["present"] is None:
        print(f"  visible mark:   unknown ({vis['reason']})")
    else:
        state = "present" if vis["present"] else "NOT present"
        print(f"  visible mark:   {state} (score {vis['score']}, threshold {vis['threshold']})")
    return 0


def _print_verify(report: dict[str, Any]) -> None:
    for out in report["outputs"]:
        name = f"{out.get('job_id', '?')}-{out.get('index', '?')}" if "job_id" in out else out["file"]
        if out["ok"]:
            how = "re-wrapped since signing" if out.get("rewrapped") else "as written"
            print(f"ok      {name}  signed by {out['signing_kid']}, data key under {out['kid']} ({how})")
        else:
            err = out.get("error") or {}
            print(f"FAILED  {name}  {err.get('field', '?')}: {err.get('message', 'unknown error')}")


async def verify(args: argparse.Namespace, client: DaemonClient | None) -> int:
    if client is None:
        from daemon.crypto import OutputError
        from daemon.outputs.verify import verify_output

        path = Path(args.target)
        try:
            report = verify_output(path, path.parent, _keys_dir(args), args.index)
        except (OutputError, OSError) as exc:
            return fail(str(exc))
    else:
        params: dict[str, Any] = {"job_id": await resolve_job(client, args.target)}
        if args.index is not None:
            params["index"] = args.index
        report = await where_held(lambda call: call("output.verify", **params), client.call,
                                  lambda: fleet_sockets(args))  # another box's outputs: verified there
    if args.json:
        print_json(report)
    else:
        _print_verify(report)
    if not report["ok"]:
        return fail(f"verification of {args.target} failed", ExitCode.VERIFY_FAILED)
    return 0

"""sai backup DIR (a signed snapshot of a running daemon's state) and sai restore DIR --state-dir NEW."""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import pwd
import sys
import time
from pathlib import Path

from console.cliargs import add_json_flag
from console.cliout import fail, print_json
from daemon.client import DaemonClient
from daemon.exitcodes import ExitCode

BACKUP_NICENESS = 10
"""The copy yields the CPU to the daemon it backs up (bench/backup.py measures submits meanwhile)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("backup", help="signed, consistent snapshot of the running daemon's state into a new DIR "
                                      "(run as the daemon's user)")
    p.add_argument("directory", metavar="DIR", help="a new (or empty) directory for the backup")
    p.add_argument("--include-plain-keys", action="store_true",
                   help="back up keys that are not sealed with a passphrase (the backup then holds them in the clear)")
    add_json_flag(p)
    p.set_defaults(handler=backup, needs_daemon=True)

    p = sub.add_parser("restore", help="check a backup and restore it into a new state directory (--state-dir NEW)")
    p.add_argument("directory", metavar="DIR", help="a directory written by `sai backup`")
    p.add_argument("--key", metavar="PEM", help="the installation's signing.pub.pem, kept apart: the backup must be "
                                               "signed by it")
    add_json_flag(p)
    p.set_defaults(handler=restore, needs_daemon=False)


def _owner_problem(state_dir: Path) -> str | None:
    """Why this process cannot copy `state_dir` (it must run as the daemon's user), or None."""
    try:
        owner = state_dir.stat().st_uid
    except PermissionError:
        return (f"cannot read the daemon's state directory {state_dir}: run `sai backup` as the daemon's user "
                "(e.g. sudo -u sai sai backup DIR)")
    if owner != os.geteuid():
        try:
            name = pwd.getpwuid(owner).pw_name
        except KeyError:
            name = str(owner)
        return (f"the daemon's state directory {state_dir} belongs to {name}: run as that user "
                f"(sudo -u {name} sai backup DIR), so the copy reads what the daemon wrote and nothing else")
    return None


async def backup(args: argparse.Namespace, client: DaemonClient) -> int:
    from daemon.backup.manifest import BackupError, encode, sign_document
    from daemon.backup.restore import check
    from daemon.backup.snapshot import Snapshot

    status = await client.call("daemon.status")
    state_dir = Path(status["state_dir"])
    problem = _owner_problem(state_dir)
    if problem:
        return fail(problem)
    os.nice(BACKUP_NICENESS)
    started = time.perf_counter()
    copied = [0, 0]

    def count(rel: str, size: int) -> None:
        copied[0] += 1
        copied[1] += size

    try:
        with Snapshot(state_dir, Path(args.directory), status["installation"],
                      include_plain_keys=args.include_plain_keys, on_file=count) as snap:
            if snap.keys == "plain":
                print(f"sai: warning: the keys in {state_dir / 'keys'} are not sealed; this backup holds them in the "
                      "clear: keep it where only the daemon's administrators can read it", file=sys.stderr)
            manifest = await asyncio.to_thread(snap.take)
            digest = hashlib.sha256(encode(manifest)).hexdigest()
            reply = await client.call("backup.sign", manifest_sha256=digest, audit_size=manifest["audit"]["size"],
                                      audit_root=manifest["audit"]["root"])
            target = snap.finish(manifest, sign_document(digest, reply["key_id"], base64.b64decode(reply["signature"])))
        await asyncio.to_thread(check, target)
    except BackupError as exc:
        return fail(f"backup refused: {exc}")
    except OSError as exc:
        return fail(f"backup failed: {exc}")
    result = {"directory": str(target), "files": copied[0], "bytes": copied[1], "key_id": reply["key_id"],
              "manifest_sha256": digest, "audit": manifest["audit"], "keys": manifest["keys"],
              "excluded": manifest["excluded"], "seconds": round(time.perf_counter() - started, 3)}
    if args.json:
        print_json(result)
    else:
        print(f"backed up {copied[0]} files ({copied[1] / 1e6:.1f} MB; keys {manifest['keys']}; audit log at "
              f"{manifest['audit']['size']} entries) to {target}")
        print(f"signed by {reply['key_id']}; restore with `sai restore {target} --state-dir NEW --key signing.pub.pem`")
    return 0


async def restore(args: argparse.Namespace, client: DaemonClient | None = None) -> int:
    from daemon.backup.manifest import BackupError, load_public_key
    from daemon.backup.restore import Restore

    if not getattr(args, "state_dir", None):
        return fail("restore needs --state-dir NEW: a new or empty directory to restore into", ExitCode.USAGE)
    pinned = None
    try:
        if args.key:
            pinned = load_public_key(Path(args.key).read_bytes(), args.key)
        result = await asyncio.to_thread(Restore(Path(args.directory), Path(args.state_dir), pinned).run)
    except BackupError as exc:
        # The backup fails its checks (changed, unsigned, not this installation's): verification failed.
        occupied = exc.path == str(Path(args.state_dir))
        return fail(f"restore refused: {exc}", ExitCode.FAILURE if occupied else ExitCode.VERIFY_FAILED)
    except OSError as exc:
        return fail(f"restore failed: {exc}")
    if args.json:
        print_json(result)
    else:
        print(f"restored {result['files']} files ({result['bytes'] / 1e6:.1f} MB) of {result['installation']} "
              f"from {result['created_at']} into {result['state_dir']}")
        print(f"signature by {result['key_id']}{' (pinned with --key)' if pinned else ''} and every file checked; "
              f"audit log at {result['audit']['size']} entries")
        print(f"start it: sai daemon --state-dir {result['state_dir']}"
              + (" (the keys are sealed: the same passphrase)" if result["keys"] == "sealed" else ""))
    return 0

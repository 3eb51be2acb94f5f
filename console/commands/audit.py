"""sai audit tail | verify | checkpoint | proof | consistency | export | verify-export."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from console.cliargs import add_json_flag
from console.cliout import fail, print_json
from daemon.client import DaemonClient
from daemon.exitcodes import ExitCode


def register(sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser("audit", help="the audit log: tail, verify, checkpoints, proofs, export")
    cmds = audit.add_subparsers(dest="audit_command", metavar="AUDIT_COMMAND", required=True)

    p = cmds.add_parser("tail", help="latest entries (oldest first); -f follows new ones")
    p.add_argument("-n", "--limit", type=int, default=20, metavar="N", help="entries to show first, 1 to 1000")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing entries as they are written")
    p.add_argument("--action", help="only this action, e.g. job.submit")
    p.add_argument("--actor", help="only this user (name, or uid)")
    add_json_flag(p)
    p.set_defaults(handler=tail, needs_daemon=True)

    p = cmds.add_parser("verify", help="check the log: tree, checkpoints and signatures")
    p.add_argument("--deep", action="store_true", help="check every entry's signature and the stored tree too")
    p.add_argument("--against", metavar="CHECKPOINT_FILE",
                   help="a checkpoint saved earlier: prove the log still extends it")
    p.add_argument("--key", metavar="PEM", help="pin the log's first signing key (PEM) instead of the daemon's anchor")
    p.add_argument("--witnessed", action="store_true",
                   help="a fleet member: prove the log extends every checkpoint of it the other boxes cosigned")
    add_json_flag(p)
    p.set_defaults(handler=verify, needs_daemon=True)

    p = cmds.add_parser("checkpoint", help="a signed checkpoint of the log now (save it to check against later)")
    p.add_argument("-o", "--output", help="also write it to this file")
    add_json_flag(p)
    p.set_defaults(handler=checkpoint, needs_daemon=True)

    p = cmds.add_parser("proof", help="inclusion proof of entry SEQ, checked here against the returned root")
    p.add_argument("seq", type=int, metavar="SEQ", help="the entry's sequence number")
    p.add_argument("--tree-size", type=int, metavar="N", help="tree size to prove against (default: the whole log)")
    add_json_flag(p)
    p.set_defaults(handler=proof, needs_daemon=True)

    p = cmds.add_parser("consistency", help="proof that the log at size FIRST is a prefix of the log at SECOND")
    p.add_argument("first", type=int, metavar="FIRST", help="the earlier tree size")
    p.add_argument("second", type=int, nargs="?", metavar="SECOND", help="the later tree size (default: the whole log)")
    add_json_flag(p)
    p.set_defaults(handler=consistency, needs_daemon=True)

    p = cmds.add_parser("export",
                        help="write entries, checkpoints and public keys to DIR (admin; on the daemon's host)")
    p.add_argument("directory", metavar="DIR")
    add_json_flag(p)
    p.set_defaults(handler=export, needs_daemon=True)

    p = cmds.add_parser("verify-export", help="check an export directory on its own (no daemon needed)")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--deep", action="store_true", help="check every entry's signature too")
    p.add_argument("--against", metavar="CHECKPOINT_FILE",
                   help="a checkpoint saved earlier that the export must extend")
    p.add_argument("--key", metavar="PEM", help="pin the log's first signing key (PEM): the key chain must start at it "
                                                "(keys/signing-<first kid>.pub.pem on the daemon's host)")
    add_json_flag(p)
    p.set_defaults(handler=verify_export, needs_daemon=False)

    for leaf in cmds.choices.values():  # `sai audit tail --socket S` as well as `sai --socket S audit tail`
        for flag in ("--socket", "--config", "--state-dir"):
            leaf.add_argument(flag, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _details(details: dict[str, Any], width: int = 60) -> str:
    text = json.dumps(details, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return text if len(text) <= width else text[: width - 1] + "…"


def _row(e: dict[str, Any]) -> str:
    actor = e["actor"]
    who = f"{actor['user']}({actor['uid']})"
    subject = e["subject"] or "-"
    return f"{e['seq']:>8}  {e['time'][:19]}  {who:<16} {e['action']:<18} {subject:<22} {_details(e['details'])}"


def _matches(e: dict[str, Any], args: argparse.Namespace) -> bool:
    if args.action and e.get("action") != args.action:
        return False
    if args.actor:
        actor = e.get("actor", {})
        return actor.get("user") == args.actor or str(actor.get("uid")) == args.actor
    return True


async def tail(args: argparse.Namespace, client: DaemonClient) -> int:
    if not 1 <= args.limit <= 1000:
        return fail("--limit must be between 1 and 1000", ExitCode.USAGE)
    if args.follow:
        await client.call("events.subscribe", topics=["audit"])
    reply = await client.call("audit.tail", limit=args.limit, action=args.action, actor=args.actor)
    emit = (lambda e: print(json.dumps(e, ensure_ascii=False), flush=True)) if args.json else \
        (lambda e: print(_row(e), flush=True))
    if not args.json:
        print(f"{'SEQ':>8}  {'TIME (UTC)':<19}  {'ACTOR':<16} {'ACTION':<18} {'SUBJECT':<22} DETAILS")
    last = -1
    for entry in reply["entries"]:
        emit(entry)
        last = entry["seq"]
    if not args.follow:
        return 0
    async for event in client.events():
        if event.get("topic") != "audit":
            continue
        entry = event.get("data") or {}
        if entry.get("seq", -1) > last and _matches(entry, args):
            emit(entry)
            last = entry["seq"]
    return fail("the daemon closed the connection")


def _print_verdict(result: dict[str, Any], what: str, also: str = "") -> int:
    if result["ok"]:
        print(f"ok: {what} verified, {result['size']} entries{also}")
        return 0
    where = f" (first bad entry: {result['first_bad']})" if result.get("first_bad") is not None else ""
    print(f"sai: {what} FAILED verification{where}: {result['reason']}", file=sys.stderr)
    return ExitCode.VERIFY_FAILED


def _read_checkpoint(path: str | None) -> str | None:
    """The saved checkpoint's text; OSError if it cannot be read."""
    return None if path is None else Path(path).read_text(encoding="utf-8")


def _pinned_key(path: str) -> bytes | str:
    """The raw Ed25519 public key in PEM file `path`, or why it cannot be used."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        return f"cannot read public key {path}: {exc}"
    if not isinstance(key, Ed25519PublicKey):
        return f"{path} is not an Ed25519 public key"
    return key.public_bytes_raw()


async def verify(args: argparse.Namespace, client: DaemonClient) -> int:
    import base64

    try:
        against = _read_checkpoint(args.against)
    except OSError as exc:
        return fail(f"cannot read checkpoint {args.against}: {exc.strerror}")
    params: dict[str, Any] = {"deep": args.deep, "against": against}
    if args.witnessed:
        params["witnessed"] = True
    if args.key:
        raw = _pinned_key(args.key)
        if isinstance(raw, str):
            return fail(raw)
        params["first_key"] = base64.b64encode(raw).decode()
    result = await client.call("audit.verify", **params)
    if args.json:
        print_json(result)
        return ExitCode.OK if result["ok"] else ExitCode.VERIFY_FAILED
    witnessed = (f", consistent with the {result['witnessed_checked']} of its checkpoints the fleet's other boxes "
                 "witnessed" if args.witnessed else "")
    return _print_verdict(result, "the audit log" + (" (deep)" if args.deep else ""), witnessed)


async def checkpoint(args: argparse.Namespace, client: DaemonClient) -> int:
    note = (await client.call("audit.checkpoint"))["checkpoint"]
    if args.output:
        try:
            Path(args.output).write_text(note, encoding="utf-8")
        except OSError as exc:
            return fail(f"cannot write {args.output}: {exc.strerror}")
    if args.json:
        print_json({"checkpoint": note})
    else:
        sys.stdout.write(note)
    return 0


async def proof(args: argparse.Namespace, client: DaemonClient) -> int:
    from daemon.audit.merkle import verify_inclusion

    reply = await client.call("audit.proof", index=args.seq, tree_size=args.tree_size)
    ok = verify_inclusion(reply["index"], reply["tree_size"], bytes.fromhex(reply["leaf_hash"]),
                          [bytes.fromhex(h) for h in reply["hashes"]], bytes.fromhex(reply["root_hash"]))
    if args.json:
        print_json({**reply, "verified": ok})
    else:
        print(f"entry {reply['index']} in tree of {reply['tree_size']}")
        print(f"leaf  {reply['leaf_hash']}")
        for h in reply["hashes"]:
            print(f"path  {h}")
        print(f"root  {reply['root_hash']}")
        print("proof verified against the root" if ok else "PROOF DOES NOT VERIFY")
    return ExitCode.OK if ok else ExitCode.VERIFY_FAILED


async def consistency(args: argparse.Namespace, client: DaemonClient) -> int:
    from daemon.audit.merkle import verify_consistency

    reply = await client.call("audit.consistency", first=args.first, second=args.second)
    ok = verify_consistency(reply["first"], reply["second"], bytes.fromhex(reply["first_root"]),
                            bytes.fromhex(reply["second_root"]), [bytes.fromhex(h) for h in reply["hashes"]])
    if args.json:
        print_json({**reply, "verified": ok})
    else:
        print(f"from {reply['first']} entries (root {reply['first_root']})")
        print(f"to   {reply['second']} entries (root {reply['second_root']})")
        for h in reply["hashes"]:
            print(f"path {h}")
        print("consistency verified" if ok else "PROOF DOES NOT VERIFY")
    return ExitCode.OK if ok else ExitCode.VERIFY_FAILED


async def export(args: argparse.Namespace, client: DaemonClient) -> int:
    reply = await client.call("audit.export", directory=str(Path(args.directory).resolve()))
    if args.json:
        print_json(reply)
    else:
        print(f"exported {reply['entries']} entries, checkpoints and {len(reply['keys'])} public key(s) "
              f"to {reply['directory']}; check it with `sai audit verify-export {reply['directory']}`")
    return 0


async def verify_export(args: argparse.Namespace, client: DaemonClient | None = None) -> int:
    import asyncio

    from daemon.audit.chain import Pin
    from daemon.audit.verify import verify_export as check

    pin = None
    if args.key:
        raw = _pinned_key(args.key)
        if isinstance(raw, str):
            return fail(raw)
        pin = Pin(raw, f"--key {args.key}")
    try:
        against = _read_checkpoint(args.against)
    except OSError as exc:
        return fail(f"cannot read checkpoint {args.against}: {exc.strerror}")
    result = await asyncio.to_thread(check, Path(args.directory), args.deep, against, pin)
    if args.json:
        print_json(result)
        return ExitCode.OK if result["ok"] else ExitCode.VERIFY_FAILED
    return _print_verdict(result, f"the export in {args.directory}")

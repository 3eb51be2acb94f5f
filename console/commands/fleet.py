"""sai fleet [--json]: every box of the fleet, its heartbeat age, load and models (fleet.status)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from console.cliargs import add_json_flag
from console.cliout import print_json
from daemon.client import DaemonClient

COLUMNS = ("box", "heartbeat", "workers", "running", "models", "devices", "version", "reach")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fleet", help="the fleet's boxes: heartbeat age, load, models (fleet.status)",
                       description="Lists every box of the fleet this daemon belongs to ([fleet] database): its "
                                   "name, the age of its last heartbeat, its free/total workers, the jobs running "
                                   "on it, its models and devices, and how to reach its socket; then the fleet's "
                                   "queue. A daemon without [fleet] database is a single box and says so. Piped "
                                   "(not a terminal): one box per line, tab-separated, no header, the columns "
                                   + ", ".join(COLUMNS) + ".")
    add_json_flag(p)
    p.set_defaults(handler=show_fleet, needs_daemon=True)
    cmds = p.add_subparsers(dest="fleet_command", metavar="{key}")
    key = cmds.add_parser("key", help="the fleet's prompt key ([fleet] prompt_key_file)")
    key_cmds = key.add_subparsers(dest="key_command", metavar="{generate}", required=True)
    gen = key_cmds.add_parser("generate", help="make a new fleet prompt key (32 random bytes, mode 0600)",
                              description="Writes a new random fleet prompt key to FILE (never over an existing "
                                          "file), mode 0600. Make it once per fleet, copy it to every box out of "
                                          "band (scp, a secrets manager) owned by the daemon's user, and set "
                                          "[fleet] prompt_key_file to it on each box. No daemon is needed.")
    gen.add_argument("file", metavar="FILE")
    gen.set_defaults(handler=generate_key, needs_daemon=False)
    for leaf in (key, gen):  # `sai fleet key generate F --config C` as well as before the command
        for flag in ("--socket", "--config", "--state-dir"):
            leaf.add_argument(flag, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


async def generate_key(args: argparse.Namespace, _client: DaemonClient | None) -> int:
    from pathlib import Path

    from daemon.fleet.prompt_key import PromptKeyError, generate
    try:
        kid = generate(Path(args.file))
    except (PromptKeyError, OSError) as exc:
        print(f"sai fleet key generate: {exc}", file=sys.stderr)
        return 1
    print(f"wrote the fleet prompt key {kid} to {args.file} (mode 0600); copy it to every box and set "
          "[fleet] prompt_key_file", file=sys.stderr)
    return 0


def _age(seconds: float) -> str:
    return f"{seconds:.1f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def row(box: dict[str, Any]) -> tuple[str, ...]:
    devices = ", ".join(f"{d.get('worker', '?')} ({d.get('device', '?')})" for d in box.get("devices") or [])
    return (str(box["name"]), _age(float(box["heartbeat_age"])), f"{box['free_workers']}/{box['workers']} free",
            str(box["running"]), ", ".join(box.get("models") or []) or "-", devices or "-",
            str(box.get("version") or "-"), str(box.get("reach") or box.get("socket") or "-"))


async def show_fleet(args: argparse.Namespace, client: DaemonClient) -> int:
    reply = await client.call("fleet.status")
    if args.json:
        print_json(reply)
        return 0
    if not reply["configured"]:
        print("a single box: [fleet] database is not set, so this daemon has its own queue (docs/fleet.md)",
              file=sys.stderr)
        return 0
    rows = [row(box) for box in reply["boxes"]]
    if not sys.stdout.isatty():
        sys.stdout.writelines("\t".join(cells) + "\n" for cells in rows)
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False, title=f"fleet of {len(rows)} box(es) at {reply['database']} "
                                                  f"(this box: {reply['box']})", title_justify="left")
    for column in COLUMNS:
        table.add_column(column, overflow="fold")
    for cells in rows:
        table.add_row(*cells)
    console = Console(highlight=False)
    console.print(table)
    console.print(f"queue: {reply['queued']} queued, {reply['running']} running (lease {reply['lease_seconds']:g} s)")
    return 0

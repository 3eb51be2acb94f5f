"""sai models [--json]: the models a job may name, their defaults, and which the worker holds."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from console.cliargs import add_json_flag
from console.cliout import print_json
from console.formatting import human_bytes
from daemon.client import DaemonClient

COLUMNS = ("name", "family", "default", "loaded", "device", "size", "defaults", "weights_sha256", "path")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="the configured models (job.submit's model), their defaults, which are loaded",
                       description="Lists the models configured for this daemon ([model] and [models.NAME]): the "
                                   "name a job gives as `sai submit --model NAME`, its family, whether it is the "
                                   "default and loaded (on which device), its size on disk, the defaults its jobs "
                                   "get, and the SHA-256 of its weights once loaded. Piped (not a terminal): one "
                                   "model per line, tab-separated, no header, the columns " + ", ".join(COLUMNS) + ".")
    add_json_flag(p)
    p.set_defaults(handler=list_models, needs_daemon=True)


def _defaults(model: dict[str, Any]) -> str:
    d = model.get("defaults") or {}
    guidance = "ignored" if model.get("guidance") == "none" else d.get("guidance")
    return f"{d.get('width')}x{d.get('height')} {d.get('steps')} steps guidance {guidance} {d.get('scheduler')}"


def row(model: dict[str, Any]) -> tuple[str, ...]:
    """One model's columns (COLUMNS) as text; an unknown value is "-"."""
    return (str(model["name"]), str(model.get("family") or "-"), "yes" if model.get("default") else "no",
            "yes" if model.get("loaded") else "no", str(model.get("device") or "-"),
            human_bytes(model.get("size_bytes")) if model.get("size_bytes") else "-", _defaults(model),
            str(model.get("weights_sha256") or "-"), str(model.get("path") or "(built in)"))


async def list_models(args: argparse.Namespace, client: DaemonClient) -> int:
    reply = await client.call("model.list")
    if args.json:
        print_json(reply)
        return 0
    rows = [row(model) for model in reply["models"]]
    if not sys.stdout.isatty():
        sys.stdout.writelines("\t".join(cells) + "\n" for cells in rows)
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in COLUMNS:
        table.add_column(column, no_wrap=column != "path", overflow="fold")
    for cells in rows:
        table.add_row(*[cells[i][:12] + "…" if COLUMNS[i] == "weights_sha256" and len(cells[i]) > 13 else cells[i]
                        for i in range(len(cells))])
    Console(highlight=False).print(table)
    return 0

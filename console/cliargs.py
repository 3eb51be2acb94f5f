"""The arguments `sai` commands share, named the same everywhere: --json, JOB (a full id or a
unique start of one, resolved by the daemon) and the daemon socket an invocation talks to."""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from daemon.client import DaemonClient

FULL_JOB_ID = re.compile(r"j[0-9a-f]{12}")


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False)) or getattr(args, "format", None) == "json"


def add_job_argument(parser: argparse.ArgumentParser, nargs: str | None = None, text: str = "") -> None:
    """The JOB argument, named the same in every command; `resolve_job` turns it into a full id."""
    parser.add_argument("job_id", metavar="JOB", nargs=nargs,
                        help=text or "a job id, or enough of its start to be unique (e.g. j3f2a)")


async def resolve_job(client: DaemonClient, text: str) -> str:
    """The full id of the job `text` names: a full id as it is, else the daemon's `job.resolve`
    (RpcError: no such job, or several, named)."""
    if FULL_JOB_ID.fullmatch(text):
        return text
    return str((await client.call("job.resolve", prefix=text))["job_id"])


def socket_for(args: argparse.Namespace) -> str:
    """The socket this invocation talks to: --socket, else $SAI_SOCKET, the config's, the default."""
    from daemon import config, paths

    configured = config.load(args.config).daemon.socket if args.config else _configured_socket()
    return str(paths.socket_path(args.socket, configured))


def fleet_sockets(args: argparse.Namespace) -> dict[str, str]:
    """The client config's `[fleet] sockets` (box name -> a socket reaching that box's daemon): where
    `sai export` and `sai verify` follow a job's outputs held by another box (console.fleetroute)."""
    from daemon import config

    return dict(config.load(args.config).fleet.sockets)


def _configured_socket() -> str:
    from daemon import config

    try:
        return config.load().daemon.socket
    except config.ConfigError:
        return ""

"""sai doctor: check this box before opening the service, or when something is off."""

from __future__ import annotations

import argparse
import os
import pwd

from console.cliargs import add_json_flag
from console.cliout import fail, print_json

STYLES = {"OK": "green", "WARN": "yellow", "FAIL": "bold red"}


def register(sub: argparse._SubParsersAction) -> None:
    doctor = sub.add_parser(
        "doctor", help="preflight: versions against the lock, torch and GPUs, disk, key modes, config, models, clock",
        description="Checks this box without a daemon. Exit status 0: all OK; 10: warnings; 11: a check failed. "
                    "Run it as the daemon's user, or give --user.")
    doctor.add_argument("--lock", metavar="FILE",
                        help="the lock file the installation was made from (default: PREFIX/requirements.lock beside "
                             "the venv, else the checkout's; the CPU or CUDA lock by torch's build)")
    doctor.add_argument("--user", metavar="NAME",
                        help="the user the daemon runs as (default: the user running sai doctor)")
    add_json_flag(doctor)
    doctor.set_defaults(handler=doctor_command, needs_daemon=False)


async def doctor_command(args: argparse.Namespace, client: None) -> int:
    import asyncio

    from daemon.doctor import exit_code
    from daemon.doctor.run import run_checks
    from daemon.exitcodes import ExitCode

    try:
        uid = pwd.getpwnam(args.user).pw_uid if args.user else os.geteuid()
    except KeyError:
        return fail(f"doctor: no user named {args.user!r}", ExitCode.USAGE)
    checks = await asyncio.to_thread(run_checks, args.config, args.state_dir, args.lock, uid)
    if args.json:
        print_json([c.as_dict() for c in checks])
    else:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(box=None, pad_edge=False)
        table.add_column("CHECK", no_wrap=True)
        table.add_column("STATUS", no_wrap=True)
        table.add_column("DETAIL", ratio=3, overflow="fold")
        table.add_column("FIX", ratio=2, overflow="fold")
        for c in checks:
            table.add_row(Text(c.check), Text(c.status, style=STYLES[c.status]), Text(c.detail), Text(c.fix))
        Console(highlight=False).print(table)
    return exit_code(checks)

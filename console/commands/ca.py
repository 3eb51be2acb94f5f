"""sai ca export [FILE]: the installation's C2PA CA certificate(s), for others to trust as an anchor."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from console.cliargs import add_json_flag
from console.cliout import fail, print_json
from daemon.client import DaemonClient
from daemon.exitcodes import ExitCode


def register(sub: argparse._SubParsersAction) -> None:
    ca = sub.add_parser("ca", help="the installation's C2PA certificate authority (Content Credentials)")
    cmds = ca.add_subparsers(dest="ca_command", metavar="CA_COMMAND", required=True)
    p = cmds.add_parser("export", help="write the CA certificate (PEM) that verifies exported images' C2PA "
                                       "credentials; to standard output without FILE")
    p.add_argument("file", nargs="?", metavar="FILE", help="file to write (mode 0644: the certificate is public)")
    add_json_flag(p)
    p.set_defaults(handler=export, needs_daemon=True)
    for leaf in cmds.choices.values():  # `sai ca export --socket S` as well as `sai --socket S ca export`
        for flag in ("--socket", "--config", "--state-dir"):
            leaf.add_argument(flag, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


async def export(args: argparse.Namespace, client: DaemonClient) -> int:
    from daemon.safefiles import PrivateDir, UnsafePath

    reply = await client.call("ca.export")
    pem: str = reply["pem"]
    if not args.file:
        if args.json:
            print_json(reply)
        else:
            sys.stdout.write(pem)
        return 0
    target = Path(args.file)
    if target.is_dir():
        return fail(f"{target} is a directory: name the file to write, e.g. {target / 'sai-ca.pem'}", ExitCode.USAGE)
    try:
        with PrivateDir(target) as private:
            private.write(target.name, pem.encode("ascii"), 0o644)
            private.move_out(target.name)
    except (OSError, UnsafePath) as exc:
        return fail(f"cannot write {target}: {exc}", ExitCode.FAILURE)
    current = reply["current"]
    result = {"path": str(target), "ca_id": current["ca_id"], "certificates": len(reply["certificates"]),
              "ca_not_after": current["ca_not_after"]}
    if args.json:
        print_json(result)
    else:
        more = f" (+{len(reply['certificates']) - 1} earlier CA still valid)" if len(reply["certificates"]) > 1 else ""
        print(f"wrote {target}: {current['ca_subject']}, valid until {current['ca_not_after']}{more}")
    return 0

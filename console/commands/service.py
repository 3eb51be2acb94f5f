"""sai daemon, sai status, sai pause, sai resume."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from console.cliargs import add_json_flag
from console.cliout import print_fields, print_json
from daemon.client import DaemonClient
from daemon.exitcodes import ExitCode


def register(sub: argparse._SubParsersAction) -> None:
    daemon = sub.add_parser("daemon", help="run the daemon in the foreground (for systemd)")
    daemon.set_defaults(handler=run_daemon, needs_daemon=False)
    status = sub.add_parser("status", help="the daemon, its worker and its queue")
    add_json_flag(status)
    status.set_defaults(handler=show_status, needs_daemon=True)
    worker = sub.add_parser("worker", help="the generation worker")
    worker_sub = worker.add_subparsers(dest="worker_command", metavar="ACTION", required=True)
    restart = worker_sub.add_parser(
        "restart", help="restart a worker, or all of them (admin)",
        description="Restart a worker process (admin), or every worker when no NAME is given. The batch it is "
                    "running finishes first and no new one starts on it meanwhile; then the worker restarts (at "
                    "once when idle). This also clears a crash-loop halt.")
    restart.add_argument("name", nargs="?", default=None, metavar="NAME",
                         help="the worker, as `sai status` lists them (cpu0, cuda1, ...); default: all")
    restart.add_argument("--reason", default="", help="recorded in the audit log (default: none)")
    add_json_flag(restart)
    restart.set_defaults(handler=restart_worker, needs_daemon=True)
    for name, method, text in (("pause", "queue.pause", "stop starting jobs (running ones finish)"),
                               ("resume", "queue.resume", "start jobs again")):
        p = sub.add_parser(name, help=text)
        add_json_flag(p)
        p.set_defaults(handler=_queue_call(method), needs_daemon=True)


async def run_daemon(args: argparse.Namespace, client: None) -> int:
    from pathlib import Path

    from daemon import config, logs, service

    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        print(f"sai daemon: bad configuration: {exc}", file=sys.stderr)
        return ExitCode.NOT_STARTED
    logs.setup(cfg.daemon.log_level)
    from daemon import paths

    socket_path = paths.socket_path(args.socket, cfg.daemon.socket)
    state_dir = Path(args.state_dir) if args.state_dir else None
    return await service.run(cfg, socket_path, state_dir)


async def show_status(args: argparse.Namespace, client: DaemonClient) -> int:
    from console.formatting import duration

    status: dict[str, Any] = await client.call("daemon.status")
    if args.json:
        print_json(status)
        return 0
    worker, queue = status["worker"], status["queue"]
    lines = [
        ("daemon", f"{status['installation']} pid {status['pid']} up {duration(status['uptime'])}"
                   f"{' (embedded)' if status['embedded'] else ''}"),
        ("socket", status["socket"]),
        ("model", f"{worker['model_id']} on {worker.get('device') or '-'} ({worker.get('dtype') or '-'})"
                  if worker.get("model_id") else f"{status['model']['name']}, not loaded (worker {worker['state']})"),
        *_worker_lines(status.get("workers") or [worker]),
        *[("FAILED", task["message"]) for task in status.get("tasks", {}).get("failed", [])],
        *[("ALERT", f"{alert['message']} (sai ack {alert['id']})")
          for alert in status.get("alerts", {}).get("critical", [])],
        ("queue", f"{'PAUSED' if queue['paused'] else 'running'}: "
                  f"{queue['queued']} queued, {queue['running']} running"),
        ("you", f"{status['you']['user']} ({status['you']['role']})"),
    ]
    print_fields(lines)
    return 0


def _worker_lines(workers: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """One line per worker (named when there are several), and a HALTED line for each halted one."""
    from console.formatting import human_bytes

    lines: list[tuple[str, str]] = []
    for worker in workers:
        several = len(workers) > 1
        label = f"worker {worker.get('name')}" if several else "worker"
        where = f"{worker.get('configured_device') or '-'}: " if several else ""
        rss = (worker.get("memory") or {}).get("rss")
        lines.append((label, f"{where}{worker['state']} pid {worker.get('pid') or '-'} restarts {worker['restarts']}"
                             + (f" rss {human_bytes(rss)}" if several and rss else "")
                             + (f" last error: {worker['last_error']}" if worker.get("last_error") else "")))
        if worker.get("halted"):
            how = f"sai worker restart {worker.get('name')}" if several else "sai worker restart"
            lines.append(("HALTED", f"{worker['halted']} ({how})"))
    return lines


async def restart_worker(args: argparse.Namespace, client: DaemonClient) -> int:
    params: dict[str, Any] = {"reason": args.reason}
    if args.name is not None:
        params["worker"] = args.name
    reply = await client.call("worker.restart", **params)
    if args.json:
        print_json(reply)
    else:
        names = reply.get("workers") or []
        who = f"worker {names[0]}" if len(names) == 1 else f"workers {', '.join(names)}" if names else "worker"
        print(f"{who} restarting " + ("once the running batch finishes (no new batch starts meanwhile)"
                                     if reply["after_batch"] else "now"))
    return 0


def _queue_call(method: str) -> Any:
    async def handler(args: argparse.Namespace, client: DaemonClient) -> int:
        result = await client.call(method)
        if args.json:
            print_json(result)
        else:
            print(f"queue {'paused' if result['paused'] else 'running'}: {result['queued']} queued, "
                  f"{result['running']} running")
        return 0

    return handler


"""sai metrics [--prometheus] [--json], sai alerts [--all] [--json], sai ack ALERT_ID."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import Any

from console.cliargs import add_json_flag
from console.cliout import print_fields, print_json
from console.formatting import human_bytes
from daemon.client import DaemonClient

GIB = 1024 ** 3


def register(sub: argparse._SubParsersAction) -> None:
    metrics = sub.add_parser("metrics", help="host, worker and GPU figures from the daemon's latest sample")
    form = metrics.add_mutually_exclusive_group()
    form.add_argument("--prometheus", action="store_true", help="print them in the Prometheus text format")
    form.add_argument("--json", action="store_true", help="print JSON for scripts")
    metrics.set_defaults(handler=show_metrics, needs_daemon=True)
    alerts = sub.add_parser("alerts", help="open alerts (active and acknowledged)")
    alerts.add_argument("--all", action="store_true", help="cleared ones too")
    alerts.add_argument("--limit", type=int, default=100, help="most alerts to show (default 100)")
    add_json_flag(alerts)
    alerts.set_defaults(handler=show_alerts, needs_daemon=True)
    ack = sub.add_parser("ack", help="acknowledge an alert (operator)")
    ack.add_argument("alert_id", metavar="ALERT_ID", help="the alert's id, as `sai alerts` shows it")
    add_json_flag(ack)
    ack.set_defaults(handler=ack_alert, needs_daemon=True)


size = human_bytes


def _figure(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}{unit}"
    return f"{value}{unit}" if isinstance(value, int) else str(value)


def _clock(stamp: str | None) -> str:
    if not stamp:
        return "-"
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def metrics_lines(sample: dict[str, Any]) -> list[tuple[str, str]]:
    host, daemon, worker = sample.get("host") or {}, sample.get("daemon") or {}, sample.get("worker") or {}
    memory, disk = host.get("memory") or {}, sample.get("disk") or {}
    lines = [
        ("sample", f"{_clock(sample.get('time'))} (every {_figure(sample.get('interval'), ' s')})"),
        ("host", f"cpu {_figure(host.get('cpu_percent'), '%')}  load {_figure(host.get('load_1m'))}  memory "
                 f"{size(memory.get('used'))} / {size(memory.get('total'))} ({_figure(memory.get('percent'), '%')})"),
        ("daemon", f"pid {daemon.get('pid')}  rss {size(daemon.get('rss'))}  "
                   f"cpu {_figure(daemon.get('cpu_percent'), '%')}"),
        ("worker", f"pid {worker.get('pid') or '-'}  rss {size(worker.get('rss'))}  "
                   f"cpu {_figure(worker.get('cpu_percent'), '%')}  gpu memory {size(worker.get('gpu_memory'))}"),
        ("torch", f"allocated {size(worker.get('torch_allocated'))}  reserved {size(worker.get('torch_reserved'))}  "
                  f"peak {size(worker.get('torch_peak'))}  (as of the worker's last batch)"),
    ]
    gpu = sample.get("gpu") or {}
    if not sample.get("gpus"):
        lines.append(("gpu", f"none: {gpu.get('reason') or 'NVML reports none'}"))
    for entry in sample.get("gpus") or []:
        mem = entry.get("memory") or {}
        lines.append((f"gpu{entry.get('index')}",
                      f"{entry.get('name')}  memory {size(mem.get('used'))} / {size(mem.get('total'))} "
                      f"({_figure(mem.get('percent'), '%')})  util {_figure(entry.get('utilization'), '%')}  "
                      f"temp {_figure(entry.get('temperature'), '°C')}  power {_figure(entry.get('power_w'), ' W')}"))
        for proc in entry.get("processes") if isinstance(entry.get("processes"), list) else []:
            lines.append(("", f"  pid {proc.get('pid')}: {size(proc.get('used_memory'))}"))
    lines.append(("disk", f"{size(disk.get('free'))} free of {size(disk.get('total'))} under {disk.get('path')}"))
    wait = (sample.get("queue") or {}).get("wait_seconds")
    lines.append(("queue", "nothing waiting" if wait is None else f"oldest queued job waiting {wait:.0f} s"))
    jobs = sample.get("jobs") or {}
    rate = jobs.get("failure_rate_percent")
    lines.append(("jobs", f"{jobs.get('failed', 0)} of {jobs.get('finished', 0)} failed in the last "
                          f"{(jobs.get('window_seconds') or 0) / 60:g} min" + ("" if rate is None else f" ({rate}%)")))
    counts = sample.get("alerts") or {}
    lines.append(("alerts", f"{counts.get('active', 0)} active, {counts.get('acked', 0)} acknowledged "
                            f"({counts.get('critical', 0)} critical, {counts.get('warning', 0)} warning)"))
    return lines


async def show_metrics(args: argparse.Namespace, client: DaemonClient) -> int:
    if args.prometheus:
        sys.stdout.write((await client.call("metrics.prometheus"))["text"])
        return 0
    sample: dict[str, Any] = await client.call("metrics.snapshot", history_seconds=0)
    if args.json:
        sample.pop("history", None)
        print_json(sample)
        return 0
    print_fields(metrics_lines(sample))
    return 0


async def show_alerts(args: argparse.Namespace, client: DaemonClient) -> int:
    result = await client.call("alerts.list", state="all" if args.all else "open", limit=args.limit)
    if args.json:
        print_json(result)
        return 0
    alerts = result["alerts"]
    if not alerts:
        print("no alerts" if args.all else "no open alerts")
        return 0
    print(f"{'ID':>5}  {'SEVERITY':<8}  {'STATE':<7}  {'COUNT':>5}  {'LAST SEEN':<19}  MESSAGE")
    for alert in alerts:
        acked = f" (acked by {alert['acked_by'].get('user')})" if isinstance(alert.get("acked_by"), dict) else ""
        print(f"{alert['alert_id']:>5}  {alert['severity']:<8}  {alert['state']:<7}  {alert['count']:>5}  "
              f"{_clock(alert['last_seen']):<19}  {alert['message']}{acked}")
    return 0


async def ack_alert(args: argparse.Namespace, client: DaemonClient) -> int:
    result = await client.call("alerts.ack", alert_id=args.alert_id)
    if args.json:
        print_json(result)
        return 0
    alert = result["alert"]
    print(f"alert {alert['alert_id']} acknowledged: {alert['message']}")
    return 0

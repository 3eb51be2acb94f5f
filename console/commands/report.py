"""sai report: latency, queue wait, throughput, failures and memory from the job history;
`--compare A B` sets two periods or two saved reports side by side with a significance test."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from console.cliargs import socket_for
from console.cliout import fail, print_json
from console.formatting import RELATIVE, UNITS, parse_moment
from console.report import FORMATS, METRICS
from daemon.client import DaemonClient
from daemon.exitcodes import ExitCode

if TYPE_CHECKING:
    from console.report.compare import Side

DEFAULT_WINDOW = 86400.0
PAGE = 1000
PERIOD_FORMS = "START..END, e.g. 2h..1h, 1h..now or 2026-11-26T10:00Z..2026-11-26T11:00Z"


def _moment(text: str) -> float:
    """`now`, a duration ago (2h, 90m, 1d), a clock time (14:05) or an RFC 3339 / ISO time."""
    if text.strip().lower() == "now":
        return time.time()
    try:
        return parse_moment(text, time.time())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration(text: str) -> int:
    match = RELATIVE.match(text.strip())
    if not match or text.strip().startswith("-"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: use 30s, 5m, 1h or 1d")
    seconds = int(float(match.group(1)) * UNITS[match.group(2)])
    if seconds < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is shorter than a second")
    return seconds


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a significance level between 0 and 1 (e.g. 0.05)")
    return value


@dataclass(frozen=True)
class SideSpec:
    """What one side of `--compare` names: a period of this daemon's history, or a saved report."""

    text: str
    file: Path | None = None
    since: float = 0.0
    until: float = 0.0


def _side(text: str) -> SideSpec:
    if Path(text).is_file():
        return SideSpec(text, file=Path(text))
    start, sep, end = text.partition("..")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a report file nor a period {PERIOD_FORMS}")
    since, until = _moment(start), _moment(end)
    if until <= since:
        raise argparse.ArgumentTypeError(f"period {text!r} ends before it starts")
    return SideSpec(text, since=since, until=until)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="performance report: latency, queue wait, throughput, failures, memory",
                       description="A performance report of the jobs that finished in a window, from the "
                                   "daemon's job history; or, with --compare, two periods or saved reports.")
    p.add_argument("--since", type=_moment, metavar="WHEN",
                   help="window start: a duration ago (2h, 90m, 1d), a time (14:05) or RFC 3339 (default: 24h "
                        "before --until)")
    p.add_argument("--until", type=_moment, metavar="WHEN", help="window end, in the same forms or `now` (default)")
    p.add_argument("--format", choices=FORMATS, help="md (default), csv or json; --json is the same as "
                                                      "--format json (a json report can be compared later with "
                                                      "--compare)")
    p.add_argument("--json", action="store_true", help="print JSON, as every command's --json does")
    p.add_argument("--charts", type=Path, metavar="DIR", help="also write PNG charts into DIR")
    p.add_argument("--bucket", type=_duration, metavar="DURATION",
                   help="throughput bucket, e.g. 5m (default: chosen from the span)")
    p.add_argument("--compare", nargs=2, type=_side, metavar=("A", "B"),
                   help=f"compare two periods ({PERIOD_FORMS}) or report files written with --json")
    p.add_argument("--metric", choices=METRICS, default="latency",
                   help="what --compare compares: latency (default), run or wait")
    p.add_argument("--alpha", type=_alpha, default=0.05, help="significance level for --compare (default 0.05)")
    p.set_defaults(handler=report, needs_daemon=False)


async def fetch_rows(client: DaemonClient, since: float, until: float) -> list[dict[str, Any]]:
    """Every job that finished in [since, until], page by page."""
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"since": since, "until": until, "limit": PAGE}
        if cursor is not None:
            params["cursor"] = cursor
        page = await client.call("report.jobs", **params)
        rows += page["jobs"]
        cursor = page["next_cursor"]
        if cursor is None:
            return rows


async def _source(client: DaemonClient) -> str:
    status = await client.call("daemon.status")
    worker = status.get("worker") or {}
    model = worker.get("model_id") or (status.get("model") or {}).get("name")
    return f"{status.get('installation')}: model {model} on {worker.get('device') or 'an idle worker'}"


class _Connection:
    """One connection to the daemon, opened only if a side of the report needs it."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.client: DaemonClient | None = None

    async def get(self) -> DaemonClient:
        if self.client is None:
            self.client = await DaemonClient.connect(socket_for(self.args))
        return self.client

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()


async def report(args: argparse.Namespace, _: DaemonClient | None) -> int:
    if args.json and args.format not in (None, "json"):
        return fail(f"--json and --format {args.format} ask for different output: give one", ExitCode.USAGE)
    args.format = "json" if args.json else args.format or "md"
    if args.compare and (args.since is not None or args.until is not None):
        return fail(f"--since and --until do not apply to --compare: give each side as {PERIOD_FORMS}", ExitCode.USAGE)
    connection = _Connection(args)
    try:
        if args.compare:
            return await _compare(args, connection)
        until = time.time() if args.until is None else args.until
        since = until - DEFAULT_WINDOW if args.since is None else args.since
        if since >= until:
            return fail("--since must be before --until", ExitCode.USAGE)
        return await _report(args, connection, since, until)
    finally:
        await connection.close()


async def _report(args: argparse.Namespace, connection: _Connection, since: float, until: float) -> int:
    from console.report import history, render, summary

    client = await connection.get()
    rows = await fetch_rows(client, since, until)
    result = summary.build(rows, since, until, args.bucket, source=await _source(client),
                           memory_history=await history.fetch(client, since, until, args.bucket))
    if args.format == "json":
        print_json(result)
    else:
        sys.stdout.write(render.markdown(result) if args.format == "md" else render.csv_text(result))
    if args.charts is not None:
        from console.report.charts import report_charts

        _say_written(report_charts(result, args.charts))
    return 0


def _say_written(paths: list[Path]) -> None:
    print("charts: " + (", ".join(str(p) for p in paths) if paths else "none (no finished jobs)"), file=sys.stderr)


async def _load_side(spec: SideSpec, connection: _Connection) -> Side:
    from console.report import summary
    from console.report.compare import Side
    from daemon.timefmt import rfc3339

    if spec.file is None:
        rows = await fetch_rows(await connection.get(), spec.since, spec.until)
        return Side(f"{spec.text} ({rfc3339(spec.since)} to {rfc3339(spec.until)})", rfc3339(spec.since),
                    rfc3339(spec.until), rows)
    try:
        data = summary.load(json.loads(spec.file.read_text()), str(spec.file))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the report {spec.file}: {exc}") from None
    label = f"{spec.file} ({data.get('source') or 'saved report'}, {data.get('since')} to {data.get('until')})"
    return Side(label, data.get("since"), data.get("until"), data["jobs"])


async def _compare(args: argparse.Namespace, connection: _Connection) -> int:
    from console.report import render
    from console.report.compare import compare

    try:
        a, b = [await _load_side(spec, connection) for spec in args.compare]
    except ValueError as exc:
        return fail(str(exc), ExitCode.USAGE)
    result = compare(a, b, args.metric, args.alpha)
    if args.format == "json":
        print_json(result)
    else:
        sys.stdout.write(render.compare_markdown(result) if args.format == "md" else render.compare_csv(result))
    if args.charts is not None:
        from console.report.charts import compare_chart

        _say_written(compare_chart(result, a.rows, b.rows, args.charts))
    return 0

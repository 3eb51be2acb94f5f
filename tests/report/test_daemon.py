"""report.jobs and `sai report` against a real daemon that ran a handful of tiny-model jobs."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from console.formatting import parse_time
from daemon.client import DaemonClient
from daemon.protocol import STREAM_LIMIT, RpcError
from tests.harness import run_sai
from tests.report.report_helpers import PROMPT, ReportDaemon


def seconds(job: dict[str, Any], end: str, start: str) -> float:
    return parse_time(job[end]) - parse_time(job[start])


async def raw_reply(socket: Path, method: str) -> bytes:
    """The reply line exactly as the daemon wrote it."""
    reader, writer = await asyncio.open_unix_connection(str(socket), limit=STREAM_LIMIT)
    try:
        writer.write(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method}).encode() + b"\n")
        await writer.drain()
        return await reader.readline()
    finally:
        writer.close()
        await writer.wait_closed()


async def test_rows_match_the_jobs_and_carry_batch_and_memory_figures(report_daemon: ReportDaemon) -> None:
    raw = await raw_reply(report_daemon.daemon.socket, "report.jobs")
    assert PROMPT.split()[0].encode() not in raw
    result = json.loads(raw)["result"]
    by_id = {row["job_id"]: row for row in result["jobs"]}
    assert set(by_id) == {job["job_id"] for job in report_daemon.jobs} and result["next_cursor"] is None
    finishes = [row["finished_at"] for row in result["jobs"]]
    assert finishes == sorted(finishes)
    for job in report_daemon.jobs:
        row = by_id[job["job_id"]]
        for key in ("state", "priority", "user", "created_at", "started_at", "finished_at", "attempts"):
            assert row[key] == job[key], key
        for key in ("width", "height", "steps", "count"):
            assert row[key] == job["params"][key], key
        if job["state"] == "succeeded":
            assert row["error_kind"] is None and 1 <= row["batch_jobs"] <= row["batch_images"]
            assert row["peak_bytes_per_image"] is not None and row["worker_rss"] > 0
        elif job["state"] == "failed":  # generation ran, writing its outputs did not
            assert job["error"].startswith("writing outputs failed") and row["error_kind"] == "output"
            assert row["started_at"] is not None and row["batch_jobs"] == 1
        else:
            assert job["state"] == "cancelled" and row["error_kind"] == "cancelled" and row["batch_jobs"] is None


async def test_pages_walk_every_job_once_and_bad_params_name_the_field(report_daemon: ReportDaemon) -> None:
    client = await DaemonClient.connect(report_daemon.daemon.socket)
    try:
        seen, cursor = [], None
        while True:
            page = await client.call("report.jobs", limit=2, **({"cursor": cursor} if cursor else {}))
            assert len(page["jobs"]) <= 2
            seen += [row["job_id"] for row in page["jobs"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted(job["job_id"] for job in report_daemon.jobs) and len(seen) == len(set(seen))
        first = min(parse_time(job["finished_at"]) for job in report_daemon.jobs)
        later = await client.call("report.jobs", since=first + 0.001)  # shown times are cut to the millisecond
        assert len(later["jobs"]) == len(seen) - 1
        assert (await client.call("report.jobs", until=first - 1))["jobs"] == []
        for params, field in (({"since": "yesterday"}, "since"), ({"limit": 0}, "limit"), ({"limit": 1001}, "limit"),
                              ({"cursor": "nonsense"}, "cursor"), ({"since": 200.0, "until": 100.0}, "until"),
                              ({"prompt": "x"}, "prompt")):
            with pytest.raises(RpcError) as caught:
                await client.call("report.jobs", **params)
            assert caught.value.code == -32602 and caught.value.data["field"] == field, params
        assert (await client.call("daemon.status"))["worker"]["state"] in ("ready", "busy")
    finally:
        await client.close()


def test_json_report_matches_the_jobs_own_timestamps(report_daemon: ReportDaemon) -> None:
    out = run_sai("report", "--format", "json", socket_path=report_daemon.daemon.socket)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    succeeded = [job for job in report_daemon.jobs if job["state"] == "succeeded"]
    groups = {row["group"]: row for row in report["groups"]}
    assert set(groups) == {"64x64 2 steps", "96x96 3 steps", "all"}
    for name, size, steps in (("64x64 2 steps", 64, 2), ("96x96 3 steps", 96, 3)):
        mine = [job for job in succeeded if job["params"]["width"] == size and job["params"]["steps"] == steps]
        started = [job for job in report_daemon.jobs if job["started_at"] and job["params"]["width"] == size]
        latency = [seconds(job, "finished_at", "created_at") for job in mine]
        wait = [seconds(job, "started_at", "created_at") for job in started]  # the failed job waited too
        assert groups[name]["latency"]["n"] == len(mine) == 3
        for q in (50, 90, 99):
            assert groups[name]["latency"][f"p{q}"] == pytest.approx(np.percentile(latency, q), abs=1e-6)
            assert groups[name]["wait"][f"p{q}"] == pytest.approx(np.percentile(wait, q), abs=1e-6)
        assert groups[name]["latency"]["mean"] == pytest.approx(np.mean(latency), abs=1e-6)
    # the job whose outputs could not be written is a failure, not a success
    assert report["counts"] == {"finished": 8, "succeeded": 6, "failed": 1, "cancelled": 1}
    assert report["failures"]["rate_percent"] == pytest.approx(100 / 7) and report["failures"]["by_kind"] == {
        "output": 1}
    buckets = report["throughput"]["buckets"]
    assert [sum(b[state] for b in buckets) for state in ("succeeded", "failed", "cancelled")] == [6, 1, 1]
    assert sum(b["images_per_minute"] for b in buckets) * report["throughput"]["bucket_seconds"] / 60 == \
        pytest.approx(7)  # one job made two images
    memory = {m["group"]: m for m in report["memory"]}
    assert memory["all"]["measured"] == 7 and memory["all"]["worker_rss_max"] > 0
    history = report["memory_history"]
    assert history["unavailable"] is None and history["step"] == 1800 and len(history["points"]) >= 1
    assert {"worker_rss", "daemon_rss", "host_memory_used"} <= set(history["series"])
    assert all(point["host_memory_used"] > 0 for point in history["points"])
    assert max(point["worker_rss"] or 0 for point in history["points"]) > 0
    assert "tiny" in report["source"] and PROMPT not in out.stdout


def test_markdown_and_csv_parse(report_daemon: ReportDaemon) -> None:
    md = run_sai("report", "--since", "1h", socket_path=report_daemon.daemon.socket)
    assert md.returncode == 0, md.stderr
    table = [line for line in md.stdout.splitlines() if line.startswith("| 96x96 3 steps |")]
    assert len(table) == 4  # latency, run, wait, memory
    cells = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert cells[1] == "3" and all(float(c) >= 0 for c in cells[2:])
    assert "Finished: 8 (6 succeeded, 1 failed, 1 cancelled)" in md.stdout
    assert "Failure rate: 14.3% (1 of 7 jobs that ran to an end); 1 cancelled." in md.stdout
    assert "| output | 1 |" in md.stdout and "## Memory over time (monitor, largest per 5 min bucket)" in md.stdout
    out = run_sai("report", "--format", "csv", "--bucket", "1m", socket_path=report_daemon.daemon.socket)
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    value = {(r["section"], r["group"], r["metric"]): r["value"] for r in rows}
    assert value[("counts", "all", "succeeded")] == "6" and value[("latency", "64x64 2 steps", "n")] == "3"
    assert {r["section"] for r in rows} == {"counts", "throughput", "latency", "run", "wait", "failures", "memory",
                                            "memory_history"}


def test_charts_are_valid_pngs(report_daemon: ReportDaemon, tmp_path: Path) -> None:
    out = run_sai("report", "--charts", str(tmp_path), "--format", "json", socket_path=report_daemon.daemon.socket)
    assert out.returncode == 0, out.stderr
    json.loads(out.stdout)
    assert "charts:" in out.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["latency.png", "memory.png", "queue_wait.png", "throughput.png"]
    for name in names:
        with Image.open(tmp_path / name) as image:
            image.verify()
            assert image.format == "PNG"


def test_compare_a_saved_report_with_a_period(report_daemon: ReportDaemon, tmp_path: Path) -> None:
    saved = tmp_path / "before.json"
    out = run_sai("report", "--format", "json", socket_path=report_daemon.daemon.socket)
    saved.write_text(out.stdout)
    out = run_sai("report", "--compare", str(saved), "1h..now", "--format", "json", "--charts", str(tmp_path),
                  socket_path=report_daemon.daemon.socket)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert [row["group"] for row in result["groups"]] == ["64x64 2 steps", "96x96 3 steps"]
    assert result["significant"] == [] and all(row["p"] == 1.0 and row["delta"] == 0 for row in result["groups"])
    with Image.open(tmp_path / "compare.png") as image:
        assert image.format == "PNG"
    out = run_sai("report", "--compare", str(saved), str(saved), "--metric", "wait")
    assert out.returncode == 0, out.stderr
    assert "No significant difference in wait at alpha 0.05" in out.stdout

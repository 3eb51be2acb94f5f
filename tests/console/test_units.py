"""The console's pure parts: the filter language, times, event mapping, coalescing, ordering."""

from __future__ import annotations

import re
from datetime import datetime

import pytest

from console.connection import AuditAppended, JobChanged, JobProgress, MetricsSample, QueueChanged, event_message
from console.formatting import bar, duration, level, parse_moment, parse_time
from console.jobview import SORT_KEYS, job_fields
from console.rowfilter import RowFilter
from console.widgets.audit_pane import checkpoint_summary
from console.widgets.memory_pane import history_fractions, spark
from tests.console.console_helpers import JOBS, NOW


@pytest.mark.parametrize(("text", "expected"), [
    ("", {1, 2, 3, 4, 5, 6, 7}),
    ("fox", {4}),
    ("!fox", {1, 2, 3, 5, 6, 7}),
    ("state:queued", {2, 3, 4}),
    ("state:queued !user:bob", {3, 4}),
    ("pri:critical", {2}),
    ("LIGHTHOUSE state:succeeded", {5}),
    ("user:nobody", set()),
])
def test_filter_language(text: str, expected: set[int]) -> None:
    row_filter = RowFilter(text)
    shown = {int(job["job_id"][1:], 16) for job in JOBS if row_filter.matches(job_fields(job))}
    assert shown == expected


def test_queue_order_is_running_then_queued_by_priority_then_finished_newest_first() -> None:
    ordered = [int(j["job_id"][1:], 16) for j in sorted(JOBS, key=SORT_KEYS["queue"])]
    assert ordered == [1, 2, 3, 4, 5, 6, 7]


def test_times() -> None:
    assert parse_time("2026-11-26T10:00:00Z") == datetime.fromisoformat("2026-11-26T10:00:00+00:00").timestamp()
    assert parse_time(None) is None and parse_time("garbage") is None
    assert [duration(s) for s in (5, 65, 3600 + 120, 86400 * 2 + 3600)] == ["5s", "1m05s", "1h02m", "2d1h"]
    assert parse_moment("-30m", NOW) == NOW - 1800
    assert parse_moment("2h", NOW) == NOW - 7200
    at = parse_moment("14:05", NOW)
    assert at <= NOW and datetime.fromtimestamp(at).strftime("%H:%M") == "14:05"
    with pytest.raises(ValueError, match="not a time"):
        parse_moment("yesterday-ish", NOW)


def test_bars_and_levels() -> None:
    assert bar(0.5, 10) == "█████░░░░░"
    assert (level(0.5), level(0.8), level(0.95)) == ("ok", "warning", "critical")
    assert spark([0.0, 1.0], 4) == "  ▁█"


def test_events_become_messages() -> None:
    job = {"job_id": "j1", "state": "running"}
    assert isinstance(event_message({"topic": "job", "data": {"kind": "state", "job": job}}), JobChanged)
    progress = event_message({"topic": "job", "data": {"kind": "progress", "job_id": "j1", "progress": 0.5,
                                                       "step": 2, "steps": 4}})
    assert isinstance(progress, JobProgress) and progress.step == 2
    assert isinstance(event_message({"topic": "queue", "data": {"kind": "paused"}}), QueueChanged)
    assert isinstance(event_message({"topic": "metrics", "data": {}}), MetricsSample)
    assert isinstance(event_message({"topic": "audit", "data": {"seq": 1}}), AuditAppended)
    assert event_message({"topic": "nonsense", "data": {}}) is None


def test_high_rate_messages_coalesce() -> None:
    first, later = JobProgress("j1", 0.25, 1, 4), JobProgress("j1", 0.5, 2, 4)
    assert first.can_replace(later) and later.can_replace(first)
    assert not JobProgress("j2", 0.5, 2, 4).can_replace(first)
    assert MetricsSample({"ts": 2}).can_replace(MetricsSample({"ts": 1}))
    assert not JobChanged({"job_id": "j1"}).can_replace(JobChanged({"job_id": "j1"}))


def test_checkpoint_note_and_history_columns() -> None:
    note = "gpu-box-01/audit\n42\nq83vEjRWeJAGQ0123456789abcdef=\n\n— gpu-box-01 AbCdEf==\n"
    assert checkpoint_summary(note) == "size 42, root q83vEjRWeJAGQ012…, signed by gpu-box-01"
    series = {"host.memory.used": [1, 2, None], "host.memory.total": [4, 4, 4],
              "gpus.0.memory.used": [3], "gpus.0.memory.total": [4], "worker.rss": [9]}
    assert history_fractions({"series": series}) == {"host": [0.25, 0.5], "gpu0": [0.75]}


async def test_state_and_threshold_colours_stay_distinct_in_256_colours_in_both_themes() -> None:
    from rich.color import ColorSystem

    from tests.console.console_helpers import offline_app

    app = offline_app()
    async with app.run_test(size=(120, 40)) as pilot:
        for theme in ("textual-dark", "textual-light"):
            app.theme = theme
            await pilot.pause()
            table, memory = app.main.table, app.main.memory
            for widget, prefix, names in ((table, "queue-table", ("queued", "running", "succeeded", "failed")),
                                          (memory, "memory-pane", ("ok", "warning", "critical"))):
                colours = set()
                for name in names:
                    colour = widget.get_component_rich_style(f"{prefix}--{name}", partial=True).color
                    assert colour is not None, (theme, name)
                    colours.add(colour.downgrade(ColorSystem.EIGHT_BIT).number)
                assert len(colours) == len(names), (theme, prefix, colours)


async def test_no_color_is_respected(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.console.console_helpers import fill, offline_app

    monkeypatch.setenv("NO_COLOR", "1")
    app = offline_app()
    assert app.no_color
    async with app.run_test(size=(80, 24)) as pilot:
        fill(app)
        await pilot.pause()
        svg = app.export_screenshot()
    window = {"#ff5f57", "#febc2e", "#28c840", "#c5c8c6"}  # the screenshot's window buttons and title
    fills = set(re.findall(r'fill[:=]\s*"?(#[0-9a-f]{6})', svg)) - window
    greys = {f for f in fills if f[1:3] == f[3:5] == f[5:7]}
    assert fills == greys, f"colours on a NO_COLOR screen: {sorted(fills - greys)}"

"""The report's statistics, summaries and renderings on known inputs (no daemon)."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from console.report import render, stats, summary
from console.report.charts import compare_chart, report_charts
from console.report.compare import Side, compare, verdict
from daemon.queue.history import decode_cursor, encode_cursor, error_kind
from tests.report.report_helpers import T0, row


def test_describe_matches_hand_computed_percentiles() -> None:
    # 1..10, linear interpolation: position (n-1)q = 9q -> p50 = 5.5, p90 = 9 + 0.1 = 9.1, p99 = 9 + 0.91.
    figures = stats.describe([7, 3, 10, 1, 5, 2, 9, 4, 8, 6])
    assert figures == {"n": 10, "mean": 5.5, "p50": 5.5, "p90": pytest.approx(9.1), "p99": pytest.approx(9.91),
                       "min": 1.0, "max": 10.0}
    assert stats.describe([]) == {"n": 0, "mean": None, "p50": None, "p90": None, "p99": None, "min": None,
                                  "max": None}


def test_cliffs_delta_counts_pairs_and_equals_the_rank_biserial_of_u() -> None:
    a, b = [1, 2, 3], [2, 3, 4]
    # pairs with b > a: (2>1), (3>1, 3>2), (4>1, 4>2, 4>3) = 6; b < a: (2<3) = 1; ties 2 -> (6 - 1) / 9
    assert stats.cliffs_delta(a, b) == pytest.approx(5 / 9)
    u, _ = stats.mann_whitney(a, b)
    assert stats.cliffs_delta(a, b) == pytest.approx(2 * u / 9 - 1)
    assert stats.cliffs_delta(b, a) == pytest.approx(-5 / 9)
    assert stats.cliffs_delta([1, 1], [1, 1]) == 0


@pytest.mark.parametrize("delta, name", [(0.0, "negligible"), (-0.146, "negligible"), (0.2, "small"),
                                         (-0.4, "medium"), (0.474, "large"), (-1.0, "large")])
def test_effect_magnitudes(delta: float, name: str) -> None:
    assert stats.magnitude(delta) == name


def test_holm_adjustment_by_hand() -> None:
    # sorted: 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> kept monotone at 0.06
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_compare_flags_a_real_shift() -> None:
    rng = np.random.default_rng(7)
    a = {"64x64 4 steps": list(rng.lognormal(0.0, 0.2, 40)), "512x512 30 steps": list(rng.lognormal(2, 0.2, 30))}
    b = {"64x64 4 steps": list(rng.lognormal(0.0, 0.2, 40) * 1.5), "512x512 30 steps": a["512x512 30 steps"]}
    rows = {r["group"]: r for r in stats.compare_groups(a, b)}
    shifted, same = rows["64x64 4 steps"], rows["512x512 30 steps"]
    assert shifted["significant"] and shifted["p_adjusted"] < 0.001
    assert shifted["difference"] == pytest.approx(np.median(b["64x64 4 steps"]) - np.median(a["64x64 4 steps"]))
    assert shifted["delta"] > 0.474 and shifted["magnitude"] == "large"
    assert not same["significant"] and same["p"] == 1.0 and same["delta"] == 0 and same["magnitude"] == "negligible"


def test_compare_does_not_flag_draws_from_one_distribution() -> None:
    rng = np.random.default_rng(11)
    groups = [f"{s}x{s} 4 steps" for s in (64, 128, 256, 512)]
    a = {g: list(rng.gamma(4.0, 0.5, 60)) for g in groups}
    b = {g: list(rng.gamma(4.0, 0.5, 60)) for g in groups}
    rows = stats.compare_groups(a, b)
    assert [r["group"] for r in rows] == groups
    assert not any(r["significant"] for r in rows)
    assert all(r["p_adjusted"] >= r["p"] for r in rows)


def test_compare_keeps_groups_only_one_side_has_untested() -> None:
    rows = stats.compare_groups({"a": [1.0, 2.0]}, {"b": [1.0]})
    assert [(r["group"], r["n_a"], r["n_b"], r["p"], r["significant"]) for r in rows] == [
        ("a", 2, 0, None, False), ("b", 0, 1, None, False)]


def synthetic_rows() -> list[dict]:
    """Two groups; times in seconds after T0 (latency = finished - created, wait = started - created)."""
    return [
        row("j1", 0, 1, 3, size=64, peak=100, rss=1000, batch_images=2),           # latency 3, wait 1, run 2
        row("j2", 0, 2, 6, size=64, count=2, peak=300, rss=3000, batch_images=2),  # latency 6, wait 2, run 4
        row("j3", 10, 10, 70, size=128, steps=8, peak=900, rss=2000, batch_images=1),  # latency 60, wait 0
        row("j4", 10, 15, 80, state="failed", size=128, steps=8, error_kind="oom"),    # wait 5
        row("j5", 20, 30, 95, state="failed", size=64, error_kind="worker_crash"),     # wait 10
        row("j6", 30, None, 130, state="cancelled", size=64, error_kind="cancelled"),  # never started
    ]



def test_a_report_over_several_models_groups_by_model_as_well() -> None:
    rows = [row("a1", 0, 1, 4, size=64, peak=100, rss=1000, batch_images=1),
            row("a2", 0, 2, 6, size=64, peak=300, rss=1000, batch_images=1),
            row("f1", 0, 1, 21, size=64, peak=5000, rss=9000, batch_images=1, model="tiny-flux"),
            row("f2", 0, 1, 31, size=128, steps=8, peak=7000, rss=9000, batch_images=1, model="tiny-flux")]
    report = summary.build(rows, T0, T0 + 600)
    groups = {g["group"]: g for g in report["groups"]}
    assert list(groups) == ["tiny 64x64 4 steps", "tiny-flux 64x64 4 steps", "tiny-flux 128x128 8 steps", "all"]
    assert groups["tiny 64x64 4 steps"]["latency"]["n"] == 2 and groups["tiny 64x64 4 steps"]["model"] == "tiny"
    assert groups["tiny-flux 64x64 4 steps"]["run"]["p50"] == pytest.approx(20.0)
    memory = {m["group"]: m["peak_bytes_per_image_max"] for m in report["memory"]}
    assert memory == {"tiny 64x64 4 steps": 300, "tiny-flux 64x64 4 steps": 5000, "tiny-flux 128x128 8 steps": 7000,
                      "all": 7000}
    assert "| tiny-flux 64x64 4 steps | 1 |" in render.markdown(report)

def test_report_figures_by_group_from_job_timestamps() -> None:
    report = summary.build(synthetic_rows(), T0, T0 + 600)
    groups = {g["group"]: g for g in report["groups"]}
    assert list(groups) == ["64x64 4 steps", "128x128 8 steps", "all"]
    small, large, every = groups["64x64 4 steps"], groups["128x128 8 steps"], groups["all"]
    assert small["latency"]["n"] == 2 and small["latency"]["mean"] == pytest.approx(4.5)
    assert small["latency"]["p90"] == pytest.approx(3 + 0.9 * 3)
    assert small["run"]["p50"] == pytest.approx(3.0)
    assert small["wait"]["n"] == 3 and small["wait"]["p50"] == pytest.approx(2.0)   # 1, 2, 10
    assert large["latency"]["n"] == 1 and large["latency"]["p99"] == pytest.approx(60.0)
    assert large["wait"]["max"] == pytest.approx(5.0)
    assert every["latency"]["n"] == 3 and every["latency"]["p50"] == pytest.approx(6.0)
    assert report["counts"] == {"finished": 6, "succeeded": 3, "failed": 2, "cancelled": 1}
    assert report["overall_jobs_per_minute"] == pytest.approx(3 / 10)
    assert report["failures"] == {"failed": 2, "settled": 5, "cancelled": 1, "rate_percent": pytest.approx(40.0),
                                  "by_kind": {"oom": 1, "worker_crash": 1}}
    memory = {m["group"]: m for m in report["memory"]}
    assert memory["64x64 4 steps"]["peak_bytes_per_image_max"] == 300
    assert memory["64x64 4 steps"]["peak_bytes_per_image_p50"] == 200
    assert memory["all"] == {"group": "all", "measured": 3, "peak_bytes_per_image_max": 900,
                             "peak_bytes_per_image_p50": 300, "worker_rss_max": 3000, "batch_images_max": 2}


def test_throughput_buckets_count_finishes_per_minute() -> None:
    # finishes at 3, 6, 70, 80, 95, 130 s after T0 (T0 is a multiple of 60): minutes 0, 0, 1, 1, 1, 2
    through = summary.throughput(summary.records(synthetic_rows()), bucket=60)
    assert [(b["succeeded"], b["failed"], b["cancelled"]) for b in through["buckets"]] == [(2, 0, 0), (1, 2, 0),
                                                                                          (0, 0, 1)]
    assert [b["images_per_minute"] for b in through["buckets"]] == [3.0, 1.0, 0.0]
    assert through["buckets"][0]["start"] == summary.rfc3339(T0)
    assert summary.bucket_size(130) == 60 and summary.bucket_size(86400) == 1800


def test_markdown_and_csv_carry_the_figures() -> None:
    report = summary.build(synthetic_rows(), T0, T0 + 600)
    text = render.markdown(report)
    assert "| 64x64 4 steps | 2 | 4.500 |" in text and "Failure rate: 40.0% (2 of 5" in text
    assert "| oom | 1 |" in text
    table = list(csv.DictReader(io.StringIO(render.csv_text(report))))
    value = {(r["section"], r["group"], r["metric"]): r["value"] for r in table}
    assert float(value[("latency", "128x128 8 steps", "p50")]) == 60.0
    assert float(value[("failures", "all", "rate_percent")]) == 40.0
    assert value[("memory", "all", "worker_rss_max")] == "3000"


def test_saved_reports_are_checked_when_read_back(tmp_path) -> None:
    report = json.loads(json.dumps(summary.build(synthetic_rows(), T0, T0 + 600)))
    assert summary.load(report, "r.json") is report
    with pytest.raises(ValueError, match="not a report written by `sai report --format json`"):
        summary.load({"format": "sai-report-compare"}, "c.json")
    with pytest.raises(ValueError, match="cannot read"):
        summary.load({**report, "jobs": [{"job_id": "x"}]}, "r.json")


def test_compare_output_names_the_significant_groups() -> None:
    before = [row(f"a{i}", 0, 0, 1.0 + 0.01 * i) for i in range(20)]
    after = [row(f"b{i}", 0, 0, 2.0 + 0.01 * i) for i in range(20)]
    result = compare(Side("A", None, None, before), Side("B", None, None, after))
    assert result["significant"] == ["64x64 4 steps"]
    assert verdict(result).startswith("Significant at alpha 0.05 (Holm-adjusted): 64x64 4 steps: B slower by 1.000 s")
    text = render.compare_markdown(result)
    assert "| 64x64 4 steps | 20 | 20 | 1.095 | 2.095 | +1.000 |" in text
    same = compare(Side("A", None, None, before), Side("B", None, None, before))
    assert same["significant"] == [] and verdict(same).startswith("No significant difference in latency")
    parsed = list(csv.DictReader(io.StringIO(render.compare_csv(result))))
    assert parsed[0]["significant"] == "True" and float(parsed[0]["delta"]) == 1.0


def test_charts_are_png_files(tmp_path) -> None:
    report = summary.build(synthetic_rows(), T0, T0 + 600)
    written = report_charts(report, tmp_path / "charts")
    assert sorted(p.name for p in written) == ["latency.png", "memory.png", "queue_wait.png", "throughput.png"]
    result = compare(Side("A", None, None, synthetic_rows()), Side("B", None, None, synthetic_rows()))
    written += compare_chart(result, synthetic_rows(), synthetic_rows(), tmp_path / "charts")
    for path in written:
        with Image.open(path) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] >= 400
    assert report_charts(summary.build([], T0, T0 + 60), tmp_path / "empty") == []


@pytest.mark.parametrize("state, error, kind", [
    ("succeeded", None, None),
    ("cancelled", "cancelled by alice while running", "cancelled"),
    ("failed", "quarantined after 3 attempts; last: worker process was killed by SIGKILL", "worker_crash"),
    ("failed", "interrupted 3 times while running (daemon or worker died); not retried again", "interrupted"),
    ("failed", "generation failed: out of memory generating one 2048x2048 image in 30 steps on cuda", "oom"),
    ("failed", "generation failed: RuntimeError: boom", "generation"),
    ("failed", "writing outputs failed: [Errno 28] No space left on device", "output"),
    ("failed", "something new", "other"),
])
def test_error_kinds_of_the_daemons_failure_texts(state: str, error: str | None, kind: str | None) -> None:
    assert error_kind(state, error) == kind


def test_cursors_round_trip_and_bad_ones_are_refused() -> None:
    assert decode_cursor(encode_cursor(1795000000.123456, 42)) == (1795000000.123456, 42)
    for bad in ("", "42", "x/1", "1.5/y", "nan/3"):
        with pytest.raises(ValueError, match="not a cursor"):
            decode_cursor(bad)

"""Ring bounds and the hysteresis of the alert rules (pure: no database)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.config import ConfigError
from daemon.monitor.ring import Ring
from daemon.monitor.rules import Evaluator, rules_from_config
from tests.monitor.mon_helpers import GIB, monitor_config, sample


@given(seconds=st.integers(1, 2000), interval=st.sampled_from([0.1, 0.5, 1.0, 2.0, 7.0]),
       appended=st.integers(0, 3000))
def test_ring_keeps_at_most_its_capacity_newest_last(seconds: int, interval: float, appended: int) -> None:
    ring = Ring(seconds, interval)
    assert ring.capacity * interval >= seconds > (ring.capacity - 1) * interval
    for i in range(appended):
        ring.append({"ts": float(i)})
    assert len(ring) == min(appended, ring.capacity)
    if appended:
        assert ring.latest() == {"ts": float(appended - 1)}
        kept = ring.since()
        assert [s["ts"] for s in kept] == [float(i) for i in range(max(0, appended - ring.capacity), appended)]
        assert ring.since(appended - 2.0) == kept[-2:]
    else:
        assert ring.latest() is None


def test_ten_minutes_at_one_per_second_is_600_samples() -> None:
    cfg = monitor_config()
    assert Ring(cfg.monitor.ring_seconds, cfg.monitor.interval).capacity == 600


def evaluator(**overrides: object) -> Evaluator:
    cfg = monitor_config(**overrides)
    return Evaluator(rules_from_config(cfg.alerts), cfg.alerts.hysteresis, cfg.alerts.raise_after_samples,
                     cfg.alerts.clear_after_samples)


def levels(ev: Evaluator, values: list[float], key: str = "host_memory", **kw: object) -> list[int]:
    """The level of `key` after each sample of host memory percent `values`."""
    out = []
    for i, value in enumerate(values):
        ev.evaluate(sample(float(i), host_percent=value, **kw))
        out.append(ev.trackers[key][2].level)
    return out


def test_a_value_hovering_at_the_threshold_stays_raised_once() -> None:
    ev = evaluator(alerts__clear_after_samples=1)
    changes = []
    for i in range(200):
        value = 90.0 + (0.4 if i % 2 else -0.4)  # 89.6 / 90.4 around a 90% warning, margin 4.5
        found, _ = ev.evaluate(sample(float(i), host_percent=value))
        changes += [(c.key, c.level) for c in found]
    assert changes == [("host_memory", 1)]


def test_clears_only_below_the_margin_and_after_n_samples() -> None:
    ev = evaluator()  # warning 90, hysteresis 0.05 -> clears below 85.5, after 3 samples
    assert levels(ev, [91.0, 86.0, 85.6, 85.5, 85.4, 85.4]) == [1, 1, 1, 1, 1, 1]
    assert levels(ev, [85.4]) == [0]  # the third sample in a row below 85.5
    # An interrupted run of clear samples starts counting again.
    ev = evaluator()
    assert levels(ev, [95.0, 80.0, 80.0, 88.0, 80.0, 80.0, 80.0]) == [1, 1, 1, 1, 1, 1, 0]


def test_escalates_to_critical_and_steps_back_down_through_warning() -> None:
    ev = evaluator(alerts__clear_after_samples=1)
    assert levels(ev, [92.0, 97.5, 96.0, 92.0, 89.0, 85.0]) == [1, 2, 2, 1, 1, 0]


def test_raise_after_n_consecutive_samples_ignores_a_single_spike() -> None:
    ev = evaluator(alerts__raise_after_samples=3)
    assert levels(ev, [95.0, 50.0, 95.0, 95.0, 95.0]) == [0, 0, 0, 0, 1]


def test_lower_is_worse_for_free_disk() -> None:
    ev = evaluator(alerts__clear_after_samples=1)  # warning below 10 GiB, critical below 2 GiB
    got = []
    for i, free in enumerate([20.0, 9.9, 10.2, 1.5, 2.05, 2.2, 10.4, 10.6]):
        ev.evaluate(sample(float(i), disk_free=free * GIB))
        got.append(ev.trackers["disk_free"][2].level)
    assert got == [0, 1, 1, 2, 2, 1, 1, 0]


def test_per_gpu_subjects_and_a_vanished_gpu_counts_as_clear() -> None:
    ev = evaluator(alerts__clear_after_samples=1)
    gpus = [{"index": 0, "memory": {"percent": 95.0}, "temperature": 60},
            {"index": 1, "memory": {"percent": 10.0}, "temperature": "n/a"}]
    changes, standing = ev.evaluate(sample(0.0, gpus=gpus))
    assert [(c.key, c.level) for c in changes] == [("gpu_memory:gpu0", 1)]
    assert standing == [("gpu_memory:gpu0", 95.0)]
    changes, _ = ev.evaluate(sample(1.0, gpus=[]))
    assert [(c.key, c.level) for c in changes] == [("gpu_memory:gpu0", 0)]


def test_a_level_of_zero_is_off() -> None:
    ev = evaluator(alerts__host_memory_warning_percent=0.0, alerts__host_memory_critical_percent=0.0)
    assert levels(ev, [100.0, 100.0]) == [0, 0]


@pytest.mark.parametrize("overrides, key", [
    ({"alerts__host_memory_warning_percent": 95.0, "alerts__host_memory_critical_percent": 90.0},
     "alerts.host_memory_critical_percent"),
    ({"alerts__disk_free_warning_gib": 1.0, "alerts__disk_free_critical_gib": 5.0}, "alerts.disk_free_critical_gib"),
])
def test_levels_on_the_wrong_side_are_a_config_error(overrides: dict[str, float], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        rules_from_config(monitor_config(**overrides).alerts)
    assert err.value.key == key


def test_messages_say_value_and_level() -> None:
    rule = next(r for r in rules_from_config(monitor_config().alerts) if r.name == "gpu_memory")
    assert rule.message("gpu0", 95.04, 1) == "GPU 0 memory used 95.0% (warning at 90.0%)"

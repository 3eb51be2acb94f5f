"""The [monitor] and [alerts] config keys: shipped defaults, checks, the loopback-only exporter."""

from __future__ import annotations

import pytest

from daemon.config import ConfigError
from daemon.schema import parse_listen
from tests.monitor.mon_helpers import monitor_config


def test_defaults() -> None:
    cfg = monitor_config()
    assert (cfg.monitor.interval, cfg.monitor.ring_seconds, cfg.monitor.history_days) == (1.0, 600.0, 7.0)
    assert cfg.monitor.listen == ""
    assert 0 < cfg.alerts.disk_refuse_below_gib < cfg.alerts.disk_free_critical_gib < cfg.alerts.disk_free_warning_gib


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)), ("127.0.0.5:1", ("127.0.0.5", 1)),
    ("[::1]:9464", ("::1", 9464)), ("localhost:9100", ("127.0.0.1", 9100)),
])
def test_loopback_addresses_are_accepted(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected
    assert monitor_config(monitor__listen=text).monitor.listen == text


@pytest.mark.parametrize("text, reason", [
    ("0.0.0.0:9464", "not a loopback address"), ("[::]:9464", "not a loopback address"),
    ("10.1.2.3:9464", "not a loopback address"), ("example.com:9464", "not an IP address"),
    ("9464", "HOST:PORT"), ("127.0.0.1:http", "not a number"), ("127.0.0.1:70000", "out of range"),
])
def test_other_addresses_stop_start_up_with_the_key_and_reason(text: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        monitor_config(monitor__listen=text)
    assert err.value.key == "monitor.listen"
    assert reason in err.value.reason


@pytest.mark.parametrize("key, value", [
    ("monitor__interval", 0.0), ("monitor__ring_seconds", -1), ("alerts__hysteresis", 1.0),
    ("alerts__host_memory_warning_percent", 120.0), ("alerts__raise_after_samples", 0),
    ("alerts__disk_free_warning_gib", -1.0),
])
def test_bad_values_are_refused(key: str, value: object) -> None:
    with pytest.raises(ConfigError):
        monitor_config(**{key: value})

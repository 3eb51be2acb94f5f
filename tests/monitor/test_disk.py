"""Free disk under the outputs directory: an alert below the soft floor, refusal below the hard
floor. On a real 16 MiB tmpfs when this runs as root (filled with real files), else with floors set
above the real free space of the temp directory's file system."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.monitor.mon_helpers import monitor_config

MIB = 1024 ** 2
GIB = 1024 ** 3


@pytest.fixture
def small_fs() -> Iterator[Path | None]:
    """A mounted 16 MiB tmpfs, or None where mounting is not possible (not root, no permission)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        yield None
        return
    point = Path(tempfile.mkdtemp(prefix="sai-mon-fs-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(point)], capture_output=True)
    if done.returncode != 0:
        point.rmdir()
        yield None
        return
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=False)
        point.rmdir()


def fill(path: Path, mib: int) -> None:
    with (path / f"fill-{mib}").open("wb") as fh:
        fh.write(os.urandom(mib * MIB))


async def test_soft_floor_alerts_and_hard_floor_refuses(open_monitor, small_fs: Path | None, tmp_path: Path) -> None:
    if small_fs is not None:
        outputs = small_fs / "outputs"
        outputs.mkdir()
        # 16 MiB free: warning below 12 MiB, critical below 6, refuse below 9.
        floors = {"alerts__disk_free_warning_gib": 12 / 1024, "alerts__disk_free_critical_gib": 6 / 1024,
                  "alerts__disk_refuse_below_gib": 9 / 1024}
    else:
        outputs = tmp_path / "outputs"
        outputs.mkdir()
        free_gib = shutil.disk_usage(outputs).free / GIB
        floors = {"alerts__disk_free_warning_gib": free_gib + 100.0, "alerts__disk_free_critical_gib": 0.0,
                  "alerts__disk_refuse_below_gib": free_gib + 50.0}
    monitor, bus, audit = await open_monitor(monitor_config(**floors), outputs_dir=outputs)
    sub = bus.subscribe({"alert"})
    if small_fs is not None:
        sample = await monitor.tick()
        assert sample["disk"]["total"] == 16 * MIB and sample["disk"]["path"] == str(outputs)
        assert await monitor.alerts.list() == [] and monitor.disk_refusal(max_age=0) is None
        fill(outputs, 6)  # 10 MiB free: below the soft floor only
    sample = await monitor.tick()
    (alert,) = await monitor.alerts.list()
    assert (alert["key"], alert["severity"]) == ("disk_free", "warning")
    assert "free disk under outputs" in alert["message"] and "below" in alert["message"]
    topic, data = sub.queue.get_nowait()
    assert topic == "alert" and data["alert"]["key"] == "disk_free"
    if small_fs is not None:
        assert monitor.disk_refusal(max_age=0) is None
        fill(outputs, 3)  # 7 MiB free: below the hard floor
    refusal = monitor.disk_refusal(max_age=0)
    assert refusal is not None and "not enough free disk space" in refusal
    assert str(outputs) in refusal and "alerts.disk_refuse_below_gib" in refusal
    if small_fs is not None:
        fill(outputs, 2)  # 5 MiB: critical
        await monitor.tick()
        assert (await monitor.alerts.list())[0]["severity"] == "critical"
        for name in outputs.iterdir():
            name.unlink()
        for _ in range(monitor.limits.clear_after_samples):
            await monitor.tick()
        assert await monitor.alerts.list() == [] and monitor.disk_refusal(max_age=0) is None
        assert audit.actions() == ["alert.raise", "alert.raise", "alert.clear"]


async def test_a_hard_floor_of_zero_never_refuses(open_monitor) -> None:
    monitor, _, _ = await open_monitor(monitor_config(alerts__disk_refuse_below_gib=0.0))
    assert monitor.disk_refusal(max_age=0) is None

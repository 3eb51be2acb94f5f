"""atomic_write: complete or absent, never partial; modes; stale temp files after a crash."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from daemon import safefiles
from daemon.safefiles import atomic_write, remove_stale_temps


def test_writes_with_mode_regardless_of_umask(tmp_path: Path) -> None:
    old = os.umask(0o000)
    try:
        atomic_write(tmp_path / "a.bin", b"hello")
        atomic_write(tmp_path / "b.bin", b"x", mode=0o640)
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").read_bytes() == b"hello"
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin"]


def test_fsyncs_file_and_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    atomic_write(tmp_path / "f", b"data")
    assert any(".tmp-" in s for s in synced) and str(tmp_path) in synced


@pytest.mark.parametrize("fail_at", ["write", "fsync", "replace"])
def test_failure_mid_write_leaves_no_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      fail_at: str) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, fail_at, boom)
    with pytest.raises(OSError):
        atomic_write(tmp_path / "out.png.sai", b"x" * 100_000)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_previous_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "keys.json"
    atomic_write(target, b"old")
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "I/O error")))
    with pytest.raises(OSError):
        atomic_write(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["keys.json"]


def test_overwrite_false(tmp_path: Path) -> None:
    atomic_write(tmp_path / "once", b"1", overwrite=False)
    with pytest.raises(FileExistsError):
        atomic_write(tmp_path / "once", b"2", overwrite=False)
    assert (tmp_path / "once").read_bytes() == b"1"


def test_process_killed_mid_write_leaves_only_a_temp_that_is_swept(tmp_path: Path) -> None:
    """A real crash: the child dies (os._exit) after writing half the data, before rename."""
    code = f"""
import os
from pathlib import Path
from daemon.safefiles import atomic_write
real = os.write
def half(fd, data):
    real(fd, bytes(data[: len(data) // 2]))
    os._exit(9)
os.write = half
atomic_write(Path({str(tmp_path)!r}) / "job-0.png.sai", b"z" * 1_000_000)
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 9
    names = [p.name for p in tmp_path.iterdir()]
    assert "job-0.png.sai" not in names and len(names) == 1 and safefiles.TEMP_MARK in names[0]
    assert [p.name for p in remove_stale_temps(tmp_path)] == names
    assert list(tmp_path.iterdir()) == []

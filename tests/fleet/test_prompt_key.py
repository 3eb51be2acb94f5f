"""The fleet's prompt key: made once, refused when others could read it, seals prompts that only
a box holding the same key opens; a member without it does not start."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon.crypto import UnknownKeyError
from daemon.crypto.envelope import PromptSealer
from daemon.fleet.prompt_key import PromptKeyError, generate, load
from tests.conftest import DaemonFactory
from tests.harness import run_sai


def test_generate_load_seal_open(tmp_path: Path) -> None:
    path, other = tmp_path / "a.key", tmp_path / "b.key"
    kid = generate(path)
    assert os.stat(path).st_mode & 0o777 == 0o600 and path.stat().st_size == 32
    with pytest.raises(PromptKeyError, match="exists"):
        generate(path)
    key = load(path)
    assert key.current_kek_id == kid and path.read_bytes().hex() not in repr(key)
    blob = PromptSealer(key).seal("a secret lighthouse", "j000000000001")
    assert b"lighthouse" not in blob
    assert PromptSealer(load(path)).open(blob, "j000000000001") == "a secret lighthouse"  # another box, same key
    generate(other)
    with pytest.raises(UnknownKeyError, match="every box of a fleet needs the same"):
        PromptSealer(load(other)).open(blob, "j000000000001")


def test_unsafe_or_wrong_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "k"
    generate(path)
    path.chmod(0o640)
    with pytest.raises(PromptKeyError, match="mode 0640.*chmod 600"):
        load(path)
    short = tmp_path / "short"
    short.write_bytes(b"x" * 16)
    short.chmod(0o600)
    with pytest.raises(PromptKeyError, match="holds 16 bytes"):
        load(short)
    with pytest.raises(PromptKeyError, match="does not exist"):
        load(tmp_path / "missing")
    with pytest.raises(PromptKeyError, match="is not set"):
        load("")


def test_cli_generates_a_key(tmp_path: Path) -> None:
    done = run_sai("fleet", "key", "generate", str(tmp_path / "fleet.key"))
    assert done.returncode == 0 and "fleet-" in done.stderr
    again = run_sai("fleet", "key", "generate", str(tmp_path / "fleet.key"))
    assert again.returncode == 1 and "exists" in again.stderr and "Traceback" not in again.stderr


def test_member_without_the_key_does_not_start(make_daemon: DaemonFactory, fleet_url: str) -> None:
    daemon = make_daemon({"fleet": {"database": fleet_url}}, start=False)
    daemon.start(wait=False)
    assert daemon.proc is not None and daemon.proc.wait(timeout=120) != 0
    log = daemon.read_log()
    assert "not starting: [fleet] prompt_key_file is not set" in log and "Traceback" not in log

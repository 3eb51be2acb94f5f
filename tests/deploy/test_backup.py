"""`sai backup` / `sai restore` against real daemons: a backup taken under load restores into a state
a new daemon starts on, with every acknowledged job, a verifying audit log and exportable outputs;
a changed, incomplete or re-signed backup is refused naming the file; plain keys need the flag."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon.backup.manifest import audit_state
from daemon.client import DaemonClient
from daemon.crypto.keys import public_pem
from daemon.exitcodes import ExitCode
from daemon.protocol import CONFLICT, RpcError
from tests.harness import DaemonProcess, run_sai

PASSPHRASE = {"SAI_PASSPHRASE": "correct horse battery"}
SEALED = {"keys": {"sealed": True}, "audit": {"checkpoint_every_entries": 8},
          "queue": {"burst": 10**6, "rate_per_minute": 1e9, "max_queued_per_user": 10**6}}


@pytest.fixture
async def sealed_daemon(make_daemon: Callable[..., DaemonProcess]) -> AsyncIterator[tuple[DaemonProcess, DaemonClient]]:
    daemon = make_daemon(SEALED, start=False).start(env=PASSPHRASE)
    client = await DaemonClient.connect(daemon.socket)
    yield daemon, client
    await client.close()


@pytest.fixture
def scratch() -> Any:
    """A short directory under /tmp (socket paths are limited to 107 bytes), removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="sai-bk-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


async def _finished_jobs(client: DaemonClient, wait_job: Callable[..., Any], count: int) -> list[str]:
    ids = [(await client.call("job.submit", prompt=f"lighthouse {i}", seed=i))["job_id"] for i in range(count)]
    for job_id in ids:
        assert (await wait_job(client, job_id))["state"] == "succeeded"
    return ids


async def _backup(daemon: DaemonProcess, target: Path, *flags: str) -> Any:
    return await asyncio.to_thread(run_sai, "backup", str(target), "--json", *flags, socket_path=daemon.socket)


def _restore(backup: Path, new_state: Path, *flags: str) -> Any:
    return run_sai("restore", str(backup), "--state-dir", str(new_state), *flags)


async def test_backup_under_load_restores_into_a_state_a_daemon_starts_on(
        sealed_daemon: tuple[DaemonProcess, DaemonClient], make_daemon: Callable[..., DaemonProcess],
        tiny_model: Path, scratch: Path, wait_for: Callable[..., Any]) -> None:
    daemon, client = sealed_daemon
    done_before = await _finished_jobs(client, wait_for, 2)
    acknowledged: list[tuple[float, str]] = []
    stop = asyncio.Event()

    async def submit_load() -> None:
        i = 0
        while not stop.is_set():
            reply = await client.call("job.submit", prompt=f"harbour {i}", seed=100 + i, priority="low")
            acknowledged.append((time.monotonic(), reply["job_id"]))
            i += 1
            await asyncio.sleep(0.01)

    load = [asyncio.create_task(submit_load()) for _ in range(3)]  # submits in flight when the daemon signs
    while len(acknowledged) < 5:
        await asyncio.sleep(0.05)
    queue = (await client.call("daemon.status"))["queue"]
    assert queue["queued"] + queue["running"] > 0
    began = time.monotonic()
    result = await _backup(daemon, scratch / "backup")
    stop.set()
    await asyncio.gather(*load)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    acked_before = [job_id for at, job_id in acknowledged if at < began]
    assert len(acked_before) >= 5 and summary["keys"] == "sealed"
    assert "models/" in summary["excluded"] and "daemon.lock" in summary["excluded"]

    pub = scratch / "signing.pub.pem"
    shutil.copy(daemon.state_dir / "keys" / "signing.pub.pem", pub)
    tail = await client.call("audit.tail", action="backup.create", limit=1)
    assert tail["entries"][-1]["subject"] == summary["manifest_sha256"]
    await client.close()
    daemon.stop()

    second = make_daemon(SEALED, start=False)
    new_state = second.state_dir
    shutil.rmtree(new_state)
    restored = _restore(scratch / "backup", new_state, "--key", str(pub))
    assert restored.returncode == 0, restored.stderr
    for path in [new_state, *new_state.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path} is {mode:o}"

    (new_state / "models").mkdir(mode=0o700)
    (new_state / "models" / "tiny").symlink_to(tiny_model)
    second.start(env=PASSPHRASE)
    fresh = await second.client()
    for job_id in [*done_before, *acked_before]:
        assert (await fresh.call("job.get", job_id=job_id))["job_id"] == job_id
    verdict = await fresh.call("audit.verify", deep=True)
    assert verdict["ok"], verdict
    assert verdict["size"] > summary["audit"]["size"]  # the restored log goes on from the backup's
    for job_id in done_before:
        png = scratch / f"{job_id}.png"
        exported = await asyncio.to_thread(run_sai, "export", job_id, "-o", str(png), socket_path=second.socket)
        assert exported.returncode == 0, exported.stderr
        assert png.read_bytes().startswith(b"\x89PNG")
        checked = await asyncio.to_thread(run_sai, "verify", job_id, socket_path=second.socket)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    audit_dir = scratch / "audit-export"
    assert (await asyncio.to_thread(run_sai, "audit", "export", str(audit_dir),
                                    socket_path=second.socket)).returncode == 0
    pinned = run_sai("audit", "verify-export", str(audit_dir), "--deep", "--key", str(pub))
    assert pinned.returncode == 0, pinned.stdout + pinned.stderr
    await fresh.close()


async def test_changed_missing_extra_or_resigned_backups_are_refused_naming_the_file(
        sealed_daemon: tuple[DaemonProcess, DaemonClient], scratch: Path, wait_for: Callable[..., Any]) -> None:
    daemon, client = sealed_daemon
    [job_id] = await _finished_jobs(client, wait_for, 1)
    good = scratch / "good"
    result = await _backup(daemon, good)
    assert result.returncode == 0, result.stderr

    def variant(name: str, change: Callable[[Path], None]) -> Path:
        copy = scratch / name
        shutil.copytree(good, copy)
        change(copy)
        return copy

    def flip(path: Path) -> None:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 1
        path.write_bytes(bytes(data))

    output = f"state/outputs/{job_id}-0.png.sai"
    cases = {
        "changed": (variant("changed", lambda d: flip(d / output)), output),
        "missing": (variant("missing", lambda d: (d / f"state/outputs/{job_id}-0.manifest.sig").unlink()),
                    f"state/outputs/{job_id}-0.manifest.sig"),
        "extra": (variant("extra", lambda d: (d / "state/outputs/planted.png.sai").write_bytes(b"x")),
                  "state/outputs/planted.png.sai"),
        "database": (variant("database", lambda d: flip(d / "state/audit.db")), "state/audit.db"),
        "manifest": (variant("manifest", lambda d: (d / "backup.json").write_text(
            (d / "backup.json").read_text().replace('"sealed"', '"plain"'))), "backup.json"),
    }
    for name, (backup, named) in cases.items():
        target = scratch / f"restore-{name}"
        refused = _restore(backup, target)
        assert refused.returncode == ExitCode.VERIFY_FAILED, (name, refused.stdout, refused.stderr)
        assert named in refused.stderr, (name, refused.stderr)
        assert not target.exists() and not list(scratch.glob(f".restore-{name}.tmp-*")), name

    other = Ed25519PrivateKey.generate()
    stranger = scratch / "stranger.pub.pem"
    stranger.write_bytes(public_pem(other.public_key()))
    refused = _restore(good, scratch / "restore-pinned", "--key", str(stranger))
    assert refused.returncode == ExitCode.VERIFY_FAILED and "pinned key" in refused.stderr, refused.stderr

    occupied = scratch / "occupied"
    occupied.mkdir()
    (occupied / "something").write_text("x")
    refused = _restore(good, occupied)
    assert refused.returncode == ExitCode.FAILURE and "not an empty directory" in refused.stderr
    assert (await _backup(daemon, occupied)).returncode != 0
    elsewhere = scratch / "elsewhere"
    elsewhere.mkdir()
    (scratch / "planted").symlink_to(elsewhere)
    planted = await _backup(daemon, scratch / "planted")
    assert planted.returncode == 1 and "not an empty directory" in planted.stderr and not list(elsewhere.iterdir())

    assert _restore(good, scratch / "fine").returncode == 0


async def test_backup_sign_refuses_an_audit_state_that_is_not_this_log(
        sealed_daemon: tuple[DaemonProcess, DaemonClient]) -> None:
    _, client = sealed_daemon
    size = (await client.call("daemon.status"))["audit"]["size"]
    with pytest.raises(RpcError) as refused:
        await client.call("backup.sign", manifest_sha256="0" * 64, audit_size=size, audit_root="1" * 64)
    assert refused.value.code == CONFLICT and refused.value.data["field"] == "audit_root"
    root = (await client.call("audit.consistency", first=size))["first_root"]
    signed = await client.call("backup.sign", manifest_sha256="a" * 64, audit_size=size, audit_root=root)
    assert signed["key_id"].startswith("ed25519-")
    tail = await client.call("audit.tail", action="backup.create", limit=5)
    assert [e["subject"] for e in tail["entries"]] == ["a" * 64]


async def test_backup_sign_checks_the_committed_log_while_submits_are_in_flight(
        sealed_daemon: tuple[DaemonProcess, DaemonClient]) -> None:
    """The daemon's log counts entries its readers cannot see yet; the check must not need them."""
    daemon, client = sealed_daemon
    others = [await daemon.client() for _ in range(4)]
    for round_ in range(15):
        burst = [asyncio.create_task(other.call("job.submit", prompt=f"burst {round_}-{i}"))
                 for i in range(10) for other in others]
        await asyncio.sleep(0.002)
        conn = sqlite3.connect(f"file:{daemon.state_dir / 'audit.db'}?mode=ro", uri=True)
        try:
            size, root = audit_state(conn)
        finally:
            conn.close()
        signed = await client.call("backup.sign", manifest_sha256=f"{round_:064x}", audit_size=size, audit_root=root)
        assert signed["audit_size"] == size
        await asyncio.gather(*burst)
    for other in others:
        await other.close()


async def test_plain_keys_are_refused_without_the_flag(make_daemon: Callable[..., DaemonProcess],
                                                       scratch: Path) -> None:
    daemon = make_daemon()
    refused = await _backup(daemon, scratch / "plain")
    assert refused.returncode == 1 and "--include-plain-keys" in refused.stderr, refused.stderr
    assert not (scratch / "plain").exists() and not list(scratch.iterdir())
    allowed = await _backup(daemon, scratch / "plain", "--include-plain-keys")
    assert allowed.returncode == 0, allowed.stderr
    assert "not sealed" in allowed.stderr and json.loads(allowed.stdout)["keys"] == "plain"
    assert (scratch / "plain" / "state" / "keys" / "signing.key").exists()
    assert stat.S_IMODE(os.stat(scratch / "plain").st_mode) == 0o700

"""Real daemons witness each other's audit logs: each cosigns the other's checkpoints, and a box whose
state directory's audit log (with its anchor) is put back to an earlier copy is named by the other
with a critical alert and an audit entry; `audit.verify` with `witnessed` tells which log is whole."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from daemon.exitcodes import ExitCode
from daemon.protocol import INVALID_PARAMS, RpcError
from tests.conftest import DaemonFactory
from tests.fleet.conftest import member_config
from tests.harness import run_sai


async def _until(probe: Callable[[], Awaitable[Any]], what: str, tries: int = 300) -> Any:
    for _ in range(tries):
        got = await probe()
        if got:
            return got
        await asyncio.sleep(0.1)
    raise AssertionError(f"never: {what}")


def _copy_audit(state: Path, to: Path) -> None:
    """The audit log and its anchor, as a backup of the state directory holds them."""
    to.mkdir(exist_ok=True)
    for name in ("audit.db", "audit.db-wal", "audit.db-shm"):
        (to / name).unlink(missing_ok=True)
        if (state / name).exists():
            shutil.copy2(state / name, to / name)
    shutil.copy2(state / "keys" / "audit-anchor.json", to / "audit-anchor.json")


def _restore_audit(backup: Path, state: Path) -> None:
    for name in ("audit.db", "audit.db-wal", "audit.db-shm"):
        (state / name).unlink(missing_ok=True)
        if (backup / name).exists():
            shutil.copy2(backup / name, state / name)
    shutil.copy2(backup / "audit-anchor.json", state / "keys" / "audit-anchor.json")


async def test_daemons_cosign_and_name_a_box_whose_log_was_rolled_back(
        make_daemon: DaemonFactory, client_of: Any, fleet_url: str, prompt_key_file: str, tmp_path: Path) -> None:
    fast = {"audit": {"checkpoint_every_seconds": 0.3}}
    a = make_daemon({**member_config(fleet_url, "box-a", prompt_key_file), **fast})
    b = make_daemon({**member_config(fleet_url, "box-b", prompt_key_file), **fast})
    db = await asyncpg.connect(fleet_url)
    try:
        async def cosigned(box: str, witness: str) -> int:
            return int(await db.fetchval(
                "SELECT COALESCE(max(c.tree_size), 0) FROM audit_checkpoints c JOIN audit_cosignatures s "
                "ON s.checkpoint = c.seq WHERE c.box = $1 AND s.witness = $2", box, witness))

        await _until(lambda: cosigned("box-a", "box-b"), "box-b cosigns box-a's checkpoints")
        await _until(lambda: cosigned("box-b", "box-a"), "box-a cosigns box-b's checkpoints")
        b.terminate()
        backup = tmp_path / "backup"
        _copy_audit(b.state_dir, backup)  # what the forger will put back
        before = await cosigned("box-b", "box-a")
        b.start()  # its start and stop entries: a longer log, witnessed by box-a
        await _until(lambda: _larger(cosigned, before), "box-a cosigns box-b's longer log")
        b.terminate()
        _restore_audit(backup, b.state_dir)
        b.start()

        client_a = await client_of(a)

        async def fork_alert() -> dict[str, Any] | None:
            alerts = (await client_a.call("alerts.list"))["alerts"]
            return next((x for x in alerts if x["key"] == "fleet.audit_fork.box-b"), None)

        alert = await _until(fork_alert, "box-a raises the fork alert for box-b")
        assert alert["severity"] == "critical" and "box 'box-b'" in alert["message"]
        assert "rolled back" in alert["message"] or "forked" in alert["message"], alert
        entries = (await client_a.call("audit.tail", action="fleet.audit_fork"))["entries"]  # written before the alert
        assert [e["subject"] for e in entries] == ["box-b"] and entries[0]["details"]["witnessed_size"] > 0

        rolled = await (await client_of(b)).call("audit.verify", witnessed=True)
        assert not rolled["ok"] and "witnessed by box-a" in rolled["reason"], rolled
        whole = await client_a.call("audit.verify", witnessed=True)
        assert whole["ok"] and whole["witnessed_checked"] >= 1, whole
        done = run_sai("audit", "verify", "--witnessed", socket_path=b.socket)
        assert done.returncode == ExitCode.VERIFY_FAILED and "witnessed by box-a" in done.stderr, done.stderr
        done = run_sai("audit", "verify", "--witnessed", socket_path=a.socket)
        assert done.returncode == 0 and "checkpoints the fleet's other boxes witnessed" in done.stdout, done.stdout
    finally:
        await db.close()


async def _larger(cosigned: Callable[[str, str], Awaitable[int]], before: int) -> bool:
    return await cosigned("box-b", "box-a") > before


async def test_a_single_box_has_no_witnessed_checkpoints_to_verify_against(make_daemon: DaemonFactory,
                                                                          client_of: Any) -> None:
    client = await client_of(make_daemon())
    with pytest.raises(RpcError) as refused:
        await client.call("audit.verify", witnessed=True)
    assert refused.value.code == INVALID_PARAMS and refused.value.data["field"] == "witnessed"
    assert "not a fleet member" in refused.value.message
    assert (await client.call("audit.verify"))["ok"]

"""Real daemons as fleet members: `[fleet] database` registers the box, it heartbeats, and
fleet.status / `sai fleet` show every box; without the setting a daemon is a single box."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import DaemonFactory, wait_job
from tests.fleet.conftest import member_config
from tests.harness import run_sai


async def _status_until(client: Any, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    for _ in range(100):
        status: dict[str, Any] = await client.call("fleet.status")
        if check(status):
            return status
        await asyncio.sleep(0.1)
    raise AssertionError(f"fleet.status never got there: {status}")


async def test_two_daemons_register_and_heartbeat(make_daemon: DaemonFactory, client_of: Any,
                                                  fleet_url: str, prompt_key_file: str) -> None:
    a = make_daemon(member_config(fleet_url, "box-a", prompt_key_file))
    b = make_daemon(member_config(fleet_url, "box-b", prompt_key_file))
    client = await client_of(a)
    status = await _status_until(client, lambda s: len(s["boxes"]) == 2)
    assert (status["configured"], status["box"]) == (True, "box-a")
    assert "fleet_" in status["database"]
    by_name = {box["name"]: box for box in status["boxes"]}
    assert by_name["box-b"]["socket"] == str(b.socket) and by_name["box-b"]["reach"] == "ssh ops@box-b"
    assert by_name["box-a"]["models"] == ["tiny"] and by_name["box-a"]["workers"] == 1
    assert by_name["box-a"]["devices"] == [{"worker": "cpu0", "device": "cpu"}]
    beats = [box["heartbeat_age"] for box in status["boxes"]]
    assert all(age < 5.0 for age in beats), beats  # heartbeats every 0.2 s

    done = run_sai("fleet", "--json", socket_path=b.socket)
    assert done.returncode == 0, done.stderr
    assert sorted(box["name"] for box in json.loads(done.stdout)["boxes"]) == ["box-a", "box-b"]
    piped = run_sai("fleet", socket_path=b.socket)
    assert [line.split("\t")[0] for line in piped.stdout.splitlines()] == ["box-a", "box-b"]

    b.terminate()  # an orderly stop leaves the registry
    status = await _status_until(client, lambda s: [box["name"] for box in s["boxes"]] == ["box-a"])


async def test_single_box_is_not_a_fleet(make_daemon: DaemonFactory, client_of: Any) -> None:
    daemon = make_daemon()
    client = await client_of(daemon)
    assert await client.call("fleet.status") == {"configured": False, "box": None, "boxes": [], "queued": None,
                                                 "running": None}
    done = run_sai("fleet", socket_path=daemon.socket)
    assert done.returncode == 0 and "a single box" in done.stderr


def test_unreachable_database_stops_the_start_clearly(make_daemon: DaemonFactory, prompt_key_file: str) -> None:
    daemon = make_daemon({"fleet": {"database": "postgresql://sai:hunter2@/fleet?host=/nonexistent-sai&port=5999",
                                    "prompt_key_file": prompt_key_file}}, start=False)
    daemon.start(wait=False)
    assert daemon.proc is not None and daemon.proc.wait(timeout=120) != 0
    log = daemon.read_log()
    assert "not starting: cannot reach the fleet database postgresql://sai:***@/fleet?host=/nonexistent-sai" in log
    assert "hunter2" not in log and "Traceback" not in log


def test_bad_database_setting_is_named() -> None:
    from daemon.config import ConfigError, load
    with pytest.raises(ConfigError, match=r"fleet\.database: must be empty or a URL starting with postgresql://"):
        load(None, environ={"SAI_FLEET_DATABASE": "mysql://db/sai"}, system_file=None)
    with pytest.raises(ConfigError, match=r"fleet\.lease_seconds: must be between 1 and 86400"):
        load(None, environ={"SAI_FLEET_LEASE_SECONDS": "0"}, system_file=None)



async def test_job_list_pages_the_fleets_queue_then_its_finished_jobs(make_daemon: DaemonFactory, client_of: Any,
                                                                     fleet_url: str, prompt_key_file: str) -> None:
    client = await client_of(make_daemon(member_config(fleet_url, "box-a", prompt_key_file)))
    done = [(await client.call("job.submit", prompt=f"done {i}"))["job_id"] for i in range(3)]
    for job_id in done:
        await wait_job(client, job_id)
    await client.call("queue.pause")
    queued = [(await client.call("job.submit", prompt=f"waiting {i}"))["job_id"] for i in range(4)]

    async def page(**params: Any) -> tuple[list[str], int]:
        listed = await client.call("job.list", **params)
        return [job["job_id"] for job in listed["jobs"]], listed["total"]

    newest_first = done[::-1]
    assert await page(limit=3) == (queued[:3], 7)  # queued in submission order, then finished, newest first
    assert await page(limit=3, offset=3) == ([queued[3], *newest_first[:2]], 7)
    assert await page(limit=3, offset=6) == (newest_first[2:], 7)
    assert await page(limit=3, offset=9) == ([], 7)
    assert await page(state="queued", limit=5, offset=2) == (queued[2:], 4)
    assert await page(state="succeeded", limit=2, offset=1) == (newest_first[1:3], 3)


async def test_a_paused_or_busy_box_counts_the_jobs_queued_on_other_boxes(
        make_daemon: DaemonFactory, client_of: Any, fleet_url: str, prompt_key_file: str) -> None:
    paused = {"queue": {"start_paused": True}}
    a = make_daemon({**member_config(fleet_url, "box-a", prompt_key_file), **paused})
    b = make_daemon({**member_config(fleet_url, "box-b", prompt_key_file), **paused})
    client_a, client_b = await client_of(a), await client_of(b)
    for i in range(3):
        await client_b.call("job.submit", prompt=f"elsewhere {i}")
    for _ in range(100):  # the submit's NOTIFY wakes box-a, which counts again
        status = await client_a.call("daemon.status")
        if status["queue"]["queued"] == 3:
            break
        await asyncio.sleep(0.1)
    assert status["queue"]["queued"] == 3 and status["queue"]["paused"], status["queue"]

"""Real daemons running one fleet queue on a real PostgreSQL: jobs spread over the boxes and each
runs once; a box killed mid-batch loses nothing (its jobs re-run elsewhere after the lease); a box
stopped past its lease is fenced off when it wakes (its late result dropped, a critical alert)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from tests.conftest import DaemonFactory, wait_job
from tests.fleet.conftest import member_config
from tests.harness import merged, run_sai

SLOW = "tests.pipeline_doubles:SlowPipelineForTests"
"""Makes a call whose prompt says "slow" take 3 s more, so a box can be stopped or killed while it runs."""


def _box(url: str, name: str, key: str, *, lease: float = 30.0, max_batch: int = 4) -> dict[str, dict[str, Any]]:
    return merged(member_config(url, name, key, lease_seconds=lease),
                  {"queue": {"max_batch": max_batch}, "worker": {"pipeline_wrapper": SLOW}})


async def _rows(url: str) -> dict[str, asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT job_id, state, box, attempt, attempts, outputs FROM jobs")
    finally:
        await conn.close()
    return {row["job_id"]: row for row in rows}


async def _until(what: str, check: Callable[[], Awaitable[Any]], timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = await check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        await asyncio.sleep(0.05)


async def test_three_boxes_share_one_queue(make_daemon: DaemonFactory, client_of: Any, fleet_url: str,
                                           prompt_key_file: str) -> None:
    daemons = [make_daemon(_box(fleet_url, f"box-{n}", prompt_key_file, max_batch=1)) for n in "abc"]
    clients = [await client_of(d) for d in daemons]
    ids = []
    for i in range(9):  # submitted on every box; any box may run any of them
        reply = await clients[i % 3].call("job.submit", prompt=f"slow lighthouse {i}", client_token=f"t{i}")
        ids.append(reply["job_id"])
    again = await clients[2].call("job.submit", prompt="slow lighthouse 0", client_token="t0")
    assert again["job_id"] == ids[0] and again["duplicate"] is True  # idempotent fleet-wide

    jobs = [await wait_job(clients[1], job_id, timeout=300) for job_id in ids]
    assert [job["state"] for job in jobs] == ["succeeded"] * 9, [job["error"] for job in jobs]
    ran_on = {job["box"] for job in jobs}
    assert ran_on == {"box-a", "box-b", "box-c"}, [job["box"] for job in jobs]
    rows = await _rows(fleet_url)
    assert len(rows) == 9
    assert all(row["state"] == "succeeded" and row["attempt"] == 1 and row["attempts"] == 1 for row in rows.values())
    # a box that did not run the job reads it, prompt included (the fleet's prompt key)
    job = await clients[0].call("job.get", job_id=ids[4])
    assert job["params"]["prompt"] == "slow lighthouse 4" and job["box"] in ran_on
    listed = await clients[2].call("job.list", state="succeeded", limit=5)
    assert listed["total"] == 9 and len(listed["jobs"]) == 5
    # the prompts are ciphertext in the database
    conn = await asyncpg.connect(fleet_url)
    try:
        blobs = [bytes(row["prompt"]) for row in await conn.fetch("SELECT prompt FROM jobs")]
    finally:
        await conn.close()
    assert not any(b"lighthouse" in blob for blob in blobs)


async def test_killed_box_jobs_rerun_elsewhere(make_daemon: DaemonFactory, client_of: Any, fleet_url: str,
                                               prompt_key_file: str) -> None:
    a = make_daemon(_box(fleet_url, "box-a", prompt_key_file, lease=2.0, max_batch=2))
    b = make_daemon(_box(fleet_url, "box-b", prompt_key_file, lease=2.0, max_batch=2))
    client_a, client_b = await client_of(a), await client_of(b)
    await client_b.call("queue.pause")  # box-a takes the first batch
    ids = [(await client_b.call("job.submit", prompt=f"slow harbour {i}"))["job_id"] for i in range(4)]

    async def running_on_a() -> list[str]:
        return [row["job_id"] for row in (await _rows(fleet_url)).values()
                if row["state"] == "running" and row["box"] == "box-a"]

    held = await _until("box-a runs a batch", running_on_a)
    a.kill9(workers=True)
    await client_b.call("queue.resume")
    jobs = [await wait_job(client_b, job_id, timeout=300) for job_id in ids]
    assert [job["state"] for job in jobs] == ["succeeded"] * 4, [job["error"] for job in jobs]
    rows = await _rows(fleet_url)
    for job_id in ids:
        assert rows[job_id]["box"] == "box-b" and rows[job_id]["state"] == "succeeded"
    for job_id in held:  # claimed by a, reaped after its lease, claimed by b: three fencing tokens, two runs
        assert (rows[job_id]["attempt"], rows[job_id]["attempts"]) == (3, 2), dict(rows[job_id])
    del client_a


async def test_stopped_box_late_finish_is_fenced_and_alerted(make_daemon: DaemonFactory, client_of: Any,
                                                             fleet_url: str, prompt_key_file: str) -> None:
    a = make_daemon(_box(fleet_url, "box-a", prompt_key_file, lease=2.0))
    b = make_daemon(_box(fleet_url, "box-b", prompt_key_file, lease=2.0))
    client_a, client_b = await client_of(a), await client_of(b)
    await client_b.call("queue.pause")
    job_id = (await client_a.call("job.submit", prompt="slow orchard"))["job_id"]

    async def on(box: str) -> bool:
        row = (await _rows(fleet_url)).get(job_id)
        return row is not None and row["state"] == "running" and row["box"] == box

    await _until("box-a runs the job", lambda: on("box-a"))
    assert a.proc is not None
    a.proc.send_signal(signal.SIGSTOP)
    try:
        await client_b.call("queue.resume")
        job = await wait_job(client_b, job_id, timeout=120)  # reaped after the lease, re-run by box-b
    finally:
        a.proc.send_signal(signal.SIGCONT)
    assert (job["state"], job["box"]) == ("succeeded", "box-b")

    async def stale_alert() -> list[dict[str, Any]]:
        status = await client_a.call("daemon.status")
        return [alert for alert in status["alerts"]["critical"] if alert["key"] == f"fleet.stale.{job_id}"]

    alerts = await _until("box-a's late finish is alerted", stale_alert, timeout=60)
    assert "box 'box-b' owns it now" in alerts[0]["message"] and job_id in alerts[0]["message"]
    row = (await _rows(fleet_url))[job_id]
    assert (row["state"], row["box"], row["attempt"]) == ("succeeded", "box-b", 3)  # a's result was not recorded
    final = await client_a.call("job.get", job_id=job_id)
    assert (final["state"], final["box"]) == ("succeeded", "box-b")
    assert "Traceback" not in a.read_log()


async def test_submit_while_the_database_is_down_fails_clearly(make_daemon: DaemonFactory, client_of: Any,
                                                               fleet_url: str, prompt_key_file: str,
                                                               pg_cluster: Any) -> None:
    from daemon.client import RpcError
    daemon = make_daemon(_box(fleet_url, "box-a", prompt_key_file))
    client = await client_of(daemon)
    first = (await client.call("job.submit", prompt="before"))["job_id"]
    pg_cluster.stop("fast")
    try:
        try:
            await client.call("job.submit", prompt="during the outage")
        except RpcError as exc:
            assert exc.code == -32010 and "the fleet database postgresql://" in exc.message, exc.message
            assert "try again" in exc.message
        else:
            raise AssertionError("a submit was acknowledged while the database was down")
        done = run_sai("submit", "from a script", socket_path=daemon.socket)  # exit 3: a script tries again
        assert done.returncode == 3 and "try again once the fleet database answers" in done.stderr, \
            done.stderr + daemon.read_log()[-4000:]
    finally:
        pg_cluster.start()
    async def submit_after() -> dict[str, Any] | None:
        try:
            reply: dict[str, Any] = await client.call("job.submit", prompt="after")
            return reply
        except RpcError as exc:  # the pool's broken connections are replaced at the next call
            assert exc.code == -32010, exc.message
            return None

    later = await _until("submits work again", submit_after, timeout=60)
    ids = {first, later["job_id"]}
    assert ids <= set(await _rows(fleet_url))
    assert [(await wait_job(client, job_id, timeout=120))["state"] for job_id in sorted(ids)] == ["succeeded"] * 2


async def test_a_database_restart_under_load_loses_and_repeats_nothing(
        make_daemon: DaemonFactory, client_of: Any, fleet_url: str, prompt_key_file: str, pg_cluster: Any) -> None:
    boxes = [make_daemon(_box(fleet_url, f"box-{n}", prompt_key_file, lease=20.0, max_batch=2)) for n in "ab"]
    clients = [await client_of(d) for d in boxes]
    ids = [(await clients[i % 2].call("job.submit", prompt=f"slow tide {i}"))["job_id"] for i in range(8)]

    async def both_running() -> bool:
        return {row["box"] for row in (await _rows(fleet_url)).values() if row["state"] == "running"} == {"box-a", "box-b"}

    await _until("both boxes run a batch", both_running)
    pg_cluster.stop("fast")  # the running batches finish while the database is down
    await asyncio.sleep(4.5)
    pg_cluster.start()
    jobs = [await wait_job(clients[i % 2], job_id, timeout=300) for i, job_id in enumerate(ids)]
    assert [job["state"] for job in jobs] == ["succeeded"] * 8, [job["error"] for job in jobs]
    rows = await _rows(fleet_url)
    assert all(row["state"] == "succeeded" for row in rows.values())
    # a result made during the outage is recorded once the database is back, not run again elsewhere
    assert [(row["attempt"], row["attempts"]) for row in rows.values()] == [(1, 1)] * 8, \
        [dict(row) for row in rows.values()]
    for daemon in boxes:
        assert "Traceback" not in daemon.read_log()

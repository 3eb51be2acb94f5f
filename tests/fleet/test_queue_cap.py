"""`[queue] max_queued_per_user` on fleet members: the cap counts the user's jobs queued on every
box (by user name: a user's uid may differ between machines), not only this box's."""

from __future__ import annotations

from typing import Any

import pytest

from daemon.protocol import RATE_LIMITED, RpcError
from tests.configs import NO_WORKER
from tests.conftest import DaemonFactory
from tests.fleet.conftest import QueueFactory, make_job, member_config
from tests.harness import merged


async def test_the_count_is_the_users_queued_jobs_by_name(open_queue: QueueFactory) -> None:
    a, b = await open_queue("a"), await open_queue("b")
    await a.submit(make_job(uid=1000))
    await b.submit(make_job(uid=2000))  # alice again, under her uid on another machine
    bob = make_job()
    bob.user = "bob"
    await a.submit(bob)
    assert (await a.queued_of("alice"), await b.queued_of("bob")) == (2, 1)
    claimed = await b.claim("cpu0")
    assert claimed is not None and claimed.job.user == "alice"
    assert await a.queued_of("alice") == 1  # running: no longer queued, as on a single box
    assert await a.queued_of("carol") == 0


async def test_a_users_jobs_queued_on_another_box_count_against_the_cap(
        make_daemon: DaemonFactory, client_of: Any, fleet_url: str, prompt_key_file: str) -> None:
    capped = merged(NO_WORKER, {"queue": {"max_queued_per_user": 3}})  # paused: the jobs stay queued
    a = make_daemon(merged(member_config(fleet_url, "box-a", prompt_key_file), capped))
    b = make_daemon(merged(member_config(fleet_url, "box-b", prompt_key_file), capped))
    client_a, client_b = await client_of(a), await client_of(b)
    on_a = [(await client_a.call("job.submit", prompt=f"lantern {i}"))["job_id"] for i in range(2)]
    await client_b.call("job.submit", prompt="lantern on b")

    for client in (client_a, client_b):
        with pytest.raises(RpcError) as refused:
            await client.call("job.submit", prompt="one too many")
        assert refused.value.code == RATE_LIMITED
        assert "already has 3 jobs queued" in refused.value.message, refused.value.message
        assert refused.value.data == {"retry_after": None, "queued": 3}

    assert (await client_b.call("job.cancel", job_id=on_a[0]))["state"] == "cancelled"
    assert (await client_a.call("job.submit", prompt="room again"))["state"] == "queued"
    with pytest.raises(RpcError) as refused:
        await client_b.call("job.submit", prompt="full again")
    assert refused.value.code == RATE_LIMITED

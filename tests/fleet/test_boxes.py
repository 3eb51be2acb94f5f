"""The box registry: boxes register, heartbeat, and fleet.status's data shows them."""

from __future__ import annotations

import asyncio

from daemon.fleet.boxes import BoxInfo, BoxRegistry
from tests.fleet.conftest import QueueFactory, make_job


async def test_boxes_heartbeat_and_show_their_load(open_queue: QueueFactory) -> None:
    a, b = await open_queue("a"), await open_queue("b")
    registry_a, registry_b = BoxRegistry(a.db), BoxRegistry(b.db)
    gpu = {"worker": "cuda0", "device": "cuda:0", "memory_mb": 81559}
    await registry_a.register(BoxInfo("a", socket="/run/sai/a.sock", reach="ssh ops@gpu-a", version="1.0",
                                      models=["tiny"], devices=[gpu], workers=1, free_workers=1))
    await registry_b.register(BoxInfo("b", socket="/run/sai/b.sock", models=["tiny", "big"], workers=2,
                                      free_workers=2))
    for i in range(3):
        await a.submit(make_job(f"job {i}"))
    assert await b.claim("cpu0") is not None
    await asyncio.sleep(0.3)
    await registry_b.heartbeat(BoxInfo("b", socket="/run/sai/b.sock", models=["tiny", "big"], workers=2,
                                       free_workers=1))
    status = await registry_a.status()
    assert (status["queued"], status["running"]) == (2, 1)
    by_name = {box["name"]: box for box in status["boxes"]}
    assert sorted(by_name) == ["a", "b"]
    assert by_name["a"]["devices"] == [gpu] and by_name["a"]["reach"] == "ssh ops@gpu-a"
    assert (by_name["b"]["models"], by_name["b"]["running"], by_name["b"]["free_workers"]) == (["tiny", "big"], 1, 1)
    assert by_name["a"]["heartbeat_age"] >= 0.3 > by_name["b"]["heartbeat_age"]
    await registry_b.leave("b")
    assert [box["name"] for box in (await registry_a.status())["boxes"]] == ["a"]

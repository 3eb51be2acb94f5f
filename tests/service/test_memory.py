"""Out of memory for real: the worker's address space is capped, and jobs too large for it
are split, then failed with a message that says what to change."""

from __future__ import annotations

import numpy as np

CAPPED = {"model": {"memory_headroom_mb": 300, "threads": 1}, "queue": {"max_batch": 8},
          "performance": {"vae_slicing_above_batch": 64}}
"""VAE slicing off (decoding 8 images at once), as the cap was measured: 8 images of 256x256 must not fit."""


async def test_batch_too_big_is_split_and_a_single_image_too_big_fails_clearly(make_daemon, client_of, wait_for):
    daemon = make_daemon(CAPPED)
    client = await client_of(daemon)
    split = (await client.call("job.submit", prompt="eight at once", width=256, height=256, steps=2, count=8))["job_id"]
    job = await wait_for(client, split, timeout=300)
    assert job["state"] == "succeeded", job["error"]
    assert len(job["outputs"]) == 8
    assert "out of memory with 8 images of 256x256; retrying as 4 + 4" in daemon.read_log(), daemon.read_log()[-4000:]
    too_big = (await client.call("job.submit", prompt="too big", width=1024, height=1024, steps=2))["job_id"]
    job = await wait_for(client, too_big, timeout=300)
    assert job["state"] == "failed", daemon.read_log()[-4000:]
    assert "out of memory generating one 1024x1024 image" in job["error"], (job, daemon.read_log()[-4000:])
    assert "reduce width and height" in job["error"]
    after = await wait_for(client, (await client.call("job.submit", prompt="still fine"))["job_id"])
    assert after["state"] == "succeeded", daemon.read_log()[-4000:]
    status = await client.call("daemon.status")
    assert status["worker"]["restarts"] == 0, daemon.read_log()[-4000:]
    assert np.isfinite(status["worker"]["memory"]["rss"])


async def test_a_job_that_can_never_fit_is_refused_at_submit(make_daemon, client_of, wait_for):
    daemon = make_daemon(CAPPED)
    client = await client_of(daemon)
    for size in (64, 128):  # two measured sizes let the daemon extrapolate to others
        job = await wait_for(client, (await client.call("job.submit", prompt="learn", width=size, height=size,
                                                        steps=2))["job_id"])
        assert job["state"] == "succeeded"
    with __import__("pytest").raises(Exception) as info:
        await client.call("job.submit", prompt="huge", width=2048, height=512, steps=2)
    assert info.value.code == -32010 and info.value.data["reason"] == "memory"
    assert "needs about" in info.value.message and "GiB" in info.value.message and "reduce width" in info.value.message
    ok = await client.call("job.submit", prompt="small again", width=64, height=64, steps=2)
    assert (await wait_for(client, ok["job_id"]))["state"] == "succeeded"


def test_memory_model_learns_from_peaks():
    from daemon.worker.memory_model import MemoryModel

    model = MemoryModel()
    assert model.need(512, 512) is None and model.refusal(512, 512, 10**9) is None
    model.observe({"pixels": 64 * 64, "bytes_per_image": 8 * 2**20})
    assert model.need(64, 64) == int(8 * 2**20 * 1.25) and model.need(512, 512) is None
    model.observe({"pixels": 256 * 256, "bytes_per_image": 38 * 2**20})
    assert model.need(512, 512) > model.need(256, 256) > model.need(64, 64)
    assert model.refusal(2048, 2048, 512 * 2**20) is not None
    assert model.image_budget(256, 256, 400 * 2**20) == 400 * 2**20 // model.need(256, 256)


async def test_vae_slicing_by_default_fits_the_batch_that_needed_a_split(make_daemon, client_of, wait_for):
    """The default [performance] decodes a call of more than 4 images one at a time: under the same
    cap, the 8 images that ran out of memory above run in one call."""
    daemon = make_daemon({"model": {"memory_headroom_mb": 300, "threads": 1}, "queue": {"max_batch": 8}})
    client = await client_of(daemon)
    job_id = (await client.call("job.submit", prompt="eight at once", width=256, height=256, steps=2,
                                count=8))["job_id"]
    job = await wait_for(client, job_id, timeout=300)
    assert job["state"] == "succeeded", job["error"]
    assert len(job["outputs"]) == 8
    assert "out of memory" not in daemon.read_log()

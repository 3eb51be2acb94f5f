"""Out of memory for real: the worker's address space is capped, and jobs too large for it
are split, then failed with a message that says what to change."""

from __future__ import annotations

import numpy as np

CAPPED = {"model": {"memory_headroom_mb": 300, "threads": 1}, "queue": {"max_batch": 8}}


async def test_batch_too_big_is_split_and_a_single_image_too_big_fails_clearly(make_daemon, client_of, wait_for):
    daemon = make_daemon(CAPPED)
    client = await client_of(daemon)
    split = (await client.call("job.submit", prompt="eight at once", width=256, height=256, steps=2, count=8))["job_id"]
    job = await wait_for(client, split, timeout=300)
    assert job["state"] == "succeeded", job["error"]
    assert len(job["outputs"]) == 8
    assert "out of memory with 8 images of 256x256; retrying as 4 + 4" in daemon.read_log()
    too_big = (await client.call("job.submit", prompt="too big", width=1024, height=1024, steps=2))["job_id"]
    job = await wait_for(client, too_big, timeout=300)
    assert job["state"] == "failed"
    assert "out of memory generating one 1024x1024 image" in job["error"]
    assert "reduce width and height" in job["error"]
    after = await wait_for(client, (await client.call("job.submit", prompt="still fine"))["job_id"])
    assert after["state"] == "succeeded"
    status = await client.call("daemon.status")
    assert status["worker"]["restarts"] == 0 and np.isfinite(status["worker"]["memory"]["rss"])

"""The daemon-side glue without a daemon: the dispatcher's sink, prompts sealed in the job store,
key maintenance (re-wrap after rotation, plaintext rows from an older build encrypted at start-up)."""

from __future__ import annotations

import asyncio
import io
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from daemon.crypto import HeaderError, envelope
from daemon.crypto.envelope import PromptSealer
from daemon.crypto.keys import KeyStore
from daemon.outputs.pipeline import OutputSettings, export_output, verify_output
from daemon.outputs.sink import PROMPTS_KEK, KeyMaintenance, ProtectedSink
from daemon.queue.jobs import Job
from daemon.queue.store import JobStore, PlainText
from tests.outputs.out_helpers import image, keys_dir, keystore, out_dir  # noqa: F401  (fixtures)

SECRET = "a lighthouse nobody may read ✓"


def make_job(job_id: str = "j000000000001", attempts: int = 1, **extra: Any) -> Job:
    fields: dict[str, Any] = dict(job_id=job_id, seq=1, state="running", priority=1,
                                  params={"width": 256, "height": 256, "steps": 4, "guidance": 7.5, "seed": 41,
                                          "count": 2},
                                  prompt=SECRET, negative_prompt="blurry", user="alice", uid=1000, created_at=0.0,
                                  enqueued_at=0.0, attempts=attempts, model_id="tiny")
    fields.update(extra)
    return Job(**fields)


def raw_bytes(path: Path) -> bytes:
    """The database file and its WAL/shared-memory companions, as stored."""
    return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")))


def run_in(executor: ThreadPoolExecutor):
    async def run(fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    return run


def test_sink_writes_protected_outputs_and_a_full_record(image, keystore, out_dir: Path) -> None:
    sink = ProtectedSink(keystore, OutputSettings.defaults(), out_dir, lambda: "cd" * 32)
    job = make_job()
    rgb = image("smooth", 3)
    record = sink.write(job, 1, rgb.shape, rgb.tobytes())
    sai = out_dir / f"{job.job_id}-1.png.sai"
    assert record["path"] == record["sai_path"] == str(sai) and sai.is_file()
    assert record["manifest"] == str(out_dir / f"{job.job_id}-1.manifest.json")
    assert (record["index"], record["width"], record["height"]) == (1, 256, 256)
    assert record["kid"] == keystore.current_kek_id and record["signing_kid"] == keystore.signing_kid
    assert record["sha256"] == record["png_sha256"] and len(record["fingerprint"]) == 16
    assert sorted(p.name for p in out_dir.iterdir()) == [f"{job.job_id}-1.{s}" for s in
                                                         ("manifest.json", "manifest.sig", "png.sai")]
    png = export_output(out_dir, job.job_id, 1, keystore)
    with Image.open(io.BytesIO(png)) as im:
        assert im.size == (256, 256) and im.text["sai:seed"] == "42" and im.text["sai:prompt"] == SECRET
        assert im.text["sai:weights_sha256"] == "cd" * 32
    assert SECRET.encode() not in b"".join(p.read_bytes() for p in out_dir.iterdir())


def test_sink_replaces_what_an_interrupted_attempt_left(image, keystore, out_dir: Path) -> None:
    sink = ProtectedSink(keystore, OutputSettings.defaults(), out_dir)
    rgb = image("smooth", 4)
    first = sink.write(make_job(), 0, rgb.shape, rgb.tobytes())
    second = sink.write(make_job(attempts=2), 0, rgb.shape, rgb.tobytes())
    assert first["sai_sha256"] != second["sai_sha256"]  # fresh data key and nonce
    assert len(list(out_dir.iterdir())) == 3
    assert verify_output("j000000000001", out_dir, keystore)["ok"]


async def test_prompts_are_sealed_in_the_database(keystore, tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    store = await JobStore.open(path, PromptSealer(keystore))
    try:
        await store.insert(make_job())
        await store.insert(make_job("j000000000002", seq=2, negative_prompt=""))
        assert (await store.get("j000000000001")).prompt == SECRET
        assert (await store.get("j000000000002")).negative_prompt == ""
        assert SECRET.encode() not in raw_bytes(path) and b"blurry" not in raw_bytes(path)
        async with store._db.execute("SELECT prompt FROM jobs ORDER BY seq") as cur:
            blobs = [bytes(row[0]) for row in await cur.fetchall()]
        assert all(envelope.parse(b).header["content_type"] == envelope.TEXT for b in blobs)
        # A prompt blob moved to another job's row is refused, not shown as that job's prompt.
        await store._write("UPDATE jobs SET prompt = ? WHERE job_id = ?", (blobs[0], "j000000000002"))
        with pytest.raises(HeaderError) as caught:
            await store.get("j000000000002")
        assert caught.value.field == "job_id"
    finally:
        await store.close()


async def test_plaintext_rows_of_an_older_build_are_encrypted_at_start(keystore, tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    old = await JobStore.open(path, PlainText())
    for i in range(300):  # more than one batch
        await old.insert(make_job(f"j{i:012d}", seq=i + 1, prompt=f"{SECRET} #{i}"))
    await old.close()
    assert SECRET.encode() in raw_bytes(path)

    executor = ThreadPoolExecutor(2)
    store = await JobStore.open(path, PromptSealer(keystore))
    try:
        keys = KeyMaintenance(keystore, store, tmp_path / "outputs", run_in(executor))
        assert await keys.prompts_pending()
        await keys.resume_prompts()
        assert await store.get_setting(PROMPTS_KEK) == keystore.current_kek_id
        assert (await store.get("j000000000007")).prompt == f"{SECRET} #7"
        assert not await keys.prompts_pending()
        # Already current: a second pass rewrites nothing.
        assert (await keys.reseal_prompts())["rewrapped"] == 0
    finally:
        await store.close()
        executor.shutdown()
    assert SECRET.encode() not in raw_bytes(path)


async def test_rotation_rewraps_prompts_and_outputs_together(image, keystore, keys_dir: Path, out_dir: Path,
                                                             tmp_path: Path) -> None:
    executor = ThreadPoolExecutor(2)
    store = await JobStore.open(tmp_path / "jobs.sqlite3", PromptSealer(keystore))
    try:
        job = make_job()
        await store.insert(job)
        rgb = image("gradient", 5)
        ProtectedSink(keystore, OutputSettings.defaults(), out_dir).write(job, 0, rgb.shape, rgb.tobytes())
        keys = KeyMaintenance(keystore, store, out_dir, run_in(executor))
        old_kek = keystore.current_kek_id
        result = await keys.rotate()
        assert result["previous_kek_id"] == old_kek != result["kek_id"]
        assert result["outputs"]["rewrapped"] == 1 and result["prompts"]["rewrapped"] == 1
        again = await keys.rotate()  # a second rotation re-wraps under the newest key
        assert again["outputs"]["rewrapped"] == 1 and again["prompts"]["rewrapped"] == 1
        fresh = KeyStore.open(keys_dir)  # what a restarted daemon sees
        assert fresh.current_kek_id == again["kek_id"]
        assert (await store.get(job.job_id)).prompt == SECRET
        report = verify_output(job.job_id, out_dir, fresh)
        assert report["ok"] and report["outputs"][0]["rewrapped"]
        assert np.asarray(Image.open(io.BytesIO(export_output(out_dir, job.job_id, 0, fresh)))).shape == (256, 256, 3)
    finally:
        await store.close()
        executor.shutdown()
    con = sqlite3.connect(tmp_path / "jobs.sqlite3")
    kids = {envelope.parse(bytes(b)).kid for row in con.execute("SELECT prompt, negative_prompt FROM jobs") for b in row}
    con.close()
    assert kids == {again["kek_id"]}

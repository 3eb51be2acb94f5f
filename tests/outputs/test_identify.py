"""`sai identify` / output.identify on a real daemon through the real CLI: an exported image is
ours (Trusted C2PA, fingerprint, job, pixels match); re-encoded as JPEG q75 at half size it is
still found by the fingerprint, pixels changed; an unrelated image is not ours (exit 1); garbage
and a decompression bomb exit 2 naming what was wrong while the daemon keeps serving; a viewer
sees neither owner nor prompt; every identify is in the audit log. The fingerprint index is
backfilled for a jobs database written before it."""

from __future__ import annotations

import asyncio
import getpass
import json
import secrets
import sqlite3
import struct
import zlib
from pathlib import Path
from typing import Any

from PIL import Image

from daemon.outputs.watermark import fingerprint
from daemon.queue.store import SCHEMA, JobStore
from tests.configs import NO_WORKER
from tests.harness import run_sai
from tests.outputs.out_helpers import synthetic

SIDE = 512


def identify(daemon: Any, *files: Path) -> tuple[int, list[dict[str, Any]], str]:
    out = run_sai("identify", "--json", *map(str, files), socket_path=daemon.socket)
    return out.returncode, json.loads(out.stdout) if out.stdout.strip() else [], out.stderr


def png_bomb(side: int) -> bytes:
    """A side × side PNG header in under 100 bytes (100,000²: decoding it would need 30 GB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + \
        chunk(b"IEND", b"")


async def test_identify_finds_our_images_after_reencoding_and_refuses_bad_files(make_daemon, client_of, wait_for,
                                                                                 tmp_path: Path):
    daemon = make_daemon()
    client = await client_of(daemon)
    marker = secrets.token_hex(8)
    job_id = (await client.call("job.submit", prompt=f"a harbour {marker}", width=SIDE, height=SIDE,
                                steps=2))["job_id"]
    job = await wait_for(client, job_id, timeout=300)
    assert job["state"] == "succeeded", job["error"]
    exported = tmp_path / "exported.png"
    assert run_sai("export", job_id, "-o", str(exported), socket_path=daemon.socket).returncode == 0

    status, (report,), _ = identify(daemon, exported)
    assert status == 0 and report["ours"], report
    assert report["c2pa"]["state"] == "Trusted" and report["c2pa"]["failures"] == []
    assert report["c2pa"]["signer"] == "Secure AI Studio output signer" and report["c2pa"]["job_id"] == job_id
    assert report["mark"]["found"] and report["mark"]["fingerprint"] == fingerprint(job_id).hex()
    found = report["job"]
    assert found["job_id"] == job_id and found["index"] == 0 and found["pixels"] == "match"
    assert found["found_by"] == ["fingerprint", "c2pa"] and found["model"] == job["model"]
    assert found["created_at"] == job["created_at"] and found["user"] == job["user"]
    assert marker in found["prompt"]  # the job's owner (here also admin) sees the prompt

    reencoded = tmp_path / "shared.jpg"
    half = Image.open(exported).convert("RGB").resize((SIDE // 2, SIDE // 2), Image.Resampling.LANCZOS)
    half.save(reencoded, "JPEG", quality=75)
    status, (report,), _ = identify(daemon, reencoded)
    assert status == 0 and report["ours"] and report["format"] == "JPEG", report
    assert report["c2pa"]["state"] is None
    assert report["job"]["job_id"] == job_id and report["job"]["found_by"] == ["fingerprint"]
    assert report["job"]["pixels"] == "changed" and report["mark"]["scale"] != 1.0

    unrelated = tmp_path / "unrelated.png"  # ~3 MB: goes up in several chunks
    Image.fromarray(synthetic("noise", 7, 1024)).save(unrelated)
    assert unrelated.stat().st_size > 2 * 512 * 1024
    status, (report,), _ = identify(daemon, unrelated)
    assert status == 1 and not report["ours"] and report["job"] is None and not report["mark"]["found"], report
    out = run_sai("identify", str(unrelated), socket_path=daemon.socket)
    assert out.returncode == 1 and "not ours" in out.stdout and "none found" in out.stdout, out.stdout

    garbage, bomb, big = tmp_path / "garbage.png", tmp_path / "bomb.png", tmp_path / "big.png"
    garbage.write_bytes(secrets.token_bytes(4096))
    bomb.write_bytes(png_bomb(100_000))
    big.write_bytes(png_bomb(8_000))
    status, results, stderr = identify(daemon, garbage, bomb, big, exported, tmp_path / "missing.png")
    assert status == 2, stderr
    assert "not a PNG, JPEG or WebP image" in results[0]["error"]
    assert "decompression bomb" in results[1]["error"] and "10000000000 pixels" in results[1]["error"]
    assert "declares 8000x8000 pixels" in results[2]["error"]
    assert results[3]["ours"] and results[3]["job"]["job_id"] == job_id
    assert "cannot read" in results[4]["error"] and "No such file" in results[4]["error"]
    assert "Traceback" not in stderr and "decompression bomb" in stderr
    assert (await client.call("daemon.status"))["queue"] is not None  # still serving

    entries = (await client.call("audit.tail", action="output.identify", limit=50))["entries"]
    details = [e["details"] for e in entries]
    assert sum(1 for d in details if d.get("job_id") == job_id) == 3  # exported (twice), re-encoded
    assert sum(1 for d in details if "refused" in d) == 3
    assert any(d.get("ours") is False and d.get("job_id") is None for d in details)
    assert all(len(json.dumps(d)) < 2000 for d in details)  # what was found, never the image

    # The same state under a daemon where this user is a viewer: identified, no owner, no prompt.
    assert await asyncio.to_thread(daemon.terminate) == 0
    viewer = make_daemon({**NO_WORKER, "auth": {"viewer_users": [getpass.getuser()]}}, state_from=daemon)
    out = run_sai("identify", "--json", str(exported), socket_path=viewer.socket)
    (report,) = json.loads(out.stdout)
    assert out.returncode == 0 and report["job"]["job_id"] == job_id, out.stderr
    assert "user" not in report["job"] and "prompt" not in report["job"] and not report["job"]["owner_visible"]
    shown = json.dumps({k: v for k, v in report.items() if k != "file"})
    assert marker not in shown and f'"{job["user"]}"' not in shown
    text = run_sai("identify", str(exported), socket_path=viewer.socket)
    assert text.returncode == 0 and "not shown to your role" in text.stdout and marker not in text.stdout
    assert f"owner     {job['user']}" not in text.stdout


async def test_fingerprints_of_outputs_written_before_the_index_are_found(tmp_path: Path):
    """A jobs database of schema 3 (no fingerprint index) is brought to 4 and its outputs indexed."""
    path = tmp_path / "jobs.sqlite3"
    old = SCHEMA.split("CREATE TABLE IF NOT EXISTS fingerprints")[0]
    outputs = json.dumps([{"index": 0, "png_sha256": "ab" * 32, "fingerprint": fingerprint("j000000000007").hex()}])
    with sqlite3.connect(path) as db:
        db.executescript(old)
        db.execute("INSERT INTO jobs (job_id, state, priority, params, prompt, negative_prompt, user, uid, "
                   "created_at, enqueued_at, outputs) VALUES ('j000000000007', 'succeeded', 1, '{}', x'61', x'', "
                   "'alice', 1000, 1.0, 1.0, ?)", (outputs,))
        db.execute("PRAGMA user_version=3")
    store = await JobStore.open(path)
    try:
        assert await store.job_ids_of_fingerprint(fingerprint("j000000000007").hex()) == ["j000000000007"]
        assert await store.job_ids_of_fingerprint(fingerprint("j000000000008").hex()) == []
    finally:
        await store.close()


async def test_the_console_identifies_an_image_from_a_path(make_daemon, client_of, wait_for, tmp_path: Path):
    """`i` (or `:identify PATH`) opens the identify screen; the file is read and sent off the UI thread."""
    from console.app import SaiConsole
    from console.screens.identify import IdentifyScreen
    from tests.console.console_helpers import connected, screen_text, until

    daemon = make_daemon()
    client = await client_of(daemon)
    job_id = (await client.call("job.submit", prompt="a quay", width=SIDE, height=SIDE, steps=2))["job_id"]
    assert (await wait_for(client, job_id, timeout=300))["state"] == "succeeded"
    exported, unrelated = tmp_path / "quay.png", tmp_path / "noise.webp"
    assert run_sai("export", job_id, "-o", str(exported), socket_path=daemon.socket).returncode == 0
    Image.fromarray(synthetic("smooth", 3, SIDE)).save(unrelated, "WEBP", quality=80)

    app = SaiConsole(str(daemon.socket))
    async with app.run_test(size=(120, 40)) as pilot:
        await connected(pilot, app)
        await pilot.press("i")
        assert isinstance(app.screen, IdentifyScreen)
        await pilot.press(*str(exported), "enter")
        screen = app.screen
        await until(pilot, lambda: "ours: job" in screen.result, 60, "the identify report")
        assert job_id in screen.result and "Trusted" in screen.result and "match the recorded PNG hash" in screen.result
        assert f"ours: job {job_id}" in screen_text(app)
        await pilot.press("escape")
        assert app.screen is app.main

        app.execute(f":identify {unrelated}")
        await until(pilot, lambda: isinstance(app.screen, IdentifyScreen) and "not ours" in app.screen.result, 60,
                    "the unrelated image's report")
        app.screen.identify(str(tmp_path / "nowhere.png"))
        await until(pilot, lambda: "cannot read" in app.screen.result, 30, "the read error")
        assert "No such file" in app.screen.result


def test_a_manifest_signed_by_another_installation_names_no_job_here(tmp_path: Path):
    """Anyone can sign a Valid manifest naming one of our job ids (without the mark): only a Trusted
    one (our CA) may make an image ours through its assertion."""
    from daemon.crypto.keys import KeyStore
    from daemon.outputs.credentials import Provenance, embed_credentials
    from daemon.outputs.identify import choose_job, examine
    from daemon.outputs.png import encode_png

    ours, theirs = KeyStore.open(tmp_path / "ours"), KeyStore.open(tmp_path / "theirs")
    png = encode_png(synthetic("smooth", 5, SIDE), None, 6)
    anchors = ours.c2pa.ca_pem().decode("ascii")
    forged = embed_credentials(png, Provenance("j00000000000a", 0, "tiny", ""), theirs)
    exam, legacy = examine(forged, anchors)
    assert exam.c2pa["state"] == "Valid" and exam.claimed_job == "j00000000000a" and not exam.mark["found"]
    assert choose_job(exam, legacy, [], claimed_exists=True) == (None, [])
    exam_genuine, legacy = examine(embed_credentials(png, Provenance("j00000000000a", 0, "tiny", ""), ours), anchors)
    assert exam_genuine.c2pa["state"] == "Trusted"
    assert choose_job(exam_genuine, legacy, [], claimed_exists=True) == ("j00000000000a", ["c2pa"])

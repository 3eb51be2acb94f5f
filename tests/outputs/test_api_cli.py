"""The RPC handlers (output.verify, output.preview, keys.rotate) against a stub daemon, and the
`sai inspect` / `sai verify` commands."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from daemon import config
from daemon.api import outputs as api
from daemon.api.limits import CallLimits
from daemon.api.registry import METHODS, CallContext, Role, bind
from daemon.auth import Peer
from daemon.crypto.keys import KeyStore
from daemon.exitcodes import ExitCode
from daemon.outputs.pipeline import export_output, protect_image
from daemon.protocol import INVALID_PARAMS, NOT_FOUND, NOT_PERMITTED, RpcError
from tests.outputs.out_helpers import image, keys_dir, keystore, make_info, out_dir, settings  # noqa: F401  (fixtures)


class StubQueue:
    async def get(self, job_id: str) -> Any:
        return type("Job", (), {"job_id": job_id, "uid": 1000, "user": "alice"})()

    def check_owner(self, peer: Peer, job: Any, action: str) -> None:
        if peer.uid != job.uid and peer.role < Role.ADMIN:
            raise RpcError(NOT_PERMITTED, f"{action} of {job.user}'s job needs the admin role")



class StubDaemon:
    """The part of daemon.api.registry.DaemonApi these handlers use; audit entries are kept in a list."""

    def __init__(self, keystore: KeyStore, outputs_dir: Path) -> None:
        self.keystore, self.outputs_dir, self.queue = keystore, outputs_dir, StubQueue()
        self.fleet = None  # a single box: every output is its own
        self.executor = ThreadPoolExecutor(2)
        self.call_limits = CallLimits.from_config(config.load(system_file=None, environ={}).daemon)
        self.audited: list[tuple[str, str, dict]] = []

    async def audit_action(self, peer: Peer, action: str, subject: str, details: dict) -> None:
        self.audited.append((action, subject, details))

    async def run_blocking(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)


def ctx(daemon: StubDaemon, uid: int = 1000, role: Role = Role.OPERATOR) -> CallContext:
    return CallContext(daemon, Peer(uid=uid, gid=uid, pid=1, user="alice" if uid == 1000 else "bob",
                                    groups=(), role=role))


@pytest.fixture
def daemon(image, keystore, settings, out_dir) -> StubDaemon:
    protect_image(image("smooth", 1), make_info("job-a"), keystore, settings, out_dir)
    protect_image(image("smooth", 2), make_info("job-a", 1), keystore, settings, out_dir)
    return StubDaemon(keystore, out_dir)


def test_registered_with_roles() -> None:
    assert METHODS["output.verify"].role == Role.VIEWER
    assert METHODS["output.preview"].role == Role.OPERATOR
    assert METHODS["keys.rotate"].role == Role.ADMIN
    assert bind(METHODS["output.preview"], {"job_id": "j", "max_side": 64}) == {"job_id": "j", "max_side": 64}


async def test_verify(daemon: StubDaemon) -> None:
    result = await api.verify(ctx(daemon, role=Role.VIEWER), job_id="job-a")
    assert result["ok"] and [o["index"] for o in result["outputs"]] == [0, 1]
    one = await api.verify(ctx(daemon), job_id="job-a", index=1)
    assert [o["index"] for o in one["outputs"]] == [1]
    with pytest.raises(RpcError) as caught:
        await api.verify(ctx(daemon), job_id="job-none")
    assert caught.value.code == NOT_FOUND and caught.value.data["field"] == "file"
    for hostile in ("../../etc/passwd.png.sai", "/tmp/x.manifest.json"):
        with pytest.raises(RpcError) as caught:
            await api.verify(ctx(daemon), job_id=hostile)
        assert caught.value.code == INVALID_PARAMS and caught.value.data["field"] == "job_id"


async def test_preview(daemon: StubDaemon) -> None:
    result = await api.preview(ctx(daemon), job_id="job-a", index=1, max_side=64)
    png = base64.b64decode(result["png"])
    with Image.open(io.BytesIO(png)) as im:
        assert im.size == (64, 64) == (result["width"], result["height"])
    assert daemon.audited[-1][:2] == ("output.preview", "job-a")
    with pytest.raises(RpcError) as caught:
        await api.preview(ctx(daemon, uid=2000), job_id="job-a")
    assert caught.value.code == NOT_PERMITTED
    with pytest.raises(RpcError):
        await api.preview(ctx(daemon), job_id="job-a", max_side=4)
    (daemon.outputs_dir / "job-a-0.manifest.sig").write_bytes(b"\0" * 64)
    with pytest.raises(RpcError) as caught:
        await api.preview(ctx(daemon), job_id="job-a", index=0)
    assert caught.value.data["field"] == "signature"


async def test_rotate(daemon: StubDaemon, keys_dir: Path, tmp_path: Path) -> None:
    from daemon.audit.log import AuditLog
    from daemon.crypto.envelope import PromptSealer, parse
    from daemon.outputs.sink import KeyMaintenance
    from daemon.queue.jobs import Job
    from daemon.queue.store import JobStore

    store = await JobStore.open(tmp_path / "jobs.sqlite3", PromptSealer(daemon.keystore))
    daemon.audit = await AuditLog.open(tmp_path / "audit.db", daemon.keystore.signing_key, "test/sai-audit")
    try:
        await store.insert(Job(job_id="job-a", seq=1, state="succeeded", priority=1, params={}, prompt="a secret",
                               negative_prompt="", user="alice", uid=1000, created_at=0.0, enqueued_at=0.0))
        daemon.key_maintenance = KeyMaintenance(daemon.keystore, store, daemon.outputs_dir, daemon.run_blocking)
        before, old_kek = daemon.keystore.signing_kid, daemon.keystore.current_kek_id
        result = await api.rotate(ctx(daemon, role=Role.ADMIN))
        assert result["previous_signing_kid"] == before != result["signing_kid"]
        assert result["previous_kek_id"] == old_kek != result["kek_id"] == daemon.keystore.current_kek_id
        assert result["outputs"]["rewrapped"] == 2 and not result["outputs"]["failed"]
        assert result["prompts"] == {"rewrapped": 1, "failed": []}
        actions = [(action, details.get("reason")) for action, _, details in daemon.audited]
        assert ("keys.rotate", None) in actions and actions[-1] == ("c2pa.cert.issue", "keys.rotate")
        assert result["c2pa"]["signing_id"] == daemon.audited[-1][1]
        assert export_output(daemon.outputs_dir, "job-a", 1, KeyStore.open(keys_dir))[:4] == b"\x89PNG"
        async with store._db.execute("SELECT prompt, negative_prompt FROM jobs") as cur:
            blobs = list(await cur.fetchone())
        assert [parse(blob).kid for blob in blobs if blob] == [result["kek_id"]]
        assert blobs[1] == b""  # no negative prompt: stored empty
        assert (await daemon.audit.verify(deep=True))["ok"]
        announced = (await daemon.audit.tail(limit=5))[-1]
        assert announced["action"] != "audit.init" and daemon.audit.key_id != before
        assert (await store.get("job-a")).prompt == "a secret"
        assert not await daemon.key_maintenance.prompts_pending() and not await daemon.key_maintenance.outputs_pending()
    finally:
        await store.close()
        await daemon.audit.close()


# --- the command line -------------------------------------------------------------------------

def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from console.cli import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_parser_decides_whether_the_daemon_is_needed(daemon: StubDaemon) -> None:
    from console.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["verify", "job-a"]).needs_daemon is True
    assert parser.parse_args(["verify", str(daemon.outputs_dir / "job-a-0.png.sai")]).needs_daemon is False
    assert parser.parse_args(["inspect", "x.png"]).needs_daemon is False


def test_sai_inspect(daemon: StubDaemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exported = tmp_path / "out.png"
    exported.write_bytes(export_output(daemon.outputs_dir, "job-a", 0, daemon.keystore))
    code, out, _ = run_cli(["inspect", str(exported)], capsys)
    assert code == 0
    assert "invisible mark: present" in out and "matches job job-a (64/64 bits" in out
    assert "visible mark:   present" in out and "lighthouse" not in out
    code, out, _ = run_cli(["inspect", str(exported), "--json", "--prompt"], capsys)
    report = json.loads(out)
    assert report["invisible"]["matched_job"] == "job-a" and "lighthouse" in report["metadata"]["prompt"]
    code, _, err = run_cli(["inspect", str(tmp_path / "missing.png")], capsys)
    assert code != 0 and "missing" in err


def test_sai_verify_file(daemon: StubDaemon, keys_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sai = daemon.outputs_dir / "job-a-0.png.sai"
    code, out, _ = run_cli(["verify", str(sai), "--keys-dir", str(keys_dir)], capsys)
    assert code == 0 and out.startswith("ok ")
    code, out, _ = run_cli(["verify", str(sai), "--keys-dir", str(keys_dir), "--json"], capsys)
    assert json.loads(out)["ok"] is True
    blob = bytearray(sai.read_bytes()); blob[-5] ^= 1; sai.write_bytes(bytes(blob))
    code, out, err = run_cli(["verify", str(sai), "--keys-dir", str(keys_dir)], capsys)
    assert code == ExitCode.VERIFY_FAILED and "FAILED" in out and "ciphertext" in out and "failed" in err


async def test_sai_verify_job_asks_the_daemon(daemon: StubDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    from console.cli import build_parser
    from console.commands.outputs import verify

    class Client:
        """Resolves the stub's short job names as themselves (the real job.resolve needs a job store)."""

        async def call(self, method: str, **params: Any) -> Any:
            if method == "job.resolve":
                return {"job_id": params["prefix"]}
            assert method == "output.verify"
            return await api.verify(ctx(daemon), **params)

    args = build_parser().parse_args(["verify", "job-a", "--index", "1"])
    assert await verify(args, Client()) == 0
    assert capsys.readouterr().out.startswith("ok      job-a-1")

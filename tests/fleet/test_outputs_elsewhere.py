"""Outputs stay with the box that made them (issue 18 point 3), with real daemons on a real
PostgreSQL: asked on another box, the output calls answer -32010 naming the box that holds the
output and how to reach it; `sai export`, `sai verify` and the console follow that to the socket the
client config maps the box to ([fleet] sockets), and without a mapping say how to reach it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from console.app import SaiConsole
from console.screens.job_detail import JobDetailScreen
from daemon.exitcodes import ExitCode
from daemon.protocol import UNAVAILABLE, RpcError
from tests.conftest import DaemonFactory, wait_job
from tests.console.console_helpers import connected, listed, until
from tests.fleet.conftest import member_config
from tests.harness import DaemonProcess, run_sai


async def _job_on_a(make_daemon: DaemonFactory, client_of: Any, url: str, key: str) -> tuple[Any, Any, str]:
    """Boxes a and b of one fleet, and a job submitted on b that box a ran."""
    a = make_daemon(member_config(url, "box-a", key))
    b = make_daemon(member_config(url, "box-b", key))
    client_b = await client_of(b)
    await client_b.call("queue.pause")  # so box-a runs it
    job_id = (await client_b.call("job.submit", prompt="a lighthouse on box a"))["job_id"]
    job = await wait_job(client_b, job_id)
    assert (job["state"], job["box"]) == ("succeeded", "box-a"), job
    return a, b, job_id


def _client_config(tmp_path: Path, sockets: dict[str, Path | str]) -> str:
    path = tmp_path / "client.toml"
    table = ", ".join(f"{json.dumps(box)} = {json.dumps(str(sock))}" for box, sock in sockets.items())
    path.write_text(f"[fleet]\nsockets = {{ {table} }}\n")
    return str(path)


async def test_output_calls_on_another_box_name_the_box_that_holds_them(make_daemon: DaemonFactory, client_of: Any,
                                                                       fleet_url: str, prompt_key_file: str) -> None:
    a, b, job_id = await _job_on_a(make_daemon, client_of, fleet_url, prompt_key_file)
    client_a, client_b = await client_of(a), await client_of(b)
    for method, params in (("output.export", {}), ("output.preview", {}), ("output.verify", {"index": 0})):
        with pytest.raises(RpcError) as refused:
            await client_b.call(method, job_id=job_id, **params)
        assert refused.value.code == UNAVAILABLE, (method, refused.value.message)
        assert refused.value.data == {"reason": "elsewhere", "job_id": job_id, "box": "box-a",
                                      "reach": "ssh ops@box-a", "socket": str(a.socket)}, method
        message = refused.value.message
        assert "box 'box-a'" in message and "reach it with: ssh ops@box-a" in message, message
        assert "[fleet] sockets" in message and "no such file" not in message.lower(), message
    assert (await client_a.call("output.verify", job_id=job_id))["ok"] is True  # the box that holds them answers

    a.terminate()  # an orderly stop leaves the registry: how to reach it is no longer known
    with pytest.raises(RpcError) as refused:
        await client_b.call("output.export", job_id=job_id)
    assert refused.value.code == UNAVAILABLE and refused.value.data["reach"] is None
    assert "not in the fleet's registry now" in refused.value.message, refused.value.message


async def test_sai_export_follows_the_client_configs_socket(make_daemon: DaemonFactory, client_of: Any,
                                                            fleet_url: str, prompt_key_file: str,
                                                            tmp_path: Path) -> None:
    a, b, job_id = await _job_on_a(make_daemon, client_of, fleet_url, prompt_key_file)
    client_a = await client_of(a)
    # without a mapping: the refusal, with the reach, and the unavailable exit status; nothing written
    unmapped = tmp_path / "unmapped.png"
    out = run_sai("export", job_id, "-o", str(unmapped), "--json", socket_path=b.socket)
    assert out.returncode == ExitCode.UNAVAILABLE, out.stderr
    assert "box 'box-a'" in out.stderr and "ssh ops@box-a" in out.stderr, out.stderr
    error = json.loads(out.stdout)["error"]
    assert (error["code"], error["rpc_code"], error["data"]["box"]) == ("unavailable", UNAVAILABLE, "box-a")
    assert not unmapped.exists()

    via_a, via_b = tmp_path / "via-a.png", tmp_path / "via-b.png"
    assert run_sai("export", job_id, "-o", str(via_a), socket_path=a.socket).returncode == 0
    mapped = _client_config(tmp_path, {"box-a": a.socket})
    out = run_sai("--config", mapped, "export", job_id, "-o", str(via_b), socket_path=b.socket)
    assert out.returncode == 0, out.stderr
    assert via_b.read_bytes() == via_a.read_bytes()
    job = await client_a.call("job.get", job_id=job_id)
    assert hashlib.sha256(via_b.read_bytes()).hexdigest() == job["outputs"][0]["png_sha256"]
    verified = run_sai("--config", mapped, "verify", job_id, "--json", socket_path=b.socket)
    assert verified.returncode == 0 and json.loads(verified.stdout)["ok"] is True, verified.stderr
    exports = (await client_a.call("audit.tail", limit=50, subject=job_id))["entries"]
    assert sum(e["action"] == "output.export" for e in exports) == 2  # decrypted and audited on box-a, twice

    down = _client_config(tmp_path, {"box-a": "/tmp/sai-no-such-box.sock"})
    out = run_sai("--config", down, "export", job_id, "-o", str(unmapped), socket_path=b.socket)
    assert out.returncode == ExitCode.UNAVAILABLE, out.stderr
    assert "nothing answers on /tmp/sai-no-such-box.sock" in out.stderr and "SSH forwarding" in out.stderr
    wrong = _client_config(tmp_path, {"box-a": b.socket})  # a mapping that reaches another box
    out = run_sai("--config", wrong, "export", job_id, "-o", str(unmapped), socket_path=b.socket)
    assert out.returncode == ExitCode.UNAVAILABLE and "reaches another box" in out.stderr, out.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[fleet]\nsockets = { "box-a" = "box-a.sock" }\n')
    out = run_sai("--config", str(bad), "export", job_id, "-o", str(unmapped), socket_path=b.socket)
    assert out.returncode == ExitCode.USAGE and "fleet.sockets: box 'box-a': the socket must be an absolute path" \
        in out.stderr, out.stderr
    assert not unmapped.exists()


async def _detail(daemon: DaemonProcess, job_id: str, **kwargs: Any) -> tuple[str, str, dict[int, Any]]:
    """Open the job's detail in a console attached to `daemon`: the preview's note once it is drawn,
    the verification's note and the verification."""
    app = SaiConsole(str(daemon.socket), **kwargs)
    async with app.run_test(size=(120, 40)) as pilot:
        await connected(pilot, app)
        await listed(pilot, app, 1)
        await pilot.press("enter")
        screen = app.screen
        assert isinstance(screen, JobDetailScreen) and screen.job_id == job_id
        note = screen.query_one("#preview-note")
        await until(pilot, lambda: str(note.render()), 60, "the preview or its refusal")
        await until(pilot, lambda: screen.verification or screen.verify_note, 60, "the verification")
        return str(note.render()), screen.verify_note, screen.verification


async def test_the_console_previews_another_boxs_output_through_its_socket(make_daemon: DaemonFactory,
                                                                          client_of: Any, fleet_url: str,
                                                                          prompt_key_file: str) -> None:
    a, b, job_id = await _job_on_a(make_daemon, client_of, fleet_url, prompt_key_file)
    note, verify_note, _ = await _detail(b, job_id)
    assert note.startswith("no preview:") and "box 'box-a'" in note and "ssh ops@box-a" in note, note
    assert "box 'box-a'" in verify_note, verify_note

    note, verify_note, verification = await _detail(b, job_id, fleet_sockets={"box-a": str(a.socket)})
    assert "preview, decrypted in memory" in note, note
    assert verify_note == "" and verification[0]["ok"] is True, verify_note

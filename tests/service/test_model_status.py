"""The models in daemon.status, and their unloads audited when the daemon stops."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.configs import NO_WORKER


async def test_daemon_status_lists_the_configured_models_as_model_list_does(make_daemon: Any, client_of: Any,
                                                                            other_model: Path) -> None:
    daemon = make_daemon({**NO_WORKER, "models": {"other": {"path": str(other_model)}, "tiny-flux": {}}})
    client = await client_of(daemon)
    status = await client.call("daemon.status")
    assert status["models"] == (await client.call("model.list"))["models"]
    assert [(m["name"], m["family"], m["loaded"], m["device"], m["default"]) for m in status["models"]] == [
        ("tiny", "sd15", False, None, True), ("other", "sd15", False, None, False),
        ("tiny-flux", "flux", False, None, False)]


async def test_a_stop_audits_the_unload_of_each_model_the_worker_held(make_daemon: Any, client_of: Any,
                                                                       wait_for: Any, other_model: Path) -> None:
    daemon = make_daemon({"models": {"other": {"path": str(other_model)}}})
    client = await client_of(daemon)
    job = await wait_for(client, (await client.call("job.submit", prompt="a fox", model="other"))["job_id"])
    assert job["state"] == "succeeded"
    held = {m["name"]: m for m in (await client.call("daemon.status"))["models"] if m["loaded"]}
    assert set(held) == {"tiny", "other"} and all(m["device"] == "cpu" for m in held.values())
    await client.close()
    assert daemon.terminate() == 0
    again = make_daemon({**NO_WORKER, "models": {"other": {"path": str(other_model)}}}, state_from=daemon)
    entries = (await (await client_of(again)).call("audit.tail", limit=200))["entries"]
    actions = [e["action"] for e in entries]
    stop = actions.index("daemon.stop")
    unloads = {e["subject"]: e["details"] for e in entries[:stop] if e["action"] == "model.unload"}
    assert set(unloads) == set(held)
    for name, details in unloads.items():
        assert details["weights_sha256"] == held[name]["weights_sha256"] and details["reason"] == "daemon stopping"


async def test_a_stop_audits_one_unload_per_worker_that_held_the_model(make_daemon: Any, client_of: Any,
                                                                        wait_for: Any) -> None:
    daemon = make_daemon({"worker": {"devices": ["cpu", "cpu"]}, "model": {"threads": 2}})
    client = await client_of(daemon)
    ids = [(await client.call("job.submit", prompt=f"fox {i}", width=64, height=64, steps=2))["job_id"]
           for i in range(4)]
    assert [(await wait_for(client, job_id))["state"] for job_id in ids] == ["succeeded"] * 4
    await client.close()
    assert daemon.terminate() == 0
    again = make_daemon(NO_WORKER, state_from=daemon)
    entries = (await (await client_of(again)).call("audit.tail", limit=200))["entries"]
    stop = [e["action"] for e in entries].index("daemon.stop")
    loads = sorted(e["details"]["worker"] for e in entries[:stop] if e["action"] == "model.load")
    unloads = [e["details"] for e in entries[:stop] if e["action"] == "model.unload"]
    assert loads == ["cpu0", "cpu1"]
    assert sorted(d["worker"] for d in unloads) == ["cpu0", "cpu1"]
    assert all(d["reason"] == "daemon stopping" for d in unloads)
    status = (await (await client_of(again)).call("daemon.status"))["models"]
    assert [m["loaded"] for m in status] == [False]

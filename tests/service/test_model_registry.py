"""The model registry through a real daemon: [models.NAME] in config, job.submit's `model`, the
per-model defaults, batching by model, model.list, `sai models`, the job and manifest records,
and the least recently used model unloaded when a small models_memory_mb cannot hold two.

The second model is a real one: a copy of the built tiny model under another name and path."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon import config as config_module
from daemon.protocol import INVALID_PARAMS, RpcError
from daemon.queue.store import SCHEMA, SCHEMA_VERSION, JobStore
from tests.configs import NO_WORKER
from tests.harness import run_sai, to_toml
from tests.models.worker_helpers import build_in_subprocess


def with_other(other: Path, **extra: Any) -> dict[str, dict[str, Any]]:
    return {"models": {"other": {"path": str(other), **extra}}}


async def _refusal(client: Any, **params: Any) -> dict[str, Any]:
    with pytest.raises(RpcError) as caught:
        await client.call("job.submit", **params)
    assert caught.value.code == INVALID_PARAMS
    assert isinstance(caught.value.data, dict)
    return caught.value.data


def _load(tmp_path: Path, text: str) -> config_module.Config:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return config_module.load(path, environ={}, system_file=None)


def test_model_tables_are_held_to_the_settings_schema(tmp_path: Path) -> None:
    good = _load(tmp_path, '[models.other]\npath = "/srv/m"\nfamily = "sdxl"\nsteps = 30\n[models.tiny-flux]\n')
    assert good.values["models"] == {"other": {"path": "/srv/m", "family": "sdxl", "steps": 30}, "tiny-flux": {}}
    cases = {
        '[models.other]\npath = "/srv/m"\nfamily = "sdxxl"\n': ("models.other.family", "must be one of auto"),
        '[models.other]\nfamily = "sdxl"\n': ("models.other.path", "missing"),
        '[models.other]\npath = "/srv/m"\nsteps = 0\n': ("models.other.steps", "greater than 0"),
        '[models.other]\npath = "/srv/m"\nsteps = "many"\n': ("models.other.steps", "must be an integer"),
        '[models.other]\npath = "/srv/m"\nprediction = "sample"\n': ("models.other.prediction",
                                                                 "must be one of auto, epsilon, v_prediction"),
        '[models.other]\npath = "/srv/m"\ndevice = "cuda"\n': ("models.other.device", "unknown key"),
        '[models.tiny]\n': ("models.tiny", "already the default model's name"),
        '[models]\nother = 3\n': ("models.other", "must be a table"),
    }
    for text, (key, reason) in cases.items():
        with pytest.raises(config_module.ConfigError) as caught:
            _load(tmp_path, text)
        assert caught.value.key == key and reason in caught.value.reason, (text, caught.value)
        assert caught.value.source == str(tmp_path / "config.toml")


def test_a_symlink_out_of_a_model_directory_stops_the_daemon_naming_file_and_key(make_daemon: Any,
                                                                                 other_model: Path,
                                                                                 tmp_path: Path) -> None:
    escaping = tmp_path / "escaping"
    shutil.copytree(other_model, escaping)
    outside = tmp_path / "elsewhere.safetensors"
    (escaping / "unet" / "diffusion_pytorch_model.safetensors").rename(outside)
    (escaping / "unet" / "diffusion_pytorch_model.safetensors").symlink_to(outside)
    for path, reason in ((escaping, f"is a symlink to {outside}, outside"), (tmp_path / "nowhere", "does not exist")):
        daemon = make_daemon({**NO_WORKER, **with_other(path)}, start=False)
        out = run_sai("daemon", "--socket", str(daemon.socket), "--state-dir", str(daemon.state_dir),
                      "--config", str(daemon.config_file), timeout=120)
        assert out.returncode != 0
        assert f"{daemon.config_file}: models.other.path: " in out.stderr and reason in out.stderr, out.stderr
        assert "Traceback" not in out.stderr


async def test_submit_names_a_model_and_gets_its_defaults(make_daemon: Any, client_of: Any, other_model: Path) -> None:
    daemon = make_daemon({**NO_WORKER, **with_other(other_model, width=96, steps=3, guidance=2.0)})
    client = await client_of(daemon)
    refused = await _refusal(client, prompt="a fox", model="nope")
    assert refused["field"] == "model" and "tiny, other" in refused["reason"]
    submitted = await client.call("job.submit", prompt="a fox", model="other")
    own = await client.call("job.get", job_id=submitted["job_id"])
    assert own["model"] == "other"
    assert {k: own["params"][k] for k in ("model", "width", "height", "steps", "guidance")} == {
        "model": "other", "width": 96, "height": 64, "steps": 3, "guidance": 2.0}
    given = await client.call("job.submit", prompt="a fox", model="other", steps=5, width=64)
    assert (await client.call("job.get", job_id=given["job_id"]))["params"]["steps"] == 5
    default = await client.call("job.get", job_id=(await client.call("job.submit", prompt="a fox"))["job_id"])
    assert default["model"] == "tiny" and default["params"]["steps"] == 4 and default["params"]["width"] == 64
    entries = (await client.call("audit.tail", limit=50))["entries"]
    submits = [e for e in entries if e["action"] == "job.submit"]
    assert [e["details"]["model"] for e in submits] == ["other", "other", "tiny"]
    refusal = next(e for e in entries if e["action"] == "job.refuse")
    assert "nope" in refusal["details"]["reason"]


async def test_a_family_limit_is_a_clear_invalid_params(make_daemon: Any, client_of: Any) -> None:
    daemon = make_daemon({**NO_WORKER, "models": {"tiny-flux": {}}})
    client = await client_of(daemon)
    negative = await _refusal(client, prompt="a fox", model="tiny-flux", negative_prompt="blur")
    assert negative["field"] == "negative_prompt" and "negative prompt" in negative["reason"]
    size = await _refusal(client, prompt="a fox", model="tiny-flux", width=72)
    assert size["field"] == "width" and "multiple of 16" in size["reason"]
    await client.call("job.submit", prompt="a fox", width=72, negative_prompt="blur")  # the default (sd15) takes both


async def test_jobs_of_two_models_never_share_a_batch(make_daemon: Any, client_of: Any, wait_for: Any,
                                                    other_model: Path) -> None:
    daemon = make_daemon({**NO_WORKER, **with_other(other_model), "queue": {"start_paused": True, "max_batch": 8}})
    client = await client_of(daemon)
    jobs = {}
    for n in range(6):
        model = ("tiny", "other")[n % 2]
        jobs[(await client.call("job.submit", prompt=f"a fox {n}", model=model))["job_id"]] = model
    await client.call("queue.resume")
    for job_id in jobs:
        assert (await wait_for(client, job_id))["state"] == "succeeded"
    starts = [e for e in (await client.call("audit.tail", limit=200))["entries"] if e["action"] == "job.start"]
    batches = {tuple(e["details"]["batch"]) for e in starts}
    assert all(len({jobs[j] for j in batch}) == 1 for batch in batches), batches
    assert any(len(batch) > 1 for batch in batches), "same-model jobs should still share a batch"


async def test_prediction_in_config_reaches_the_models_scheduler_and_the_audit(make_daemon: Any, client_of: Any,
                                                                               wait_for: Any, other_model: Path) -> None:
    """Through the real daemon: the default model's (from [model]) and another's (from its table),
    each reported by the worker's load and audited (what it does to the pixels:
    tests/models/test_worker_families.py)."""
    daemon = make_daemon({**with_other(other_model, prediction="v_prediction"), "model": {"prediction": "epsilon"}})
    client = await client_of(daemon)
    jobs = [await wait_for(client, (await client.call("job.submit", prompt="a fox", seed=3, model=name))["job_id"])
            for name in ("tiny", "other")]
    assert [job["state"] for job in jobs] == ["succeeded", "succeeded"]
    loads = {e["subject"]: e["details"] for e in (await client.call("audit.tail", limit=100))["entries"]
             if e["action"] == "model.load"}
    assert loads["tiny"]["prediction"] == "epsilon" and loads["other"]["prediction"] == "v_prediction"
    assert loads["tiny"]["weights_sha256"] == loads["other"]["weights_sha256"]  # the same weights, told otherwise


async def test_model_list_before_and_after_a_load_and_the_records_of_a_job(make_daemon: Any, client_of: Any,
                                                                         wait_for: Any, other_model: Path) -> None:
    daemon = make_daemon({**with_other(other_model, steps=3), "model": {"preload": False}})
    client = await client_of(daemon)
    before = {m["name"]: m for m in (await client.call("model.list"))["models"]}
    assert list(before) == ["tiny", "other"]
    assert before["tiny"]["default"] is True and before["other"]["default"] is False
    for model in before.values():
        assert model["loaded"] is False and model["device"] is None and model["weights_sha256"] is None
        assert model["family"] == "sd15" and model["size_bytes"] > 0
    assert before["other"]["path"] == str(other_model) and before["tiny"]["path"] == ""
    assert before["other"]["defaults"]["steps"] == 3 and before["tiny"]["defaults"]["steps"] == 4
    job = await wait_for(client, (await client.call("job.submit", prompt="a fox"))["job_id"])
    after = {m["name"]: m for m in (await client.call("model.list"))["models"]}
    assert after["tiny"]["loaded"] is True and after["tiny"]["device"] == "cpu"
    digest = after["tiny"]["weights_sha256"]
    assert isinstance(digest, str) and len(digest) == 64
    assert (job["model"], job["model_family"], job["weights_sha256"]) == ("tiny", "sd15", digest)
    manifest = json.loads(Path(job["outputs"][0]["manifest"]).read_text())
    assert (manifest["model_id"], manifest["model_family"], manifest["weights_sha256"]) == ("tiny", "sd15", digest)
    loads = [e for e in (await client.call("audit.tail", limit=100))["entries"] if e["action"] == "model.load"]
    assert [(e["subject"], e["details"]["weights_sha256"]) for e in loads] == [("tiny", digest)]


@pytest.fixture(scope="module")
def schnell_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-flux built, its transformer configured without a guidance embedding, as FLUX.1 [schnell]."""
    target = build_in_subprocess("tiny-flux", tmp_path_factory.mktemp("schnell") / "schnell")
    config = target / "transformer" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "guidance_embeds": False}))
    return target


async def test_guidance_a_model_ignores_is_a_warning_and_sai_models_says_so(make_daemon: Any, client_of: Any,
                                                                          wait_for: Any, schnell_like: Path) -> None:
    daemon = make_daemon({"models": {"schnell": {"path": str(schnell_like)}, "tiny-flux": {}}})
    client = await client_of(daemon)
    listed = {m["name"]: m["guidance"] for m in (await client.call("model.list"))["models"]}
    assert listed == {"tiny": "cfg", "schnell": "none", "tiny-flux": None}  # from the files; tiny-flux not built yet
    small = {"width": 64, "height": 64, "steps": 2}
    replies = {name: await client.call("job.submit", prompt="a fox", model=model, **small, **extra)
               for name, model, extra in (("asked", "schnell", {"guidance": 5.0}), ("not asked", "schnell", {}),
                                          ("embedded", "tiny-flux", {"guidance": 5.0}))}
    assert [w for w in replies["asked"]["warnings"] if "guidance" in w] == [
        "guidance is ignored: model schnell is a distilled Flux without a guidance embedding (like FLUX.1 [schnell])"]
    assert not [w for name in ("not asked", "embedded") for w in replies[name]["warnings"] if "guidance" in w]
    for reply in replies.values():
        assert (await wait_for(client, reply["job_id"]))["state"] == "succeeded"
    listed = {m["name"]: m["guidance"] for m in (await client.call("model.list"))["models"]}
    assert listed == {"tiny": "cfg", "schnell": "none", "tiny-flux": "embedded"}
    piped = run_sai("models", socket_path=daemon.socket)
    defaults = {cells[0]: cells[6] for cells in (line.split("\t") for line in piped.stdout.splitlines())}
    assert "guidance ignored" in defaults["schnell"] and "guidance 7.5" in defaults["tiny-flux"]


async def test_sai_models_prints_the_registry(make_daemon: Any, other_model: Path) -> None:
    daemon = make_daemon({**NO_WORKER, **with_other(other_model, width=96)})
    piped = run_sai("models", socket_path=daemon.socket)
    assert piped.returncode == 0, piped.stderr
    lines = [line.split("\t") for line in piped.stdout.splitlines()]
    assert [cells[:4] for cells in lines] == [["tiny", "sd15", "yes", "no"], ["other", "sd15", "no", "no"]]
    assert lines[1][-1] == str(other_model) and lines[1][6].startswith("96x64 4 steps")
    as_json = run_sai("models", "--json", socket_path=daemon.socket)
    assert [m["name"] for m in json.loads(as_json.stdout)["models"]] == ["tiny", "other"]


async def test_the_least_recently_used_model_is_unloaded_when_two_do_not_fit(make_daemon: Any, client_of: Any,
                                                                             wait_for: Any,
                                                                             other_model: Path) -> None:
    size = sum(f.stat().st_size for f in other_model.rglob("*.safetensors"))
    budget_mb = int(size * 1.5) // 2**20 + 1  # one model fits, two do not
    daemon = make_daemon({**with_other(other_model), "worker": {"models_memory_mb": budget_mb}})
    client = await client_of(daemon)
    first = await wait_for(client, (await client.call("job.submit", prompt="a fox"))["job_id"])
    second = await wait_for(client, (await client.call("job.submit", prompt="a fox", model="other"))["job_id"])
    assert first["state"] == second["state"] == "succeeded"
    models = {m["name"]: m for m in (await client.call("model.list"))["models"]}
    assert models["tiny"]["loaded"] is False and models["other"]["loaded"] is True
    assert second["weights_sha256"] == models["other"]["weights_sha256"]
    entries = (await client.call("audit.tail", limit=200))["entries"]
    changes = [(e["action"], e["subject"], e["details"]["weights_sha256"]) for e in entries
               if e["action"] in ("model.load", "model.unload")]
    assert changes == [("model.load", "tiny", models["tiny"]["weights_sha256"]),
                       ("model.unload", "tiny", models["tiny"]["weights_sha256"]),
                       ("model.load", "other", models["other"]["weights_sha256"])]
    assert "unloading model tiny (least recently used) to make room for other" in daemon.read_log()


async def test_a_model_that_can_never_fit_fails_its_jobs_and_the_queue_goes_on(make_daemon: Any, client_of: Any,
                                                                               wait_for: Any,
                                                                               other_model: Path) -> None:
    size = sum(f.stat().st_size for f in other_model.rglob("*.safetensors"))
    daemon = make_daemon({**with_other(other_model), "worker": {"models_memory_mb": max(1, size // 2**20 - 1)}})
    client = await client_of(daemon)
    too_big = await client.call("job.submit", prompt="a fox", model="other")
    after = await client.call("job.submit", prompt="a fox")
    failed = await wait_for(client, too_big["job_id"])
    assert failed["state"] == "failed"
    assert "model other needs about" in failed["error"] and "worker.models_memory_mb" in failed["error"]
    assert (await wait_for(client, after["job_id"]))["state"] == "succeeded"
    alerts = (await client.call("alerts.list"))["alerts"]
    assert any(a["key"] == "model.fit" and "model other" in a["message"] for a in alerts), alerts


async def test_a_float16_file_is_planned_at_the_float32_it_takes_on_a_cpu(make_daemon: Any, client_of: Any,
                                                                          wait_for: Any, other_model: Path,
                                                                          tmp_path: Path) -> None:
    """Fit-before-load counts a model's weights at the dtype they load in, not its files' size: a
    float16 copy of a model, whose files would fit the budget, loads in float32 on the CPU and
    takes twice that, so it is refused before the worker tries (which on a real box is the kernel
    killing the worker, or the box swapping)."""
    from safetensors.numpy import load_file, save_file

    half = shutil.copytree(other_model, tmp_path / "other-fp16")
    for weights in half.rglob("*.safetensors"):
        save_file({k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in load_file(weights).items()},
                  str(weights))
    size = sum(f.stat().st_size for f in half.rglob("*.safetensors"))
    budget_mb = int(size * 1.5) // 2**20 + 1  # the files fit; their float32 weights do not
    daemon = make_daemon({**with_other(half), "worker": {"models_memory_mb": budget_mb}})
    client = await client_of(daemon)
    failed = await wait_for(client, (await client.call("job.submit", prompt="a fox", model="other"))["job_id"])
    assert failed["state"] == "failed", failed
    needs = int(failed["error"].split("model other needs about ")[1].split(" MiB")[0])
    assert abs(needs - 2 * size / 2**20) <= 0.1 * 2 * size / 2**20, (needs, size)
    assert (await wait_for(client, (await client.call("job.submit", prompt="a fox"))["job_id"]))["state"] == "succeeded"


async def test_a_model_that_fails_to_load_fails_its_job_with_an_alert_naming_it(make_daemon: Any, client_of: Any,
                                                                              wait_for: Any, tmp_path: Path,
                                                                              other_model: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(other_model, broken)
    for weights in (broken / "unet").glob("*.safetensors"):
        weights.unlink()
    client = await client_of(make_daemon({"models": {"broken": {"path": str(broken)}}}))
    failed = await wait_for(client, (await client.call("job.submit", prompt="a fox", model="broken"))["job_id"])
    assert failed["state"] == "failed" and str(broken) in failed["error"]
    alerts = (await client.call("alerts.list", state="active"))["alerts"]
    assert any(a["key"] == "worker.load" and a["severity"] == "critical" and str(broken) in a["message"]
               for a in alerts), alerts
    after = await client.call("job.submit", prompt="a fox")
    assert (await wait_for(client, after["job_id"]))["state"] == "succeeded"


async def test_a_jobs_database_of_schema_1_is_read_and_migrated(tmp_path: Path) -> None:
    added = (",\n    model_family TEXT NOT NULL DEFAULT '',\n    weights_sha256 TEXT NOT NULL DEFAULT '',"
             "\n    worker TEXT NOT NULL DEFAULT '',\n    device TEXT NOT NULL DEFAULT ''")
    old = SCHEMA.replace(added, "")
    assert "model_family" not in old and "worker" not in old
    path = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(old)
        db.execute("INSERT INTO jobs (job_id, state, priority, params, prompt, negative_prompt, user, uid, "
                   "created_at, enqueued_at, model_id) VALUES ('j000000000001', 'succeeded', 1, '{}', "
                   "x'61', x'', 'alice', 1000, 1.0, 1.0, 'tiny')")
        db.execute("PRAGMA user_version=1")
    store = await JobStore.open(path)
    try:
        job = await store.get("j000000000001")
        assert job is not None and job.model_id == "tiny" and job.model_family == job.weights_sha256 == ""
        assert job.worker == job.device == ""
        job.model_family, job.weights_sha256, job.worker, job.device = "sd15", "ab" * 32, "cuda2", "cuda:2"
        await store.save(job)
        again = await store.get("j000000000001")
        assert again is not None and again.weights_sha256 == "ab" * 32
        assert (again.worker, again.device) == ("cuda2", "cuda:2")
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4


def test_to_toml_writes_model_tables() -> None:
    text = to_toml({"models": {"tiny-sdxl": {}, "other": {"path": "/m"}}})
    assert config_module.tomllib.loads(text)["models"] == {"tiny-sdxl": {}, "other": {"path": "/m"}}


async def test_submit_model_events_reach_a_subscriber(make_daemon: Any, client_of: Any, other_model: Path) -> None:
    daemon = make_daemon({**with_other(other_model), "model": {"preload": False}})
    client = await client_of(daemon)
    await client.call("events.subscribe", topics=["queue"])
    await client.call("job.submit", prompt="a fox")
    deadline = asyncio.get_running_loop().time() + 120
    while asyncio.get_running_loop().time() < deadline:
        event = await client.next_event(timeout=120)
        if event["data"].get("kind") == "model.load":
            assert event["data"]["model"]["name"] == "tiny" and event["data"]["model"]["loaded"] is True
            return
    raise AssertionError("no model.load event")


async def test_built_ins_have_their_family_and_limits_from_the_one_table_before_a_build(make_daemon: Any,
                                                                                       client_of: Any) -> None:
    from daemon.models.builders import BUILT_IN as BUILT
    from daemon.models.families import BUILT_IN, SIZE_STEP
    from daemon.models.tiny import FAMILY_BUILDERS

    assert BUILT is BUILT_IN and SIZE_STEP == 8
    assert {name: family for name, (family, _) in FAMILY_BUILDERS.items()}.items() <= BUILT_IN.items()
    extra = [name for name in BUILT_IN if name != "tiny"]
    client = await client_of(make_daemon({**NO_WORKER, "models": {name: {} for name in extra}}))
    listed = {m["name"]: m for m in (await client.call("model.list"))["models"]}
    assert {name: m["family"] for name, m in listed.items()} == BUILT_IN
    assert all(listed[name]["size_bytes"] is None for name in extra)  # none built: the table alone says
    refused = await _refusal(client, prompt="a fox", model="tiny-pixart", width=72)
    assert refused["field"] == "width" and "multiple of 16" in refused["reason"]
    assert (await _refusal(client, prompt="a fox", width=68))["reason"] == "68 is not a multiple of 8"


async def test_a_single_files_family_is_read_from_its_header_before_any_load(make_daemon: Any, client_of: Any,
                                                                           tmp_path: Path) -> None:
    """An `auto` single file's family comes from its tensor names at start, so its family's limits
    hold from the first submit, not only after a worker has loaded it."""
    from tests.models.test_worker_families import write_keys

    sd3 = write_keys(tmp_path / "sd3.5.safetensors",
                     ["model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias"])
    client = await client_of(make_daemon({**NO_WORKER, "models": {"sd35": {"path": str(sd3)}}}))
    listed = {m["name"]: m for m in (await client.call("model.list"))["models"]}
    assert listed["sd35"]["family"] == "sd3" and not listed["sd35"]["loaded"]
    refused = await _refusal(client, prompt="a fox", model="sd35", width=72)
    assert refused["field"] == "width" and "multiple of 16" in refused["reason"]


async def test_a_single_files_size_counts_the_config_dir_weights_it_borrows(make_daemon: Any, client_of: Any,
                                                                            tmp_path: Path, tiny_model: Path) -> None:
    """The memory plan's first estimate of a model (before any load) is its size on disk: a UNet-only
    file loads the config_dir's text encoder and VAE too, so they are counted."""
    from tests.models.test_worker_families import write_keys

    unet_only = write_keys(tmp_path / "unet-only.safetensors", ["model.diffusion_model.input_blocks.0.0.weight"])
    alone = unet_only.stat().st_size
    borrowed = sum(f.stat().st_size for name in ("text_encoder", "vae")
                   for f in (tiny_model / name).glob("*.safetensors"))
    client = await client_of(make_daemon({**NO_WORKER, "models": {
        "unet": {"path": str(unet_only), "config_dir": str(tiny_model)},
        "bare": {"path": str(unet_only)}}}))
    listed = {m["name"]: m for m in (await client.call("model.list"))["models"]}
    assert listed["unet"]["family"] == "sd15" and listed["unet"]["size_bytes"] == alone + borrowed
    assert listed["bare"]["size_bytes"] == alone

"""Every tiny family through the REAL worker process in a namespace with no network (issue 15
points 2-4): load, a 64×64 batch of two prompts, progress, cancel between steps, switching and
unloading models, single-file loads in the original layouts with the shipped config tree (images
equal to the directory form's), and loads that would need the network failing with a clear error
instead of hanging."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tests.models.worker_helpers import TINY_FAMILIES, OfflineWorker, batch, model_fields, write_single_in_subprocess

FAMILY_OF = {"tiny": "sd15", "tiny-sdxl": "sdxl", "tiny-sd3": "sd3", "tiny-flux": "flux", "tiny-pixart": "pixart"}


@pytest.fixture
def worker_for(models_state: Path, built: dict[str, Path]):
    started: list[OfflineWorker] = []

    def start(name: str = "tiny", **spec: str) -> OfflineWorker:
        worker = OfflineWorker({"model": name, "state_dir": str(models_state), **spec})
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_each_family_loads_and_generates_a_batch_of_two_offline(worker_for, name: str) -> None:
    worker = worker_for(name)
    load = worker.until("ready")
    [model_event] = [m for m, _ in load if m["ev"] == "model"]
    assert model_event["action"] == "load" and model_event["name"] == name
    assert model_event["family"] == FAMILY_OF[name] and len(model_event["weights_sha256"]) == 64
    assert model_event["bytes"] > 0 and model_event["device"] == "cpu" and model_event["dtype"] == "float32"
    assert load[-1][0]["family"] == FAMILY_OF[name]
    worker.send(batch(None, ["a red cube", "a blue sphere"], steps=2))
    events = worker.until("done", "failed")
    assert events[-1][0]["ev"] == "done", events[-1]
    progress = [m["step"] for m, _ in events if m["ev"] == "progress"]
    assert progress and progress[-1] == 4 and progress == sorted(progress)
    images = [(m, p) for m, p in events if m["ev"] == "image"]
    assert sorted(m["job_id"] for m, _ in images) == ["j0", "j1"]
    for message, payload in images:
        assert message["shape"] == [64, 64, 3] and payload is not None and len(payload) == 64 * 64 * 3


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_each_family_cancels_between_steps(worker_for, name: str) -> None:
    worker = worker_for(name)
    worker.until("ready")
    worker.send(batch(None, ["slow"], steps=200))
    first, _ = worker.next_event()
    assert first["ev"] == "progress", first
    worker.send({"op": "cancel", "job_ids": ["j0"]})
    events = worker.until("done", "failed")
    done = events[-1][0]
    assert done["ev"] == "done" and done["cancelled"] == ["j0"]
    assert not [m for m, _ in events if m["ev"] == "image"]
    assert max([first["step"]] + [m["step"] for m, _ in events if m["ev"] == "progress"]) < 200


def test_a_batch_names_its_model_which_loads_then_unloads_on_command(worker_for) -> None:
    worker = worker_for("tiny")
    worker.until("ready")
    worker.send(batch(model_fields("tiny-flux"), ["one"], steps=2, size=64))
    events = worker.until("done", "failed")
    loads = [m for m, _ in events if m["ev"] == "model"]
    assert [(m["action"], m["name"], m["family"], m["guidance"]) for m in loads] == \
        [("load", "tiny-flux", "flux", "embedded")]
    assert events[-1][0]["ev"] == "done"
    worker.send(batch(model_fields("tiny-flux"), ["again"], steps=1))  # held: no second load
    assert not [m for m, _ in worker.until("done") if m["ev"] == "model"]
    worker.send({"op": "unload", "name": "tiny-flux"})
    worker.send(batch(None, ["default model still here"], steps=1))
    events = worker.until("done")
    [unload] = [m for m, _ in events if m["ev"] == "model"]
    assert unload["action"] == "unload" and unload["name"] == "tiny-flux" and unload["bytes"] > 0


@pytest.mark.parametrize("name", ["tiny", "tiny-sdxl", "tiny-sd3"])
def test_a_single_file_in_the_original_layout_makes_the_directorys_images(
        worker_for, built: dict[str, Path], tmp_path: Path, name: str) -> None:
    """The tiny model written as one file in its family's original layout (LDM, SDXL's with OpenCLIP,
    SD3's MMDiT) loads with the shipped config tree and, seed for seed, paints what its diffusers
    directory paints: a key put in the wrong place would load and make other pixels."""
    family = FAMILY_OF[name]
    single = write_single_in_subprocess(family, built[name], tmp_path / f"{name}-original.safetensors")
    worker = worker_for(name)
    worker.until("ready")
    prompts = ["from one file", "and another"]
    worker.send(batch(None, prompts, steps=2))
    from_directory = images_by_job(worker.until("done", "failed"))
    worker.send(batch(model_fields(f"{name}-file", str(single)), prompts, steps=2))
    events = worker.until("done", "failed")
    assert events[-1][0]["ev"] == "done", events[-1]
    [load] = [m for m, _ in events if m["ev"] == "model"]
    assert load["family"] == family and load["path"] == str(single)
    from_file = images_by_job(events)
    assert sorted(from_file) == sorted(from_directory) == ["j0", "j1"]
    for job, pixels in from_file.items():
        worst = max(abs(a - b) for a, b in zip(pixels, from_directory[job], strict=True))
        assert worst <= 1, f"{name} {job}: the single file's image differs from the directory's by up to {worst}/255"


def images_by_job(events: list[tuple[dict[str, Any], bytes | None]]) -> dict[str, bytes]:
    return {m["job_id"]: p for m, p in events if m["ev"] == "image" and p is not None}


def test_a_single_file_without_a_config_tree_fails_clearly_offline(worker_for, tmp_path: Path) -> None:
    """PixArt has no shipped tree: without config_dir diffusers would go to the hub; here it is a
    clear load failure naming the file, and no hang."""
    fake = tmp_path / "pixart-sigma.safetensors"
    write_keys(fake, ["y_embedder.y_proj.fc1.weight", "blocks.0.cross_attn.q_linear.weight"])
    worker = worker_for("tiny")
    worker.until("ready")
    worker.send(batch(model_fields("pixart-file", str(fake)), ["x"]))
    failed = worker.until("failed", "done", timeout=60)[-1][0]
    assert failed["ev"] == "failed" and failed["kind"] == "load"
    assert str(fake) in failed["error"] and "config_dir" in failed["error"]


def test_a_model_index_naming_a_component_it_lacks_fails_clearly_offline(
        worker_for, built: dict[str, Path], tmp_path: Path) -> None:
    model = tmp_path / "hub-sdxl"
    model.mkdir()
    index = json.loads((built["tiny-sdxl"] / "model_index.json").read_text())
    (model / "model_index.json").write_text(json.dumps(index))  # no component folders: all on the hub
    worker = worker_for("tiny")
    worker.until("ready")
    worker.send(batch(model_fields("hub", str(model)), ["x"]))
    failed = worker.until("failed", "done", timeout=60)[-1][0]
    assert failed["ev"] == "failed" and failed["kind"] == "load"
    assert "network" in failed["error"] and str(model) in failed["error"]


def write_keys(path: Path, keys: list[str]) -> Path:
    """A real .safetensors file holding 1-element tensors under `keys` (written without torch)."""
    header: dict[str, object] = {key: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
                                 for i, key in enumerate(keys)}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * (4 * len(keys)))
    return path


def test_a_file_marked_v_pred_is_v_prediction_unless_the_config_says_otherwise(
        worker_for, built: dict[str, Path], tmp_path: Path) -> None:
    """SDXL v-prediction fine-tunes carry an empty `v_pred` tensor (`ztsnr` too when trained with zero
    terminal SNR), and an SD 2.x 512 file has the 768 v model's shapes: read as marked, `prediction`
    in the config overrides. Same weights, so epsilon named in the config paints the plain file's pixels."""
    plain = write_single_in_subprocess("sd15", built["tiny"], tmp_path / "plain.safetensors")
    weights = load_file(plain)
    marked, zero_snr = tmp_path / "v-pred.safetensors", tmp_path / "v-pred-ztsnr.safetensors"
    save_file({**weights, "v_pred": np.zeros(0, np.float32)}, str(marked))
    save_file({**weights, "v_pred": np.zeros(0, np.float32), "ztsnr": np.zeros(0, np.float32)}, str(zero_snr))
    worker = worker_for("tiny")
    worker.until("ready")
    runs = {"plain": (plain, "auto"), "marked": (marked, "auto"), "told epsilon": (marked, "epsilon"),
            "zero snr": (zero_snr, "auto")}
    images, predictions = {}, {}
    for name, (path, prediction) in runs.items():
        worker.send(batch({**model_fields(name, str(path)), "prediction": prediction}, ["a brass key"], steps=2))
        events = worker.until("done", "failed")
        assert events[-1][0]["ev"] == "done", events[-1][0]
        [load] = [m for m, _ in events if m["ev"] == "model"]
        predictions[name] = load["prediction"]
        [images[name]] = [p for m, p in events if m["ev"] == "image"]
    assert predictions == {"plain": "epsilon", "marked": "v_prediction", "told epsilon": "epsilon",
                           "zero snr": "v_prediction"}
    assert images["told epsilon"] == images["plain"]
    assert images["marked"] != images["plain"] and images["zero snr"] != images["marked"]


def test_prediction_on_a_transformer_family_fails_its_load_naming_the_key(worker_for) -> None:
    worker = worker_for("tiny")
    worker.until("ready")
    worker.send(batch({**model_fields("tiny-flux"), "prediction": "v_prediction"}, ["x"], steps=1))
    failed = worker.until("failed", "done")[-1][0]
    assert failed["ev"] == "failed" and failed["kind"] == "load"
    assert "prediction = 'v_prediction' is for UNet models (sd15, sd2, sdxl)" in failed["error"]
    worker.send(batch(model_fields("tiny-flux"), ["without it"], steps=1))
    assert worker.until("failed", "done")[-1][0]["ev"] == "done"

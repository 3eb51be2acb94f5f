"""The GPU performance path (issue 16 point 5), as far as a CPU can show it: the `[performance]`
settings are checked with the key named; the dtype and plan per family and device; the real
worker (offline) loads with SDPA attention and today's CPU path by default, warms up when told and
says so, and compiles its denoiser once per shape and reuses it.

torch.compile runs here with the `eager` backend: real dynamo tracing, guards and graph counts
(what the once-per-shape bookkeeping reads), without inductor's code generation, which takes
40-75 s per shape of the tiny UNet on this 2-core machine. CUDA effects are bench/gpu_check.py's.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from daemon import config
from daemon.models.families import FAMILY_NAMES
from daemon.models.performance import FAST_ATTENTION, Settings, choose_dtype, plan
from tests.models.worker_helpers import OfflineWorker, batch

CUDA_DTYPES = {"sd15": "float16", "sd2": "float16", "sdxl": "float16", "pixart": "float16",
               "sd3": "bfloat16", "flux": "bfloat16"}


@pytest.mark.parametrize("key, value, words", [
    ("warmup", "sometimes", "must be one of cuda, always, never"),
    ("channels_last", "yes", "must be one of cuda, always, never"),
    ("compile_backend", "tensorrt", "must be one of inductor, aot_eager, eager"),
    ("compile_max_shapes", 0, "must be between 1 and 64"),
    ("warmup_steps", 51, "must be between 1 and 50"),
    ("vae_tiling_above_pixels", 0, "must be greater than 0"),
    ("compile_models", "tiny", "must be a list"),
    ("compile_models", ["tiny", "nope"], "'nope' is not a configured model; known: tiny"),
])
def test_bad_performance_settings_stop_start_up_naming_the_key(key: str, value: object, words: str) -> None:
    with pytest.raises(config.ConfigError) as err:
        config.defaults().replace(**{f"performance__{key}": value})
    assert err.value.key == f"performance.{key}" and words in err.value.reason


def test_a_compile_model_may_be_an_extra_model() -> None:
    cfg = config.defaults().replace(models__extra={"path": "/srv/m"}, performance__compile_models=["extra", "tiny"])
    assert cfg.performance.compile_models == ["extra", "tiny"]


@pytest.mark.parametrize("fields, words", [
    ({"warmup": "sometimes"}, "performance.warmup: must be one of cuda, always, never"),
    ({"warmup_steps": "2"}, "performance.warmup_steps: must be int"),
    ({"fast": True}, "performance.fast: unknown setting"),
])
def test_the_worker_side_reading_of_the_settings_names_the_key(fields: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        Settings.from_spec(fields)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_dtype_per_family_and_device(family: str) -> None:
    assert choose_dtype("auto", family, "cuda") == CUDA_DTYPES[family]
    assert choose_dtype("auto", family, "cpu") == "float32"
    assert choose_dtype("bfloat16", family, "cpu") == "bfloat16"
    assert choose_dtype("float32", family, "cuda") == "float32"


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_default_plan_speeds_up_cuda_and_keeps_the_cpu_path(family: str) -> None:
    defaults = Settings.from_spec()
    on_cpu, on_cuda = plan(defaults, "m", family, "cpu"), plan(defaults, "m", family, "cuda")
    assert (on_cpu.dtype, on_cpu.channels_last, on_cpu.warmup, on_cpu.compile) == ("float32", (), False, False)
    convolutional = ("unet", "vae") if family in ("sd15", "sd2", "sdxl") else ("vae",)
    assert (on_cuda.dtype, on_cuda.channels_last, on_cuda.warmup, on_cuda.compile) == \
        (CUDA_DTYPES[family], convolutional, True, False)
    told = Settings.from_spec({"channels_last": "never", "warmup": "always", "compile_models": ["m"]})
    assert plan(told, "m", family, "cuda").channels_last == () and plan(told, "m", family, "cpu").warmup
    assert plan(told, "m", family, "cpu").compile and not plan(told, "other", family, "cpu").compile


@pytest.fixture
def start(models_state: Path):
    started: list[OfflineWorker] = []

    def run(performance: dict[str, Any] | None = None, size: int = 64, wrapper: str = "") -> OfflineWorker:
        spec: dict[str, Any] = {"model": "tiny", "state_dir": str(models_state), "pipeline_wrapper": wrapper,
                                "warmup": {"width": size, "height": size, "guidance": 3.0}}
        if performance is not None:
            spec["performance"] = performance
        worker = OfflineWorker(spec)
        started.append(worker)
        return worker

    yield run
    for worker in started:
        worker.close()


def _models(events: list[tuple[dict[str, Any], bytes | None]], action: str) -> list[dict[str, Any]]:
    return [m for m, _ in events if m["ev"] == "model" and m["action"] == action]


def test_a_real_cpu_load_keeps_fp32_runs_sdpa_and_does_not_warm_up(start) -> None:
    worker = start()
    loaded = worker.until("ready")
    [event] = _models(loaded, "load")
    assert event["dtype"] == "float32" and event["device"] == "cpu"
    assert event["attention"] and set(event["attention"]) <= set(FAST_ATTENTION)
    assert event["channels_last"] == [] and event["warmup"] is False and event["compile"] is False
    assert "warmup_seconds" not in event and not _models(loaded, "compile")
    worker.send(batch(None, ["a red cube"]))
    assert worker.until("done", "failed")[-1][0]["ev"] == "done"


def test_warm_up_runs_at_load_and_is_reported(start) -> None:
    worker = start({"warmup": "always", "warmup_steps": 1})
    loaded = worker.until("ready")
    [event] = _models(loaded, "load")
    assert event["warmup"] is True and event["warmup_seconds"] > 0
    assert not [m for m, _ in loaded if m["ev"] in ("progress", "image")], "the warm-up is not a job"
    worker.send(batch(None, ["a red cube"]))
    assert worker.until("done", "failed")[-1][0]["ev"] == "done"
    assert "worker: warmed up tiny on cpu" in worker.stderr()


def test_a_failed_warm_up_costs_speed_not_the_load(start) -> None:
    worker = start({"warmup": "always", "warmup_steps": 1},
                   wrapper="tests.models.failing_first_call:FailsFirstCallForTests")
    [event] = _models(worker.until("ready"), "load")
    assert "MemoryError" in event["warmup_error"] and "warmup_seconds" not in event
    worker.send(batch(None, ["a red cube"]))
    assert worker.until("done", "failed")[-1][0]["ev"] == "done"
    assert "worker: warm-up of tiny failed, jobs run without it" in worker.stderr()


def test_warm_up_skips_a_size_the_family_cannot_take(start) -> None:
    worker = start({"warmup": "always"}, size=100)
    [event] = _models(worker.until("ready"), "load")
    assert "warmup_seconds" not in event
    assert "no warm-up for tiny: 100x100 is not a multiple of 8" in worker.stderr()


def test_a_bad_performance_spec_fails_the_load_naming_the_key(start) -> None:
    worker = start({"warmup": "sometimes"})
    [(failed, _)] = worker.until("load_failed")[-1:]
    assert "performance.warmup: must be one of cuda, always, never" in failed["error"]


def test_compile_happens_once_per_shape_and_is_reused(start) -> None:
    worker = start({"warmup": "always", "warmup_steps": 1, "compile_models": ["tiny"], "compile_backend": "eager"})
    loaded = worker.until("ready")
    [compiled] = _models(loaded, "compile")  # the warm-up compiled the default shape
    assert compiled["shape"] == {"images": 1, "width": 64, "height": 64, "guidance": True}
    assert compiled["graphs"] > 0 and compiled["recompiled"] is False
    assert _models(loaded, "load")[0]["compile"] == {"backend": "eager", "mode": "default"}
    seen = []
    for size, prompts in ((64, ["a"]), (128, ["b"]), (64, ["c"]), (128, ["d"]), (64, ["e", "f"])):
        worker.send(batch(None, prompts, size=size, steps=1))
        events = worker.until("done", "failed")
        assert events[-1][0]["ev"] == "done", events[-1]
        seen.append([(m["shape"]["images"], m["shape"]["width"], m["recompiled"]) for m in _models(events, "compile")])
    assert seen == [[], [(1, 128, False)], [], [], [(2, 64, False)]]
    log = worker.stderr()
    assert "compiled tiny for 1×128×128 with guidance" in log and "recompiled" not in log


def test_sdpa_replaces_the_classic_processor_and_the_vae_slices_and_tiles_per_call(models_state: Path) -> None:
    """In a child (the test process never imports torch), on the real tiny pipeline."""
    script = textwrap.dedent("""
        import sys
        from pathlib import Path
        import diffusers
        from diffusers.models.attention_processor import AttnProcessor
        from daemon.models.builders import build
        from daemon.models.performance import Settings, plan
        from daemon.worker.speed import use_sdpa, vae_for_call
        path = build("tiny", Path(sys.argv[1]) / "models" / "tiny")
        pipe = diffusers.DiffusionPipeline.from_pretrained(str(path), local_files_only=True)
        pipe.unet.set_attn_processor(AttnProcessor())
        print("unet", use_sdpa(pipe.unet))
        chosen = plan(Settings.from_spec({"vae_slicing_above_batch": 2, "vae_tiling_above_pixels": 65536}),
                      "tiny", "sd15", "cpu")
        for images, side in ((2, 256), (3, 256), (1, 512), (1, 64)):
            print(images, side, vae_for_call(pipe, chosen, images, side * side),
                  pipe.vae.use_slicing, pipe.vae.use_tiling)
    """)
    out = subprocess.run([sys.executable, "-c", script, str(models_state)], capture_output=True, text=True,
                         timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0] == "unet ['AttnProcessor2_0']"
    assert lines[1:] == ["2 256 (False, False) False False", "3 256 (True, False) True False",
                         "1 512 (False, True) False True", "1 64 (False, False) False False"]

"""job.submit's token warnings come from the job's own model: its family's text encoders and
limits (CLIP 77; T5 256 for SD3, 512 for Flux, 300 for PixArt-Σ), counted with that model's own
tokenizers (the built-in tiny models' local ones under their model directory), through a real
daemon with the built models in its state dir."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer

from daemon.models.loading import weights_sha256
from tests.configs import NO_WORKER
from tests.models.worker_helpers import build_in_subprocess, write_single_in_subprocess

BUILT = ("tiny-flux", "tiny-pixart")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("token-models")
    return {name: build_in_subprocess(name, root / name) for name in BUILT}


def count(model: Path, folder: str, text: str) -> int:
    return len(Tokenizer.from_file(str(model / folder / "tokenizer.json")).encode(text).ids)


def limits(warnings: list[str]) -> dict[str, tuple[int, int]]:
    """{"CLIP"/"T5": (tokens counted, tokens the encoder reads)} from a submit's warnings."""
    found = {}
    for warning in warnings:
        match = re.fullmatch(r"prompt is (\d+) (CLIP|T5) tokens; the .* text encoder reads the first (\d+), "
                             r"the rest is ignored", warning)
        if match:
            found[match[2]] = (int(match[1]), int(match[3]))
    return found


async def test_each_job_is_warned_with_its_own_models_encoders_and_tokenizers(make_daemon: Any, client_of: Any,
                                                                             built: dict[str, Path],
                                                                             tiny_model: Path) -> None:
    daemon = make_daemon({**NO_WORKER, "models": {name: {} for name in BUILT}}, start=False)
    for name, files in built.items():
        (daemon.state_dir / "models" / name).symlink_to(files)
    client = await client_of(daemon.start())
    flux, pixart = built["tiny-flux"], built["tiny-pixart"]
    medium = " ".join(["a red fox in the snow"] * 16)  # over CLIP's 77 and PixArt's 300, under Flux's T5 512
    long = " ".join(["a red fox in the snow"] * 30)  # over Flux's T5 512 too

    async def warned(prompt: str, **params: Any) -> dict[str, tuple[int, int]]:
        reply = await client.call("job.submit", prompt=prompt, **params)
        return limits(reply["warnings"])

    assert await warned(medium) == {"CLIP": (count(tiny_model, "tokenizer", medium), 77)}
    assert await warned(medium, model="tiny-flux", width=64, height=64) == {
        "CLIP": (count(flux, "tokenizer", medium), 77)}
    assert await warned(long, model="tiny-flux") == {"CLIP": (count(flux, "tokenizer", long), 77),
                                                     "T5": (count(flux, "tokenizer_2", long), 512)}
    assert await warned(medium, model="tiny-pixart") == {"T5": (count(pixart, "tokenizer", medium), 300)}
    assert await warned("a red fox", model="tiny-pixart") == {}
    assert count(flux, "tokenizer_2", long) != count(flux, "tokenizer", long)  # two tokenizers, really


async def test_a_model_without_a_tokenizer_json_is_warned_with_an_estimate(make_daemon: Any, client_of: Any,
                                                                           other_model: Path, tmp_path: Path) -> None:
    slow = tmp_path / "slow"
    shutil.copytree(other_model, slow)
    (slow / "tokenizer" / "tokenizer.json").unlink()
    daemon = make_daemon({**NO_WORKER, "models": {"slow": {"path": str(slow)}}})
    client = await client_of(daemon)
    prompt = " ".join(["a red fox in the snow"] * 16)  # 96 words
    reply = await client.call("job.submit", prompt=prompt, model="slow")
    assert f"prompt is about {math.ceil(96 * 1.3) + 2} CLIP tokens" in reply["warnings"][0]
    assert "model slow: no CLIP tokenizer in" in daemon.read_log()
    exact = await client.call("job.submit", prompt=prompt)  # the default model keeps its own, exact
    assert limits(exact["warnings"]) == {"CLIP": (count(other_model, "tokenizer", prompt), 77)}


async def test_a_single_file_is_counted_with_the_shipped_tree_it_loads_with(make_daemon: Any, client_of: Any,
                                                                          tmp_path: Path) -> None:
    """An SD3 Medium file with its CLIPs and no T5 (shapes as published, sparse zeros): counted with
    the shipped `sd3` tree's CLIP tokenizer, exactly, and never warned about T5, which it runs without."""
    from daemon.models.shipped import CONFIGS
    from tests.models.sparse_checkpoint import write_shapes

    width = 1536
    sd3 = write_shapes(tmp_path / "sd3_medium_incl_clips.safetensors", {
        "model.diffusion_model.x_embedder.proj.weight": (width, 16, 2, 2),
        "model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias": (6 * width,),
        "model.diffusion_model.joint_blocks.23.x_block.attn.qkv.weight": (3 * width, width),
        "first_stage_model.encoder.conv_in.weight": (128, 3, 3, 3),
        "text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
        "text_encoders.clip_g.transformer.text_model.embeddings.token_embedding.weight": (49408, 1280)})
    client = await client_of(make_daemon({**NO_WORKER, "models": {"sd3": {"path": str(sd3)}}}))
    prompt = " ".join(["a red fox in the snow"] * 50)  # 300 words: over CLIP's 77 and T5's 256
    reply = await client.call("job.submit", prompt=prompt, model="sd3")
    assert limits(reply["warnings"]) == {"CLIP": (count(CONFIGS / "sd3", "tokenizer", prompt), 77)}
    assert not any("about" in warning for warning in reply["warnings"]), reply["warnings"]


async def test_a_pixart_single_file_through_the_daemon_borrows_counts_and_runs(make_daemon: Any, client_of: Any,
                                                                               wait_for: Any, built: dict[str, Path],
                                                                               tmp_path: Path) -> None:
    """A PixArt-Σ transformer file with a config_dir: its family read from the header before any
    load, its size with the T5 and VAE it borrows, T5 counted exactly with the config_dir's
    tokenizer, and a job whose weights hash covers the file and the borrowed weights."""
    pixart = built["tiny-pixart"]
    single = write_single_in_subprocess("pixart", pixart, tmp_path / "pixart-ft.safetensors")
    parts = {name: pixart / name for name in ("text_encoder", "vae")}
    client = await client_of(make_daemon({"models": {"pixart-ft": {"path": str(single), "config_dir": str(pixart)}}}))
    [entry] = [m for m in (await client.call("model.list"))["models"] if m["name"] == "pixart-ft"]
    borrowed = sum(f.stat().st_size for folder in parts.values() for f in folder.glob("*.safetensors"))
    assert entry["family"] == "pixart" and entry["size_bytes"] == single.stat().st_size + borrowed
    assert entry["negative_prompt"] is True and entry["size_multiple"] == 16 and entry["guidance"] == "cfg"
    medium = " ".join(["a red fox in the snow"] * 16)
    reply = await client.call("job.submit", prompt=medium, model="pixart-ft", width=64, height=64, steps=2)
    assert limits(reply["warnings"]) == {"T5": (count(pixart, "tokenizer", medium), 300)}
    job = await wait_for(client, reply["job_id"])
    assert job["state"] == "succeeded", job["error"]
    assert job["model_family"] == "pixart" and job["weights_sha256"] == weights_sha256(single, parts)

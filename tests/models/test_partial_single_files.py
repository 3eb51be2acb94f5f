"""Single files that carry the denoiser alone load offline with a config_dir whose own weights
supply what the file lacks: text encoders, VAE (issue 15 point 3).

A Flux checkpoint as Black Forest Labs publish it is the transformer alone. Its stand-in is FLUX.1's width (3072: diffusers' converter of BFL's layout assumes it, so a tiny
Flux cannot stand in) with one block of each kind, zeros, sparse on disk
(tests.models.sparse_checkpoint.write_flux_width); the config_dir is the built tiny-flux with that
transformer's config. Loads run in the real worker under `unshare -n`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.numpy import load_file, save_file

from daemon.models.detect import detect
from daemon.models.errors import ModelError
from daemon.models.loading import weights_sha256
from daemon.models.shipped import borrowed_parts, choose, header_shapes
from tests.models.worker_helpers import OfflineWorker, batch, model_fields, write_single_in_subprocess

BORROWED = ("text_encoder", "text_encoder_2", "vae")


@pytest.fixture(scope="module")
def flux_width(tmp_path_factory: pytest.TempPathFactory, built: dict[str, Path]) -> tuple[Path, Path]:
    """(the transformer-only file, its config_dir)."""
    out = tmp_path_factory.mktemp("flux-width")
    file, config_dir = out / "flux1-width.safetensors", out / "config"
    subprocess.run([sys.executable, "-m", "tests.models.sparse_checkpoint", "flux-width", str(built["tiny-flux"]),
                    str(config_dir), str(file)], check=True, capture_output=True, timeout=300)
    return file, config_dir


def flux_model(file: Path, config_dir: Path) -> dict[str, str]:
    return {**model_fields("flux-dev", str(file), config_dir=str(config_dir)), "dtype": "bfloat16"}


def test_a_transformer_only_flux_file_borrows_encoders_and_vae_and_hashes_them(
        worker: OfflineWorker, flux_width: tuple[Path, Path]) -> None:
    file, config_dir = flux_width
    worker.send(batch(flux_model(file, config_dir), ["a lighthouse at dusk"], steps=1))
    events = worker.until("done", "failed", timeout=600)
    assert events[-1][0]["ev"] == "done", events[-1][0]
    [load] = [m for m, _ in events if m["ev"] == "model"]
    assert load["family"] == "flux" and load["path"] == str(file)
    assert load["weights_sha256"] == weights_sha256(file, {name: config_dir / name for name in BORROWED})
    assert load["weights_sha256"] != weights_sha256(file)  # the borrowed weights are part of what made the image
    [image] = [p for m, p in events if m["ev"] == "image"]
    assert image is not None and len(image) == 64 * 64 * 3


def test_a_config_dir_without_the_missing_weights_is_named(worker: OfflineWorker, flux_width: tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    file, config_dir = flux_width
    bare = shutil.copytree(config_dir, tmp_path / "config")
    for weights in (bare / "text_encoder_2").glob("*.safetensors"):
        weights.unlink()
    worker.send(batch(flux_model(file, bare), ["a lighthouse at dusk"], steps=1))
    [(failed, _)] = [event for event in worker.until("done", "failed") if event[0]["ev"] == "failed"]
    assert failed["kind"] == "load"
    assert f"{file}: the file has no weights for text_encoder_2, and config_dir {bare} has no" in failed["error"]


def test_a_unet_only_file_makes_the_images_of_the_whole_file(worker: OfflineWorker, built: dict[str, Path],
                                                               tmp_path: Path) -> None:
    whole = write_single_in_subprocess("sd15", built["tiny"], tmp_path / "whole.safetensors")
    unet_only = tmp_path / "unet-only.safetensors"
    save_file({k: v for k, v in load_file(whole).items() if k.startswith("model.diffusion_model.")}, str(unet_only))
    images = []
    for name, path, config_dir in (("whole", whole, ""), ("unet-only", unet_only, str(built["tiny"]))):
        worker.send(batch(model_fields(name, str(path), config_dir=config_dir), ["a red fox"], steps=2))
        events = worker.until("done", "failed")
        assert events[-1][0]["ev"] == "done", events[-1][0]
        images += [p for m, p in events if m["ev"] == "image"]
    assert len(images) == 2 and images[0] == images[1]


def test_a_borrowed_part_loads_only_as_a_diffusers_or_transformers_class(
        worker: OfflineWorker, flux_width: tuple[Path, Path], tmp_path: Path) -> None:
    """model_index.json names each part's library; a config_dir's file cannot make the worker
    import some other module."""
    file, config_dir = flux_width
    odd = shutil.copytree(config_dir, tmp_path / "config")
    index = json.loads((odd / "model_index.json").read_text())
    (odd / "model_index.json").write_text(json.dumps({**index, "vae": ["subprocess", "Popen"]}))
    worker.send(batch(flux_model(file, odd), ["a lighthouse at dusk"], steps=1))
    [(failed, _)] = [event for event in worker.until("done", "failed") if event[0]["ev"] == "failed"]
    assert "gives vae the library 'subprocess'; only diffusers and transformers components are loaded" in \
        failed["error"]


def test_a_flux_file_of_another_width_is_refused_saying_why(built: dict[str, Path], flux_width: tuple[Path, Path],
                                                            tmp_path: Path) -> None:
    """The tiny Flux written in BFL's layout is 32 wide: refused with the width, with or without a
    config_dir, instead of diffusers' `split_with_sizes expects split_sizes to sum exactly to 224`."""
    tiny = write_single_in_subprocess("flux", built["tiny-flux"], tmp_path / "tiny-flux.safetensors")
    why = r"this Flux transformer is 32 wide \(img_in.weight is 32×64\), .* only at FLUX.1's width 3072"
    with pytest.raises(ModelError, match=why):
        choose(tiny, "flux", header_shapes(tiny))
    with pytest.raises(ModelError, match=why):
        borrowed_parts(tiny, str(built["tiny-flux"]), "flux")
    file, config_dir = flux_width
    assert sorted(borrowed_parts(file, str(config_dir), "flux")) == sorted(BORROWED)


@pytest.fixture(scope="module")
def pixart_file(tmp_path_factory: pytest.TempPathFactory, built: dict[str, Path]) -> Path:
    """The built tiny-pixart's transformer written alone in the PixArt-sigma repository's layout."""
    out = tmp_path_factory.mktemp("pixart-file")
    return write_single_in_subprocess("pixart", built["tiny-pixart"], out / "tiny-pixart-sigma.safetensors")


def test_a_pixart_file_is_written_in_the_pixart_sigma_layout(pixart_file: Path, built: dict[str, Path]) -> None:
    """The names and fused shapes of PixArt-Σ's published checkpoints (so the loader is tested on
    that layout, not on one of ours): one qkv per self-attention, one kv per cross-attention."""
    shapes = header_shapes(pixart_file)
    config = json.loads((built["tiny-pixart"] / "transformer" / "config.json").read_text())
    width = config["num_attention_heads"] * config["attention_head_dim"]
    last = config["num_layers"] - 1
    assert shapes[f"blocks.{last}.attn.qkv.weight"] == (3 * width, width)
    assert shapes[f"blocks.{last}.cross_attn.kv_linear.weight"] == (2 * width, width)
    assert shapes[f"blocks.{last}.cross_attn.q_linear.weight"] == (width, width)
    assert shapes["final_layer.scale_shift_table"] == (2, width)
    assert shapes["x_embedder.proj.weight"][:2] == (width, config["in_channels"])
    for key in ("t_block.1.weight", "t_embedder.mlp.0.weight", "y_embedder.y_proj.fc1.weight",
                "final_layer.linear.weight", f"blocks.{last}.scale_shift_table", f"blocks.{last}.mlp.fc2.weight"):
        assert key in shapes, key
    assert not [key for key in shapes if key.startswith(("transformer_blocks.", "text_encoder", "vae"))]
    assert detect(pixart_file) == "pixart"
    assert sorted(borrowed_parts(pixart_file, str(built["tiny-pixart"]), "pixart")) == ["text_encoder", "vae"]


def test_a_pixart_file_paints_the_directorys_images_with_its_config_dirs_t5_and_vae(
        worker: OfflineWorker, built: dict[str, Path], pixart_file: Path) -> None:
    """diffusers has no single-file loader for PixArt: the transformer is renamed and split by
    daemon.models.pixart_layout. Seed for seed it paints what the directory paints (a weight in the
    wrong place, or q and k swapped in a split, would paint something else)."""
    config_dir = built["tiny-pixart"]
    prompts = ["a paper lantern", "a glass of water"]
    worker.send(batch(model_fields("tiny-pixart"), prompts, steps=2))
    from_directory = [p for m, p in worker.until("done", "failed") if m["ev"] == "image"]
    worker.send(batch(model_fields("pixart-file", str(pixart_file), config_dir=str(config_dir)), prompts, steps=2))
    events = worker.until("done", "failed")
    assert events[-1][0]["ev"] == "done", events[-1][0]
    [load] = [m for m, _ in events if m["ev"] == "model"]
    assert load["family"] == "pixart" and load["path"] == str(pixart_file)
    parts = {name: config_dir / name for name in ("text_encoder", "vae")}
    assert load["weights_sha256"] == weights_sha256(pixart_file, parts)
    from_file = [p for m, p in events if m["ev"] == "image"]
    assert len(from_file) == len(from_directory) == 2
    for ours, theirs in zip(from_file, from_directory, strict=True):
        assert ours is not None and theirs is not None
        assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) <= 1


def test_a_pixart_file_that_does_not_fit_fails_naming_the_weight_or_the_config(
        worker: OfflineWorker, built: dict[str, Path], pixart_file: Path, tmp_path: Path) -> None:
    extra = tmp_path / "extra.safetensors"
    save_file({**load_file(pixart_file), "blocks.0.attn.rope.freqs": load_file(pixart_file)["t_block.1.bias"]},
              str(extra))
    deeper = shutil.copytree(built["tiny-pixart"], tmp_path / "deeper")
    config = json.loads((deeper / "transformer" / "config.json").read_text())
    (deeper / "transformer" / "config.json").write_text(json.dumps({**config, "num_layers": config["num_layers"] + 1}))
    failures = []
    for name, path, config_dir in (("extra", extra, built["tiny-pixart"]), ("deeper", pixart_file, deeper)):
        worker.send(batch(model_fields(name, str(path), config_dir=str(config_dir)), ["x"], steps=1))
        [(failed, _)] = [event for event in worker.until("done", "failed") if event[0]["ev"] == "failed"]
        assert failed["kind"] == "load" and str(path) in failed["error"]
        failures.append(failed["error"])
    assert "have no place in a PixArt transformer (such as blocks.0.attn.rope.freqs)" in failures[0]
    assert f"does not fit the config in {deeper / 'transformer'}" in failures[1]
    assert f"transformer_blocks.{config['num_layers']}." in failures[1]  # the block the file lacks, named
    worker.send(batch(None, ["the worker still serves"], steps=1))
    assert worker.until("done", "failed")[-1][0]["ev"] == "done"

"""Family detection (configured, model_index.json, a single file's keys) and the refusals of
issue 15 point 6: pickled weights everywhere, symlinks out of the configured path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from daemon.models.detect import detect
from daemon.models.errors import ModelError
from daemon.models.loading import ModelSpec, resolve
from daemon.models.shipped import trees
from tests.models.test_worker_families import FAMILY_OF, write_keys
from tests.models.worker_helpers import write_single_in_subprocess

MARKS = {
    "sd15": ["model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.transformer.text_model.x",
             "first_stage_model.encoder.conv_in.weight"],
    "sd2": ["model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.model.token_embedding.weight"],
    "sdxl": ["model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.label_emb.0.0.weight",
             "conditioner.embedders.1.model.positional_embedding"],
    "sd3": ["model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias",
            "first_stage_model.encoder.conv_in.weight"],
    "flux": ["model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale", "vae.encoder.conv_in.weight"],
    "pixart": ["y_embedder.y_proj.fc1.weight", "blocks.0.cross_attn.q_linear.weight"],
}


@pytest.mark.parametrize("family", sorted(MARKS))
def test_a_single_files_family_is_found_from_its_keys(tmp_path: Path, family: str) -> None:
    path = write_keys(tmp_path / f"{family}.safetensors", MARKS[family])
    assert detect(path) == family


@pytest.mark.parametrize("name", ["tiny", "tiny-sdxl", "tiny-sd3", "tiny-flux"])
def test_the_written_original_layouts_are_detected(built: dict[str, Path], tmp_path: Path, name: str) -> None:
    family = FAMILY_OF[name]
    assert detect(write_single_in_subprocess(family, built[name], tmp_path / f"{name}.safetensors")) == family


@pytest.mark.parametrize("name", sorted(FAMILY_OF))
def test_a_directorys_family_is_found_from_model_index(built: dict[str, Path], name: str) -> None:
    assert detect(built[name]) == FAMILY_OF[name]


def test_unknown_keys_name_the_file_and_what_was_found(tmp_path: Path) -> None:
    path = write_keys(tmp_path / "mystery.safetensors", ["encoder.layer.0.weight", "head.bias"])
    with pytest.raises(ModelError, match=r"mystery\.safetensors: no known model family.*head\.bias"):
        detect(path)


def test_a_wrong_configured_family_names_both(built: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"configured as family sdxl, but .*model_index.json names a flux"):
        detect(built["tiny-flux"], "sdxl")
    path = write_keys(tmp_path / "f.safetensors", MARKS["flux"])
    with pytest.raises(ModelError, match=r"f\.safetensors: configured as family sd3, but .* flux layout"):
        detect(path, "sd3")
    assert detect(built["tiny"], "sd2") == "sd2"  # one pipeline class serves both


def test_an_unknown_pipeline_class_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    with pytest.raises(ModelError, match="pipeline KandinskyPipeline is no supported family"):
        detect(tmp_path)


def test_pickled_single_files_are_refused(tmp_path: Path) -> None:
    for suffix in (".ckpt", ".pt", ".bin"):
        path = tmp_path / f"model{suffix}"
        path.write_bytes(b"\x80\x04pickle")
        with pytest.raises(ModelError, match=rf"model\{suffix}: pickled weights .* refused"):
            resolve(ModelSpec("m", str(path)), tmp_path)


def test_a_directory_whose_only_weights_are_pickled_is_refused(built: dict[str, Path], tmp_path: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(built["tiny-sd3"], model)
    for weights in (model / "vae").glob("*.safetensors"):
        weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(ModelError, match=r"vae/diffusion_pytorch_model\.bin: pickled weights are refused"):
        resolve(ModelSpec("m", str(model)), tmp_path)


def test_a_symlink_out_of_the_model_directory_is_refused_naming_it(built: dict[str, Path], tmp_path: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(built["tiny"], model)
    outside = tmp_path / "elsewhere.safetensors"
    weights = next((model / "unet").glob("*.safetensors"))
    weights.rename(outside)
    weights.symlink_to(outside)
    with pytest.raises(ModelError, match=rf"{weights}: a symlink to {outside}, outside the configured directory"):
        resolve(ModelSpec("m", str(model)), tmp_path)
    weights.unlink()
    weights.symlink_to(Path("..") / "text_encoder" / "config.json")  # inside the model: allowed
    assert resolve(ModelSpec("m", str(model)), tmp_path) == model


def test_the_package_ships_json_only_config_trees_for_each_single_file_family() -> None:
    """The published model's tree first (PixArt has none: diffusers has no single-file loader for
    it), then the built-in tiny model's."""
    shipped = {family: [tree.name for tree in trees(family)] for family in ("sd15", "sd2", "sdxl", "sd3", "flux", "pixart")}
    assert shipped == {"sd15": ["sd15", "tiny-sd15"], "sd2": ["sd2"], "sdxl": ["sdxl", "tiny-sdxl"],
                       "sd3": ["sd3", "tiny-sd3"], "flux": ["flux", "tiny-flux"], "pixart": []}
    for family in shipped:
        for tree in trees(family):
            files = [p for p in tree.rglob("*") if p.is_file()]
            assert files and all(p.suffix in (".json", ".txt") for p in files), tree

"""The config trees the package ships for REAL single files (issue 15 point 3): published models'
checkpoints load offline with no config_dir.

No published checkpoint can be downloaded here, so each stands in as a file of the same layout
and the same tensor shapes, all zeros and sparse on disk (tests.models.sparse_checkpoint). Its
sizes are checked against the parameter counts the models' authors published, so a wrong number in
daemon/models/published.py fails here, not on an operator's box. Loads run in the real worker
under `unshare -n`.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.models.errors import ModelError
from daemon.models.shipped import CONFIGS, choose, header_shapes, tokenizer_tree, trees
from daemon.queue.tokens import prompt_tokens
from tests.models.sparse_checkpoint import PUBLISHED, write_shapes
from tests.models.worker_helpers import OfflineWorker, batch, model_fields

CAT = "a photo of a cat"
CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]
"""CLIP's own token ids for this prompt (start, a, photo, of, a, cat, end)."""

PUBLISHED_SIZES = {
    ("sd15", "model.diffusion_model."): 860e6, ("sd15", "cond_stage_model."): 123e6,
    ("sdxl", "model.diffusion_model."): 2.6e9, ("sdxl", "conditioner."): 817e6,
    ("sd3-medium", "model.diffusion_model."): 2.0e9, ("sd3.5-large", "model.diffusion_model."): 8.1e9,
    ("sd3.5-medium", "model.diffusion_model."): 2.5e9, ("flux1-dev", "model.diffusion_model."): 12e9,
    ("flux1-schnell", "model.diffusion_model."): 12e9, ("flux1-dev", "text_encoders.clip_l."): 123e6,
}
"""Parameters as the authors published them, rounded: SD 1.5's model card (860M UNet, 123M text
encoder), the SDXL paper (2.6B UNet, 817M text encoders), Stability's SD3 Medium (2B), SD3.5 Large
(8.1B) and SD3.5 Medium (2.5B) announcements, Black Forest Labs' FLUX.1 model cards (12B)."""
T5_SENTINEL_IDS = {"The <extra_id_0> walks in <extra_id_1> park": [37, 32099, 10681, 16, 32098, 2447, 1],
                   "<extra_id_0> cute dog <extra_id_1> the <extra_id_2>": [32099, 5295, 1782, 32098, 8, 32097, 1]}
"""T5's own token ids for the span-corruption example of the T5 documentation (input and labels)."""


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("published")
    subprocess.run([sys.executable, "-m", "tests.models.sparse_checkpoint", str(out)], check=True,
                   capture_output=True, timeout=300)
    return {name: out / f"{name}.safetensors" for name in PUBLISHED}


def test_the_shipped_clip_tokenizers_are_clips_own_vocabulary() -> None:
    from tokenizers import Tokenizer

    folders = sorted(CONFIGS / family / name for family in ("sd15", "sd2", "sdxl", "sd3", "flux")
                     for name, part in json.loads((CONFIGS / family / "model_index.json").read_text()).items()
                     if part == ["transformers", "CLIPTokenizer"])
    assert len(folders) == 7
    for folder in folders:
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        assert tokenizer.get_vocab_size() == 49408, folder
        assert tokenizer.encode(CAT).ids == CAT_IDS, folder
    notice = (CONFIGS / "CLIP-VOCABULARY-LICENSE.txt").read_text()
    assert "bpe_simple_vocab_16e6" in notice and "Permission is hereby granted" in notice


def test_the_shipped_t5_tokenizer_is_t5s_own_vocabulary() -> None:
    from tokenizers import Tokenizer
    from transformers import T5TokenizerFast

    folder = CONFIGS / "flux" / "tokenizer_2"
    assert Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size() == 32100
    tokenizer = T5TokenizerFast.from_pretrained(str(folder), local_files_only=True)
    assert tokenizer.model_max_length == 512
    for text, ids in T5_SENTINEL_IDS.items():
        assert tokenizer(text).input_ids == ids, text
    notice = (CONFIGS / "T5-VOCABULARY-LICENSE.txt").read_text()
    assert "spiece.model SHA-256 d60acb12" in notice and "Apache License" in notice


def test_the_stand_ins_have_the_published_sizes(published: dict[str, Path]) -> None:
    for (name, prefix), size in PUBLISHED_SIZES.items():
        shapes = header_shapes(published[name])
        count = sum(math.prod(shape) for key, shape in shapes.items() if key.startswith(prefix))
        assert abs(count - size) <= 0.05 * size, f"{name} {prefix}: {count:,} parameters, published {size:,.0f}"


@pytest.mark.parametrize(("name", "tree", "denoiser"), [
    ("sd15", "sd15", "unet"), ("sd2", "sd2", "unet"), ("sdxl", "sdxl", "unet"), ("sd3-medium", "sd3", "transformer"),
    ("sd3.5-large", "sd3", "transformer-sd3.5-large"), ("sd3.5-medium", "sd3", "transformer-sd3.5-medium"),
    ("sd3-medium-t5", "sd3", "transformer"), ("flux1-dev", "flux", "transformer"),
    ("flux1-schnell", "flux", "transformer-schnell")])
def test_each_published_file_picks_its_tree_and_variant(published: dict[str, Path], name: str, tree: str,
                                                        denoiser: str) -> None:
    family = PUBLISHED[name][0]
    chosen = choose(published[name], family, header_shapes(published[name]))
    assert (chosen.path, chosen.denoiser) == (CONFIGS / tree, denoiser)


def test_flux_schnell_gets_its_own_schedule_and_dev_the_shifting_one(published: dict[str, Path]) -> None:
    """FLUX.1 [schnell] is distilled to a few steps on the plain schedule; [dev] shifts it by size.
    The variant's scheduler is what the worker loads (daemon.models.loading)."""
    from daemon.models.loading import _variant_scheduler

    dev = choose(published["flux1-dev"], "flux", header_shapes(published["flux1-dev"]))
    schnell = choose(published["flux1-schnell"], "flux", header_shapes(published["flux1-schnell"]))
    assert dev.variant_scheduler is None and schnell.variant_scheduler == "scheduler-schnell"
    plain = _variant_scheduler(schnell.path, "scheduler-schnell")
    assert type(plain).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert plain.config.shift == 1.0 and not plain.config.use_dynamic_shifting
    shifting = _variant_scheduler(dev.path, "scheduler")
    assert shifting.config.use_dynamic_shifting and shifting.config.max_shift == 1.15


def test_a_flux_file_without_t5_or_vae_is_refused_naming_them(published: dict[str, Path], tmp_path: Path) -> None:
    """Black Forest Labs publish the transformer alone; with no config_dir to borrow from, the
    shipped tree (configs only) cannot serve it."""
    shapes = header_shapes(published["flux1-dev"])
    alone = write_shapes(tmp_path / "flux1-dev-transformer.safetensors",
                         {k[len("model.diffusion_model."):]: v for k, v in shapes.items()
                          if k.startswith("model.diffusion_model.")})
    with pytest.raises(ModelError, match=r"no weights for text_encoder, text_encoder_2 \(T5-XXL\), vae, and the "
                                         "shipped config tree holds configs only; set config_dir"):
        choose(alone, "flux", header_shapes(alone))


def test_flux_counts_clip_and_t5_tokens_exactly() -> None:
    tokens = prompt_tokens("flux1-dev", "flux", CONFIGS / "flux")
    assert set(tokens.counts) == {"clip", "t5"}
    long_prompt = " ".join(["a red fox in the snow"] * 90)
    warnings = tokens.warnings(long_prompt)
    assert len(warnings) == 2 and not any("about" in w for w in warnings), warnings
    assert warnings[0].startswith("prompt is 542 CLIP tokens")  # 6 a repeat, start and end
    assert warnings[1].startswith("prompt is 721 T5 tokens"), warnings  # ▁ a ▁red ▁ fox ▁in ▁the ▁snow a repeat, end


def test_a_file_no_shipped_tree_fits_is_refused_naming_the_shapes(published: dict[str, Path], tmp_path: Path) -> None:
    shapes = header_shapes(published["sd15"])
    shapes["model.diffusion_model.input_blocks.0.0.weight"] = (448, 4, 3, 3)
    odd = write_shapes(tmp_path / "wider.safetensors", shapes)
    with pytest.raises(ModelError) as refused:
        choose(odd, "sd15", header_shapes(odd))
    message = str(refused.value)
    assert str(odd) in message and "config_dir" in message
    assert "input_blocks.0.0.weight is 448×4×3×3, the config gives 320×4×3×3" in message
    assert [p.name for p in trees("sd15")] == ["sd15", "tiny-sd15"]


def test_a_file_without_the_parts_the_shipped_tree_needs_is_refused(published: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    bare = {k: v for k, v in header_shapes(published["sdxl"]).items() if not k.startswith("conditioner.")}
    file = write_shapes(tmp_path / "sdxl-unet-vae.safetensors", bare)
    with pytest.raises(ModelError, match="no weights for text_encoder, text_encoder_2, and the shipped config tree"):
        choose(file, "sdxl", header_shapes(file))


def test_sd3_runs_with_t5_when_its_file_has_it_and_without_when_not(published: dict[str, Path]) -> None:
    """One shipped tree serves both: a file without T5-XXL gets no T5 (and no T5 warning: nothing
    of the prompt is cut there); a file with it runs it, and its prompts' T5 tokens are counted."""
    long_prompt = " ".join(["a red fox in the snow"] * 40)
    without = tokenizer_tree(published["sd3.5-medium"], "sd3")
    with_t5 = tokenizer_tree(published["sd3-medium-t5"], "sd3")
    assert without is not None and with_t5 is not None and without.path == with_t5.path == CONFIGS / "sd3"
    assert {"text_encoder_3", "tokenizer_3"} <= set(without.left_out)
    assert not {"text_encoder_3", "tokenizer_3"} & set(with_t5.left_out)
    tokens = prompt_tokens("sd3.5", "sd3", without.path, without.left_out)
    assert set(tokens.counts) == {"clip"}
    [warning] = tokens.warnings(long_prompt)
    assert warning.startswith("prompt is 242 CLIP tokens") and "about" not in warning
    tokens = prompt_tokens("sd3-t5", "sd3", with_t5.path, with_t5.left_out)
    assert set(tokens.counts) == {"clip", "t5"}
    clip, t5 = tokens.warnings(long_prompt)
    assert clip.startswith("prompt is 242 CLIP tokens") and t5.startswith("prompt is 321 T5 tokens"), (clip, t5)


@pytest.mark.parametrize(("name", "dtype"), [("sd15", "auto"), ("sd3.5-medium", "bfloat16")])
def test_a_published_single_file_loads_offline_without_config_dir(worker: OfflineWorker, published: dict[str, Path],
                                                                   name: str, dtype: str) -> None:
    """SD 1.5 at the CPU's float32; SD3.5 Medium (its variant transformer, no T5) in bfloat16 to
    halve the memory (about 12 GB at peak)."""
    worker.send(batch({**model_fields(name, str(published[name])), "dtype": dtype}, [CAT], steps=1))
    events = worker.until("done", "failed", timeout=600)
    assert events[-1][0]["ev"] == "done", events[-1][0]
    [load] = [m for m, _ in events if m["ev"] == "model"]
    assert load["family"] == PUBLISHED[name][0] and load["path"] == str(published[name])
    [image] = [p for m, p in events if m["ev"] == "image"]
    assert image is not None and len(image) == 64 * 64 * 3

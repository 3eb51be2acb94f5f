"""Write the config trees the package ships for single-file loads (daemon/models/configs/).

Run by a developer, not at run time, and nothing is downloaded:

    python -m daemon.models.make_configs --clip-wheel open_clip_torch-3.3.0-py3-none-any.whl

- `<family>/` for real checkpoints (sd15, sd2, sdxl, sd3): the published architectures
  (daemon.models.published) as component configs, the scheduler config, and CLIP's tokenizer.
  CLIP's byte-pair vocabulary is derived from the merge list OpenCLIP's wheel carries (the wheel
  comes from the package registry; its file's SHA-256 is checked), as CLIP itself derives it.
- `tiny-<family>/`: each built-in tiny model's tree (built from code, saved, weights dropped).

JSON/TXT only. T5's tokenizer is not shipped: no offline source of its vocabulary exists.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from daemon.models.builders import build
from daemon.models.published import TREES, Component, Tokenizer, Tree
from daemon.models.shipped import CLIP_LICENSE, CONFIGS
from daemon.models.tiny import byte_symbols

TINY = {"sd15": "tiny", "sdxl": "tiny-sdxl", "sd3": "tiny-sd3", "flux": "tiny-flux"}
"""Family → the built-in model whose tree is shipped as `tiny-<family>` (PixArt: no single-file loader)."""
KEPT_SUFFIXES = (".json", ".txt")
CLIP_BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
CLIP_BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
CLIP_MERGES = 49152 - 256 - 2
"""CLIP's vocabulary is 49408 tokens: 256 bytes, the same with `</w>`, this many merges, two specials."""


def write_tiny(family: str, target_root: Path = CONFIGS) -> Path:
    with tempfile.TemporaryDirectory() as scratch:
        model = build(TINY[family], Path(scratch) / family)
        target = _fresh(target_root / f"tiny-{family}")
        for source in sorted(model.rglob("*")):
            if source.is_file() and source.suffix in KEPT_SUFFIXES and source.name != "sai-model.json":
                destination = target / source.relative_to(model)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, destination)
    return target


def clip_merges(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        packed = archive.read(CLIP_BPE_MEMBER)
    digest = hashlib.sha256(packed).hexdigest()
    if digest != CLIP_BPE_SHA256:
        raise SystemExit(f"{wheel}: {CLIP_BPE_MEMBER} has SHA-256 {digest}, not the known {CLIP_BPE_SHA256}")
    lines = gzip.decompress(packed).decode("utf-8").split("\n")
    return lines[1:CLIP_MERGES + 1]  # line 0 is a version header


def clip_vocab(merges: list[str]) -> dict[str, int]:
    symbols = list(byte_symbols().values())  # in CLIP's order
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}


def write_clip_tokenizer(target: Path, merges: list[str], pad_token: str) -> None:
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        vocab_file, merges_file = Path(scratch) / "vocab.json", Path(scratch) / "merges.txt"
        vocab_file.write_text(json.dumps(clip_vocab(merges), ensure_ascii=False))
        merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77, pad_token=pad_token)
        tokenizer.save_pretrained(target)
    full = json.loads((target / "tokenizer.json").read_text())
    (target / "tokenizer.json").write_text(json.dumps(full, ensure_ascii=False, separators=(",", ":")))


def _config(component: Component) -> dict[str, Any]:
    if component.library == "transformers":
        import transformers

        model = getattr(transformers, component.class_name)
        config = model.config_class(**component.kwargs)
        config.architectures = [component.class_name]
        written: dict[str, Any] = config.to_dict()
        return written
    import diffusers

    return {"_class_name": component.class_name, "_diffusers_version": diffusers.__version__, **component.kwargs}


def write_real(family: str, merges: list[str], target_root: Path = CONFIGS) -> Path:
    tree: Tree = TREES[family]
    target = _fresh(target_root / family)
    import diffusers

    index: dict[str, Any] = {"_class_name": tree.pipeline_class, "_diffusers_version": diffusers.__version__,
                             **tree.extra_index}
    for name, part in tree.components.items():
        folder = target / name
        folder.mkdir(parents=True)
        if isinstance(part, Tokenizer):
            write_clip_tokenizer(folder, merges, part.pad_token)
            index[name] = ["transformers", "CLIPTokenizer"]
            continue
        file = "scheduler_config.json" if name == "scheduler" else "config.json"
        _dump(folder / file, _config(part))
        index[name] = [part.library, part.class_name]
    denoiser = "unet" if "unet" in tree.components else "transformer"
    base = tree.components[denoiser]
    assert isinstance(base, Component)
    for variant, kwargs in tree.denoisers.items():
        folder = target / f"{denoiser}-{variant}"
        folder.mkdir()
        _dump(folder / "config.json", _config(Component(base.library, base.class_name, kwargs)))
    _dump(target / "model_index.json", dict(sorted(index.items())))
    return target


def _dump(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _fresh(target: Path) -> Path:
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip-wheel", type=Path, required=True,
                        help="open_clip_torch's wheel (pip download --no-deps open_clip_torch==3.3.0)")
    parser.add_argument("trees", nargs="*", help="which trees (default: all)")
    args = parser.parse_args(argv)
    merges = clip_merges(args.clip_wheel)
    for name in args.trees or [*TREES, *(f"tiny-{f}" for f in TINY)]:
        print(write_tiny(name.removeprefix("tiny-")) if name.startswith("tiny-") else write_real(name, merges))
    with zipfile.ZipFile(args.clip_wheel) as archive:
        notice = next(n for n in archive.namelist() if n.endswith("licenses/LICENSE"))
        origin = (f"The CLIP tokenizers' vocabulary in the trees {', '.join(TREES)} (tokenizer*/tokenizer.json) is "
                  f"derived from {CLIP_BPE_MEMBER} in {args.clip_wheel.name}, under its licence:\n\n")
        CLIP_LICENSE.write_text(origin + archive.read(notice).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

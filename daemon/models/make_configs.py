"""Write the config trees the package ships for single-file loads (daemon/models/configs/).

Run by a developer, not at run time, and nothing is downloaded:

    python -m daemon.models.make_configs --clip-wheel open_clip_torch-3.3.0-py3-none-any.whl \
        --t5-wheel diffsynth-1.1.7-py3-none-any.whl

- `<family>/` for real checkpoints (sd15, sd2, sdxl, sd3, flux): the published architectures
  (daemon.models.published) as component configs, the scheduler config, and the tokenizers.
  CLIP's byte-pair vocabulary is derived from the merge list OpenCLIP's wheel carries, as CLIP
  itself derives it. T5's is the `tokenizer.json` DiffSynth-Studio's 1.1 wheels carry for FLUX.1
  (their spiece.model is T5's own, by its SHA-256), read and saved again by transformers. Both
  wheels come from the package registry, and the files' SHA-256 are checked.
- `tiny-<family>/`: each built-in tiny model's tree (built from code, saved, weights dropped).

JSON/TXT only.
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
from daemon.models.published import TREES, Component, T5Vocabulary, Tokenizer, Tree
from daemon.models.shipped import CLIP_LICENSE, CONFIGS, T5_LICENSE
from daemon.models.tiny import byte_symbols

TINY = {"sd15": "tiny", "sdxl": "tiny-sdxl", "sd3": "tiny-sd3", "flux": "tiny-flux"}
"""Family → the built-in model whose tree is shipped as `tiny-<family>` (PixArt: none; its files
are the transformer alone and load with a config_dir)."""
KEPT_SUFFIXES = (".json", ".txt")
CLIP_BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
CLIP_BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
CLIP_MERGES = 49152 - 256 - 2
"""CLIP's vocabulary is 49408 tokens: 256 bytes, the same with `</w>`, this many merges, two specials."""
T5_FOLDER = "diffsynth/tokenizer_configs/flux/tokenizer_2/"
T5_SHA256 = {"spiece.model": "d60acb128cf7b7f2536e8f38a5b18a05535c9e14c7a355904270e15b0945ea86",
             "tokenizer.json": "f5dfec163765e18e270537fe896c49f5fad74db1525641d9b255a3008b999596"}
"""T5's SentencePiece model as Google released it, and the tokenizer.json converted from it."""
T5_SENTINELS = 100


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


def t5_tokenizer_json(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as archive:
        members = {name: archive.read(T5_FOLDER + name) for name in T5_SHA256}
    for name, known in T5_SHA256.items():
        digest = hashlib.sha256(members[name]).hexdigest()
        if digest != known:
            raise SystemExit(f"{wheel}: {T5_FOLDER}{name} has SHA-256 {digest}, not the known {known}")
    return members["tokenizer.json"]


def write_t5_tokenizer(target: Path, tokenizer_json: bytes, max_length: int) -> None:
    from transformers import T5TokenizerFast

    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "tokenizer.json"
        source.write_bytes(tokenizer_json)
        tokenizer = T5TokenizerFast(tokenizer_file=str(source), extra_ids=T5_SENTINELS, model_max_length=max_length)
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


def write_real(family: str, merges: list[str], t5: bytes, target_root: Path = CONFIGS) -> Path:
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
        if isinstance(part, T5Vocabulary):
            write_t5_tokenizer(folder, t5, part.max_length)
            index[name] = ["transformers", "T5Tokenizer"]
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
    for variant, scheduler in tree.schedulers.items():
        folder = target / f"scheduler-{variant}"
        folder.mkdir()
        _dump(folder / "scheduler_config.json", _config(scheduler))
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
    parser.add_argument("--t5-wheel", type=Path, required=True,
                        help="DiffSynth-Studio's wheel (pip download --no-deps diffsynth==1.1.7)")
    parser.add_argument("trees", nargs="*", help="which trees (default: all)")
    args = parser.parse_args(argv)
    merges = clip_merges(args.clip_wheel)
    t5 = t5_tokenizer_json(args.t5_wheel)
    for name in args.trees or [*TREES, *(f"tiny-{f}" for f in TINY)]:
        print(write_tiny(name.removeprefix("tiny-")) if name.startswith("tiny-") else write_real(name, merges, t5))
    _write_notice(CLIP_LICENSE, args.clip_wheel, "licenses/LICENSE",
                  f"The CLIP tokenizers' vocabulary in the trees {_trees_with(Tokenizer)} (tokenizer*/tokenizer.json) "
                  f"is derived from {CLIP_BPE_MEMBER} in {args.clip_wheel.name}, under its licence:")
    _write_notice(T5_LICENSE, args.t5_wheel, ".dist-info/LICENSE",
                  f"The T5 tokenizer in the trees {_trees_with(T5Vocabulary)} (tokenizer_*/tokenizer.json) is "
                  f"{T5_FOLDER}tokenizer.json in {args.t5_wheel.name} (T5's SentencePiece vocabulary, spiece.model "
                  f"SHA-256 {T5_SHA256['spiece.model']}), saved again by transformers, under the wheel's licence "
                  "(T5's vocabulary is Google's, also under the Apache License 2.0):")
    return 0


def _trees_with(kind: type) -> str:
    return ", ".join(name for name, tree in TREES.items() if any(isinstance(p, kind) for p in tree.components.values()))


def _write_notice(notice: Path, wheel: Path, member_suffix: str, origin: str) -> None:
    with zipfile.ZipFile(wheel) as archive:
        member = next(n for n in archive.namelist() if n.endswith(member_suffix))
        notice.write_text(origin + "\n\n" + archive.read(member).decode())


if __name__ == "__main__":
    raise SystemExit(main())

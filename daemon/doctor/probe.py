"""The child-interpreter half of `sai doctor`: torch's build and devices, and every configured
model's files, checked where the worker would check them (torch and the model code stay out of
the console). Run as `python -I -m daemon.doctor.probe SPEC`; prints one JSON object.

SPEC (JSON): {"sys_path": [...], "state_dir": str, "models": [{"name", "path", "config_dir"}]}.
Output: {"torch": {...} | {"error": str}, "models": [check dicts]}.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.doctor import Check, fail, ok, warn

if TYPE_CHECKING:
    from daemon.models.loading import ModelSpec


def torch_facts() -> dict[str, Any]:
    try:
        import torch
    except Exception as exc:  # a broken install is what this is for: report it, whatever it raised
        return {"error": f"{type(exc).__name__}: {exc}"}
    available = torch.cuda.is_available()
    count = torch.cuda.device_count() if available else 0
    return {"version": torch.__version__, "cuda": torch.version.cuda, "cuda_available": available,
            "devices": [torch.cuda.get_device_name(i) for i in range(count)],
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}


def _header(path: Path) -> tuple[int, str | None]:
    """(tensor count, None) when the safetensors header reads, else (0, the reason)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            return len(list(fh.keys())), None
    except (SafetensorError, OSError) as exc:
        return 0, str(exc)


def _component_problems(root: Path) -> tuple[list[str], int]:
    """What is wrong with the components model_index.json lists, and how many weight files read."""
    try:
        index = json.loads((root / "model_index.json").read_text())
    except (OSError, ValueError) as exc:
        return [f"{root / 'model_index.json'} does not read: {exc}"], 0
    problems: list[str] = []
    read = 0
    for name, entry in sorted(index.items()):
        if name.startswith("_") or not isinstance(entry, list) or None in entry:
            continue
        part = root / name
        if not part.is_dir():
            problems.append(f"{part} is missing (model_index.json lists {name})")
            continue
        if not any(part.glob("*.json")):
            problems.append(f"{part} has no config (*.json)")
        weights = sorted(part.glob("*.safetensors"))
        if (part / "config.json").is_file() and not weights:
            problems.append(f"{part} has a config.json but no .safetensors weights")
        for file in weights:
            _, reason = _header(file)
            if reason:
                problems.append(f"{file}: the safetensors header does not read ({reason})")
            else:
                read += 1
    return problems, read


def check_model(name: str, path: str, config_dir: str, state_dir: Path, prediction: str = "auto") -> Check:
    from daemon.models.builders import BUILT_IN
    from daemon.models.detect import detect
    from daemon.models.loading import ModelError, ModelSpec, resolve

    label = f"model {name}"
    if name in BUILT_IN and not path:
        if wrong := _prediction_problem(label, BUILT_IN[name], prediction):
            return wrong
        built = state_dir / "models" / name
        if not (built / "model_index.json").is_file():
            return ok(label, f"built-in, built offline from code on the daemon's first start into {built}")
        problems, read = _component_problems(built)
        if problems:
            return fail(label, f"the built copy is damaged: {problems[0]}",
                        f"rm -r {built} (it is rebuilt on next start)")
        return ok(label, f"built-in, built at {built} ({read} weight files read)")
    fix = "set model.path to a local diffusers directory or .safetensors file (or model.name = \"tiny\")"
    try:
        target = resolve(ModelSpec(name, path, config_dir), state_dir)
        family = detect(target) if prediction != "auto" else None
    except ModelError as exc:
        return fail(label, str(exc), fix)
    if family and (wrong := _prediction_problem(label, family, prediction)):
        return wrong
    if target.is_file():
        count, reason = _header(target)
        if reason:
            return fail(label, f"{target}: the safetensors header does not read ({reason})",
                        "copy the file again from its source and compare its SHA-256")
        if not config_dir:
            return _shipped_tree_check(label, target, count)
        configs = Path(config_dir).expanduser()
        if not (configs / "model_index.json").is_file():
            return fail(label, f"model.config_dir {configs} has no model_index.json",
                        "point model.config_dir at a diffusers directory (model_index.json and component configs)")
        return _borrowing_check(label, target, count, ModelSpec(name, path, config_dir))
    problems, read = _component_problems(target)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return fail(label, problems[0] + more, f"copy the model directory {target} again from its source")
    if not read:
        return warn(label, f"{target}: no .safetensors weights found", "check the model directory is complete")
    return ok(label, f"{target}: every component present, {read} weight files read")


def _prediction_problem(label: str, family: str, prediction: str) -> Check | None:
    """A `prediction` other than auto on a family that sets its own fails its load: said here first."""
    from daemon.models.loading import prediction_problem

    problem = prediction_problem(family, prediction)
    return fail(label, problem, "remove the model's prediction (or set it to auto)") if problem else None


def _borrowing_check(label: str, target: Path, count: int, spec: ModelSpec) -> Check:
    """A single file with config_dir: what the file lacks (encoders, VAE) must have weights there."""
    from daemon.models.detect import detect
    from daemon.models.errors import ModelError
    from daemon.models.shipped import borrowed_parts

    try:
        borrowed = borrowed_parts(target, spec.config_dir, detect(target, spec.family))
    except ModelError as exc:
        return fail(label, str(exc), "copy the missing components' .safetensors into the config_dir")
    parts = f"; {', '.join(borrowed)} from its weights" if borrowed else ""
    return ok(label, f"{target}: {count} tensors, configs from {spec.config_dir}{parts}")


def _shipped_tree_check(label: str, target: Path, count: int) -> Check:
    """A single file without config_dir loads with the shipped tree its shapes fit, if one does."""
    from daemon.models.detect import detect
    from daemon.models.errors import ModelError
    from daemon.models.shipped import choose, header_shapes

    try:
        tree = choose(target, family := detect(target), header_shapes(target))
    except ModelError as exc:
        return fail(label, str(exc), "set model.config_dir to a local diffusers directory with this model's "
                    "component configs and tokenizers")
    variant = "" if tree.default_denoiser else f", {tree.denoiser}"
    return ok(label, f"{target}: {count} tensors, a {family} file; configs from the shipped tree "
              f"{tree.path.name}{variant}")


def main() -> int:
    spec = json.loads(sys.argv[1])
    sys.path.extend(entry for entry in spec.get("sys_path", []) if entry not in sys.path)
    state_dir = Path(spec["state_dir"])
    models = [check_model(m["name"], m["path"], m["config_dir"], state_dir, m.get("prediction", "auto")).as_dict()
              for m in spec["models"]]
    print(json.dumps({"torch": torch_facts(), "models": models}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

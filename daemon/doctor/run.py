"""Every `sai doctor` check, in the order the table lists them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from daemon import config, paths
from daemon.doctor import Check, fail, host, ok, warn
from daemon.doctor.host import listed
from daemon.worker import launch
from daemon.worker.devices import resolve

PROBE = "daemon.doctor.probe"
PROBE_TIMEOUT = 300.0


def _load_config(config_file: str | None) -> tuple[config.Config, Check]:
    defaults = config.Config(tomllib.loads(config.DEFAULT_FILE.read_text()), (str(config.DEFAULT_FILE),))
    try:
        cfg = config.load(config_file)
    except config.ConfigError as exc:
        return defaults, fail("config", f"{exc} (the checks below use the shipped defaults)",
                              f"correct {exc.key} in {exc.source}: {exc.reason}")
    except OSError as exc:
        return defaults, fail("config", f"cannot look at {exc.filename}: {exc.strerror} (the checks below use the "
                                        "shipped defaults)",
                              "run sai doctor as the daemon's user, or as root with --user")
    return cfg, ok("config", "valid: " + ", ".join(cfg.sources))


def _probe(state_dir: Path, models: list[dict[str, str]]) -> dict[str, Any]:
    """Run daemon.doctor.probe the way the worker is run: isolated, from /, with the worker's environment."""
    spec = {"sys_path": launch.import_path(sys.path), "state_dir": str(state_dir.absolute()), "models": models}
    try:
        done = subprocess.run([sys.executable, "-I", "-W", "ignore", "-m", PROBE, json.dumps(spec)],
                              capture_output=True, text=True, timeout=PROBE_TIMEOUT, cwd=launch.WORKDIR,
                              env=launch.child_environment(os.environ), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"error": f"the probe ({sys.executable} -m {PROBE}) did not finish within {PROBE_TIMEOUT:g} s"}
    except OSError as exc:
        return {"error": f"cannot start {sys.executable}: {exc.strerror}"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"the probe ({sys.executable} -m {PROBE}) exited with {done.returncode}: {tail}"}
    try:
        return dict(json.loads(lines[-1]))
    except ValueError:
        return {"error": f"the probe ({sys.executable} -m {PROBE}) printed no result: {lines[-1][:200]}"}


def torch_build(facts: dict[str, Any], device: str, gpus_present: bool) -> Check:
    """The build the worker will import, and the devices it will see, against `model.device`."""
    if "error" in facts:
        return fail("torch", f"torch does not import in a worker-like interpreter: {facts['error']}",
                    "reinstall from the lock (see the packages check)")
    cuda = facts["cuda"]
    build = f"torch {facts['version']}, " + (f"CUDA {cuda} build" if cuda else "CPU build")
    visible = f"; CUDA_VISIBLE_DEVICES={facts['visible']}" if facts["visible"] is not None else ""
    if facts["cuda_available"]:
        names = ", ".join(f"cuda:{i} {n}" for i, n in enumerate(facts["devices"]))
        return ok("torch", f"{build}: {len(facts['devices'])} device(s) visible: {names}{visible}")
    unseen = "check `nvidia-smi`, CUDA_VISIBLE_DEVICES and the unit's DeviceAllow= lines"
    cpu_build = "install the CUDA bundle (requirements-cuda.lock)"
    if device == "cuda":
        why = "a CPU build cannot use a GPU" if not cuda else f"no CUDA device is visible{visible}"
        return fail("torch", f"{build}: model.device = \"cuda\" but {why}",
                    f"{unseen if cuda else cpu_build}, or set model.device = \"auto\" to run on the CPU")
    if gpus_present and not cuda:
        return warn("torch", f"{build}: NVML sees GPUs, but the worker will run on the CPU",
                    f"{cpu_build} on a GPU server")
    if cuda:
        return warn("torch", f"{build}: no CUDA device is visible{visible}; the worker will run on the CPU", unseen)
    return ok("torch", f"{build}: the worker runs on the CPU (model.device = \"{device}\")")


def workers(cfg: config.Config, facts: dict[str, Any], gpus: int, cores: int | None = None) -> Check:
    """The worker processes `[worker] devices` gives (one per entry) against the GPUs NVML and the
    worker's torch see: a CUDA entry no GPU backs would leave its worker failing at every start."""
    slots = resolve(cfg.worker.devices, cfg.model.device, cfg.model.threads, gpus)
    names = listed([f"{s.name} ({s.label}{f', {s.threads} thread(s)' if s.device == 'cpu' and s.threads else ''})"
                      for s in slots])
    fix = "set [worker] devices to the GPUs `nvidia-smi -L` lists (e.g. [\"cuda:0\", \"cuda:1\"]), or \"auto\""
    cuda = [s for s in slots if s.device == "cuda" and s.label.startswith("cuda:")]
    missing = [s.label for s in cuda if int(s.label.partition(":")[2] or 0) >= gpus]
    if missing:
        seen = f"NVML sees {gpus} GPU(s)" if gpus else "NVML sees no GPU"
        return fail("workers", f"{len(slots)} worker(s): {names}; {', '.join(missing)} configured but {seen}", fix)
    if cuda and not facts.get("cuda_available", False):
        return fail("workers", f"{len(slots)} worker(s): {names}; CUDA workers configured but the worker's torch "
                               "sees no CUDA device (see the torch check)", fix)
    cores = cores or os.cpu_count() or 1
    cpus = sum(1 for s in slots if s.device == "cpu")
    if cpus > cores:
        return warn("workers", f"{len(slots)} worker(s): {names}; {cpus} CPU workers on {cores} core(s) slow each "
                               "other down", f"list at most {cores} \"cpu\" entries in [worker] devices")
    return ok("workers", f"{len(slots)} worker(s): {names}")


def configured_models(cfg: config.Config) -> list[dict[str, str]]:
    """The default model and every `[models.NAME]` table: each is checked as the daemon would load it."""
    extra = [{"name": name, "path": str(table.get("path", "")), "config_dir": str(table.get("config_dir", "")),
              "prediction": str(table.get("prediction", "auto"))}
             for name, table in cfg.values[config.MODELS].items()]
    return [{"name": cfg.model.name, "path": cfg.model.path, "config_dir": cfg.model.config_dir,
             "prediction": cfg.model.prediction}, *extra]


def run_checks(config_file: str | None, state_dir: str | None, lock: str | None, uid: int) -> list[Check]:
    cfg, config_check = _load_config(config_file)
    state = paths.state_dir(state_dir, cfg.daemon.state_dir).absolute()
    source = config_file or "the config file"
    checks = [host.python_version(), host.packages(Path(lock) if lock else None), config_check]
    models = configured_models(cfg)
    facts = _probe(state, models)
    gpu, gpus = host.nvml(cfg.model.device == "cuda")
    checks.append(torch_build(facts.get("torch", facts), cfg.model.device, gpus > 0))
    checks.append(gpu)
    checks.append(workers(cfg, facts.get("torch", facts), gpus))
    checks += host.disk({"state dir": state, "outputs": state / "outputs"}, cfg.alerts)
    checks += [host.state_ownership(state, uid), host.key_modes(state / "keys", uid),
               host.socket_group(cfg.daemon.socket_group, uid, source), host.clock(state / "audit.db")]
    if "error" in facts:
        checks += [fail(f"model {m['name']}", facts["error"], "reinstall from the lock (see the packages check)")
                   for m in models]
    else:
        checks += [Check(**c) for c in facts["models"]]
    return checks

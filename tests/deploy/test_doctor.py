"""`sai doctor` run for real: on the state dir a real daemon left, then with each failure caused for real."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from safetensors.numpy import load_file, save_file

from daemon import lockfile
from daemon.audit.entry import check_details
from daemon.audit.writer import Writer, own_actor
from daemon.crypto.keys import KeyStore
from tests.harness import DaemonProcess, merged, run_sai, to_toml
from tests.models.worker_helpers import write_single_in_subprocess

NOBODY = 65534
CONFIG: dict[str, dict[str, Any]] = {"model": {"threads": 1}}


@pytest.fixture(scope="module")
def healthy(tiny_model: Path) -> Iterator[DaemonProcess]:
    """A state dir a real daemon made (keys, audit log, databases), the daemon stopped again.
    Module-scoped, as one start serves every test (the make_daemon fixture is per test)."""
    root = Path(tempfile.mkdtemp(prefix="sai-doctor-", dir="/tmp"))
    daemon = DaemonProcess.create(root, CONFIG, None, tiny_model)
    try:
        daemon.start()
        daemon.stop()
        assert daemon.proc is not None and daemon.proc.returncode == 0, daemon.read_log()
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def state(healthy: DaemonProcess, tmp_path: Path) -> Path:
    """A copy of the healthy state dir (modes kept, the built-in model still a link) for one test to break."""
    copy = tmp_path / "state"
    shutil.copytree(healthy.state_dir, copy, symlinks=True)
    return copy


def doctor(state_dir: Path, config: Path, *extra: str) -> tuple[int, dict[str, dict[str, Any]]]:
    done = run_sai("doctor", "--json", "--state-dir", str(state_dir), "--config", str(config), *extra)
    assert done.returncode in (0, 10, 11), done.stderr
    checks = json.loads(done.stdout)
    assert all(set(c) == {"check", "status", "detail", "fix"} for c in checks), checks
    return done.returncode, {c["check"]: c for c in checks}


def failed(checks: dict[str, dict[str, Any]]) -> list[str]:
    return [name for name, c in checks.items() if c["status"] == "FAIL"]


def config_with(tmp_path: Path, extra: dict[str, dict[str, Any]]) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(to_toml(merged(CONFIG, extra)))
    return path


def test_healthy_state_passes_with_a_table(healthy: DaemonProcess) -> None:
    before = sorted(os.listdir(healthy.state_dir))
    code, checks = doctor(healthy.state_dir, healthy.config_file)
    assert sorted(os.listdir(healthy.state_dir)) == before, "doctor created files in the state dir"
    assert code in (0, 10) and not failed(checks), checks
    assert code == (10 if any(c["status"] == "WARN" for c in checks.values()) else 0)
    assert {"python", "packages", "config", "torch", "nvml", "state dir", "key files", "socket group", "clock",
            "model tiny"} <= checks.keys()
    assert checks["packages"]["status"] == "OK" and lockfile.installed_lock_name() in checks["packages"]["detail"]
    assert "weight files read" in checks["model tiny"]["detail"]
    assert "after the last audit entry" in checks["clock"]["detail"]
    for c in checks.values():
        assert c["status"] == "OK" or c["fix"], f"{c['check']} is {c['status']} without a fix"

    table = run_sai("doctor", "--state-dir", str(healthy.state_dir), "--config", str(healthy.config_file))
    assert table.returncode == code, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["CHECK", "STATUS", "DETAIL", "FIX"]
    for name, c in checks.items():
        assert any(line.startswith(name) and f" {c['status']} " in line for line in lines), (name, table.stdout)


def test_key_file_readable_by_others_fails_and_the_fix_clears_it(state: Path, healthy: DaemonProcess) -> None:
    key = state / "keys" / "signing.key"
    key.chmod(0o644)
    code, checks = doctor(state, healthy.config_file)
    assert code == 11 and failed(checks) == ["key files"], checks
    assert f"{key} is mode 0644" in checks["key files"]["detail"]
    assert checks["key files"]["fix"] == f"chmod 600 {key}"
    subprocess.run(checks["key files"]["fix"].split(), check=True)
    code, checks = doctor(state, healthy.config_file)
    assert code in (0, 10) and not failed(checks), checks


def test_state_dir_of_another_user_fails(state: Path, healthy: DaemonProcess) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    os.chown(state, NOBODY, -1)
    code, checks = doctor(state, healthy.config_file)
    assert code == 11 and failed(checks) == ["state dir"], checks
    assert f"{state} belongs to nobody" in checks["state dir"]["detail"]
    assert f"chown -R root {state}" in checks["state dir"]["fix"]
    assert "sai doctor --user nobody" in checks["state dir"]["fix"]


def test_bad_config_value_fails_naming_file_key_and_reason(state: Path, tmp_path: Path) -> None:
    config = config_with(tmp_path, {"queue": {"max_batch": 0}})
    code, checks = doctor(state, config)
    assert code == 11 and failed(checks) == ["config"], checks
    assert f"{config}: queue.max_batch: must be greater than 0" in checks["config"]["detail"]
    assert checks["config"]["fix"].startswith(f"correct queue.max_batch in {config}")


def test_missing_socket_group_fails(state: Path, tmp_path: Path) -> None:
    config = config_with(tmp_path, {"daemon": {"socket_group": "sai-doctor-no-such-group"}})
    code, checks = doctor(state, config)
    assert code == 11 and failed(checks) == ["socket group"], checks
    assert "'sai-doctor-no-such-group': no such group" in checks["socket group"]["detail"]
    assert "groupadd --system sai-doctor-no-such-group" in checks["socket group"]["fix"]


def test_missing_model_path_fails(state: Path, tmp_path: Path) -> None:
    config = config_with(tmp_path, {"model": {"name": "mine", "path": str(tmp_path / "no-such-model")}})
    code, checks = doctor(state, config)
    assert code == 11 and failed(checks) == ["model mine"], checks
    assert f"{tmp_path / 'no-such-model'} does not exist" in checks["model mine"]["detail"]


def test_diffusers_dir_missing_a_component_config_fails(state: Path, tmp_path: Path, tiny_model: Path) -> None:
    model = tmp_path / "sd"
    shutil.copytree(tiny_model, model)
    (model / "vae" / "config.json").unlink()
    config = config_with(tmp_path, {"model": {"name": "sd", "path": str(model)}})
    code, checks = doctor(state, config)
    assert code == 11 and failed(checks) == ["model sd"], checks
    assert f"{model / 'vae'} has no config" in checks["model sd"]["detail"]


def test_single_file_model_header_reads_then_corrupt_header_fails(state: Path, tmp_path: Path,
                                                                  tiny_model: Path) -> None:
    weights = write_single_in_subprocess("sd15", tiny_model, tmp_path / "tiny-original.safetensors")
    config = config_with(tmp_path, {"model": {"name": "single", "path": str(weights), "config_dir": str(tiny_model)}})
    code, checks = doctor(state, config)
    assert checks["model single"]["status"] == "OK" and "tensors" in checks["model single"]["detail"], checks
    assert "from its weights" not in checks["model single"]["detail"]  # the file carries every part

    data = bytearray(weights.read_bytes())
    data[8:12] = b"#!x\x00"  # the JSON header after its 8-byte length: no longer JSON
    weights.write_bytes(bytes(data))
    code, checks = doctor(state, config)
    assert code == 11 and failed(checks) == ["model single"], checks
    assert f"{weights}: the safetensors header does not read" in checks["model single"]["detail"]


def test_a_unet_only_file_borrows_from_config_dir_and_its_missing_weights_fail(state: Path, tmp_path: Path,
                                                                               tiny_model: Path) -> None:
    whole = load_file(write_single_in_subprocess("sd15", tiny_model, tmp_path / "whole.safetensors"))
    unet_only = tmp_path / "unet-only.safetensors"
    save_file({k: v for k, v in whole.items() if k.startswith("model.diffusion_model.")}, str(unet_only))
    config = config_with(tmp_path, {"model": {"name": "single", "path": str(unet_only),
                                              "config_dir": str(tiny_model)}})
    code, checks = doctor(state, config)
    assert checks["model single"]["status"] == "OK", checks
    assert checks["model single"]["detail"].endswith("; text_encoder, vae from its weights")

    configs = shutil.copytree(tiny_model, tmp_path / "configs")
    for file in (configs / "vae").glob("*.safetensors"):
        file.unlink()
    config = config_with(tmp_path, {"model": {"name": "single", "path": str(unet_only), "config_dir": str(configs)}})
    code, checks = doctor(state, config)
    assert code == 11 and failed(checks) == ["model single"], checks
    assert f"the file has no weights for vae, and config_dir {configs} has no .safetensors" in \
        checks["model single"]["detail"]


def test_every_configured_model_is_checked_not_only_the_default(state: Path, tmp_path: Path) -> None:
    config = config_with(tmp_path, {"models": {"tiny-flux": {}, "gone": {"path": str(tmp_path / "no-such.safetensors")}}})
    code, checks = doctor(state, config)
    assert code == 11 and failed(checks) == ["model gone"], checks
    assert f"{tmp_path / 'no-such.safetensors'} does not exist" in checks["model gone"]["detail"]
    assert checks["model tiny-flux"]["status"] == "OK" and "built-in" in checks["model tiny-flux"]["detail"], checks


def test_a_prediction_on_a_family_that_sets_its_own_fails_the_model(state: Path, tmp_path: Path) -> None:
    config = config_with(tmp_path, {"models": {"tiny-flux": {"prediction": "v_prediction"},
                                               "tiny-sdxl": {"prediction": "v_prediction"}}})
    code, checks = doctor(state, config)
    assert code == 11 and failed(checks) == ["model tiny-flux"], checks
    assert "prediction = 'v_prediction' is for UNet models (sd15, sd2, sdxl); this is a flux model" in \
        checks["model tiny-flux"]["detail"]
    assert "remove the model's prediction" in checks["model tiny-flux"]["fix"]


def test_single_file_without_config_dir_is_checked_against_the_shipped_trees(state: Path, tmp_path: Path,
                                                                             tiny_model: Path) -> None:
    single = write_single_in_subprocess("sd15", tiny_model, tmp_path / "tiny-original.safetensors")
    config = config_with(tmp_path, {"model": {"name": "single", "path": str(single)}})
    code, checks = doctor(state, config)
    assert checks["model single"]["status"] == "OK", checks
    assert "a sd15 file; configs from the shipped tree tiny-sd15" in checks["model single"]["detail"]

    unet_only = tmp_path / "unet.safetensors"
    shutil.copyfile(tiny_model / "unet" / "diffusion_pytorch_model.safetensors", unet_only)  # diffusers keys
    config = config_with(tmp_path, {"model": {"name": "single", "path": str(unet_only)}})
    code, checks = doctor(state, config)
    assert code == 11 and failed(checks) == ["model single"], checks
    assert "no known model family" in checks["model single"]["detail"]
    assert "config_dir" in checks["model single"]["fix"]


def test_audit_entry_dated_in_the_future_fails_the_clock(state: Path, healthy: DaemonProcess) -> None:
    ahead = (datetime.now(UTC) + timedelta(days=1)).isoformat(timespec="microseconds").replace("+00:00", "Z")
    writer = Writer(state / "audit.db", KeyStore.open(state / "keys").signing_key, "doctor-test", 1000)
    try:
        seq = writer.write([(own_actor(), "daemon.start", "clock", check_details({}), ahead)])[0]["seq"]
    finally:
        writer.close()
    code, checks = doctor(state, healthy.config_file)
    assert code == 11 and failed(checks) == ["clock"], checks
    assert f"earlier than audit entry {seq} ({ahead})" in checks["clock"]["detail"]


def test_package_differing_from_the_lock_fails(state: Path, healthy: DaemonProcess, tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    text = (lockfile.CHECKOUT / lockfile.installed_lock_name()).read_text()
    numpy = lockfile.pins(lockfile.CHECKOUT / lockfile.installed_lock_name())["numpy"]
    lock.write_text(text.replace(f"\nnumpy=={numpy} ", "\nnumpy==1.0.0 "))
    code, checks = doctor(state, healthy.config_file, "--lock", str(lock))
    assert code == 11 and failed(checks) == ["packages"], checks
    assert "1 of " in checks["packages"]["detail"] and f"numpy {numpy} (lock: 1.0.0)" in checks["packages"]["detail"]
    assert f"-r {lock}" in checks["packages"]["fix"]


def test_installed_bundle_is_checked_against_the_lock_beside_its_venv(state: Path, healthy: DaemonProcess,
                                                                     tmp_path: Path) -> None:
    """PREFIX/.venv with PREFIX/requirements.lock, as install.sh leaves them (the venv borrows this one's packages)."""
    prefix = tmp_path / "opt"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(prefix / ".venv")], check=True)
    site = next((prefix / ".venv" / "lib").glob("python3*/site-packages"))
    (site / "borrowed.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    installed = lockfile.CHECKOUT / lockfile.installed_lock_name()
    pillow = lockfile.pins(installed)["pillow"]
    (prefix / "requirements.lock").write_text(installed.read_text().replace(f"\npillow=={pillow} ", "\npillow==1.0 "))
    done = subprocess.run([str(prefix / ".venv" / "bin" / "python"), "-m", "console.cli", "doctor", "--json",
                           "--state-dir", str(state), "--config", str(healthy.config_file)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    checks = {c["check"]: c for c in json.loads(done.stdout or "[]")}
    assert done.returncode == 11 and failed(checks) == ["packages"], (done.stderr, checks)
    assert f"differ from {prefix / 'requirements.lock'}: pillow {pillow} (lock: 1.0)" in checks["packages"]["detail"]


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU server: model.device = cuda is satisfiable")
def test_cuda_wanted_without_a_gpu_fails_torch_and_nvml(state: Path, tmp_path: Path) -> None:
    code, checks = doctor(state, config_with(tmp_path, {"model": {"device": "cuda"}}))
    assert code == 11 and sorted(failed(checks)) == ["nvml", "torch"], checks
    assert 'model.device = "cuda"' in checks["torch"]["detail"]


def test_nearly_full_disk_fails(healthy: DaemonProcess, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mount)], check=True)
    try:
        code, checks = doctor(mount / "state", healthy.config_file)
    finally:
        subprocess.run(["umount", str(mount)], check=True)
    assert code == 11 and failed(checks) == ["disk: state dir, outputs"], checks
    assert "GiB free of 0.00 GiB" in checks["disk: state dir, outputs"]["detail"]


def test_the_workers_check_lists_each_worker_and_fails_a_gpu_no_one_sees(state: Path, tmp_path: Path) -> None:
    code, checks = doctor(state, config_with(tmp_path, {"worker": {"devices": ["cpu", "cpu"]}, "model": {"threads": 2}}))
    assert checks["workers"]["status"] == "OK", checks["workers"]
    assert checks["workers"]["detail"] == "2 worker(s): cpu0 (cpu, 1 thread(s)), cpu1 (cpu, 1 thread(s))"
    code, checks = doctor(state, config_with(tmp_path, {"worker": {"devices": ["cpu", "cuda:1"]}}))
    assert code == 11 and "workers" in failed(checks), checks
    assert "cuda:1 configured but NVML sees no GPU" in checks["workers"]["detail"]
    assert "[worker] devices" in checks["workers"]["fix"]

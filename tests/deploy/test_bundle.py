"""`make bundle` and `install.sh`: an air-gapped server installs exactly the lock, and runs a job offline.

The bundle is built once (it reuses pip's cache of the wheels `make setup` fetched), installed into a
fresh prefix under `unshare -n` (no network at all), and a real daemon from that prefix runs a job
there. A changed member, an unlisted file and a signature by another key are refused by name.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.deploy_helpers import ROOT, make_key, run

pytestmark = pytest.mark.slow

needs_unshare = pytest.mark.skipif(
    shutil.which("unshare") is None or os.geteuid() != 0,
    reason="proving 'offline' needs `unshare -n`, which needs root here")


@pytest.fixture(scope="module", autouse=True)
def unpacked_removed_after(bundle: dict[str, Path]) -> Iterator[None]:
    """The unpacked bundle and its tampered copies go when these tests are done: the container
    tests after them need only the tarball, and the disk."""
    yield
    for path in bundle["work"].iterdir():
        if path.name == "unpacked" or path.name.startswith("tampered-"):
            shutil.rmtree(path, ignore_errors=True)


def test_bundle_holds_every_locked_wheel_and_checksums_every_member(bundle: dict[str, Path]) -> None:
    top = bundle["dir"]
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==", (ROOT / "requirements.lock").read_text(), re.M)
    assert len(list((top / "wheelhouse").glob("*.whl"))) == len(pins)
    assert [w.name for w in (top / "wheel").iterdir()] == ["secure_ai_studio-0.1.0-py3-none-any.whl"]
    assert (top / "requirements.lock").read_bytes() == (ROOT / "requirements.lock").read_bytes()
    listed = {line.split("  ", 1)[1] for line in (top / "SHA256SUMS").read_text().splitlines()}
    on_disk = {str(p.relative_to(top)) for p in top.rglob("*") if p.is_file()} - {"SHA256SUMS", "SHA256SUMS.sig"}
    assert listed == on_disk
    assert {"install.sh", "secure-ai-studio.service", "requirements.lock"} <= listed
    signed = run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(bundle["pub"]), "-rawin",
                  "-in", str(top / "SHA256SUMS"), "-sigfile", str(top / "SHA256SUMS.sig")])
    assert signed.returncode == 0, signed.stdout + signed.stderr


def tampered_copy(bundle: dict[str, Path], name: str) -> Path:
    """A copy of the unpacked bundle (hard links: cheap) with a fresh file in place of `name`."""
    copy = bundle["work"] / f"tampered-{name.replace('/', '-')}"
    shutil.copytree(bundle["dir"], copy, copy_function=os.link)
    target = copy / name
    data = bytearray(target.read_bytes()) if target.exists() else bytearray(b"planted\n")
    data[len(data) // 2] ^= 0x01
    target.unlink(missing_ok=True)
    target.write_bytes(bytes(data))
    return copy


@pytest.mark.parametrize("member", ["requirements.lock", "wheelhouse/", "secure-ai-studio.service"])
def test_a_changed_member_is_refused_by_name(bundle: dict[str, Path], member: str, tmp_path: Path) -> None:
    if member.endswith("/"):
        member = min((p for p in (bundle["dir"] / "wheelhouse").iterdir()), key=lambda p: p.stat().st_size) \
            .relative_to(bundle["dir"]).as_posix()
    copy = tampered_copy(bundle, member)
    out = run([str(copy / "install.sh"), "--prefix", str(tmp_path / "p"), "--no-system"])
    assert out.returncode != 0
    assert "checksum mismatch" in out.stderr and member in out.stderr, out.stderr
    assert not (tmp_path / "p").exists()


def test_a_planted_file_and_a_foreign_signature_are_refused(bundle: dict[str, Path], tmp_path: Path) -> None:
    copy = tampered_copy(bundle, "wheelhouse/zz_planted-1.0-py3-none-any.whl")
    out = run([str(copy / "install.sh"), "--prefix", str(tmp_path / "p"), "--no-system"])
    assert out.returncode != 0 and "not named in SHA256SUMS" in out.stderr
    assert "wheelhouse/zz_planted-1.0-py3-none-any.whl" in out.stderr
    other = make_key(tmp_path / "other.pem")
    out = run([str(bundle["dir"] / "install.sh"), "--prefix", str(tmp_path / "q"), "--release-key", str(other)])
    assert out.returncode != 0 and "does not verify" in out.stderr, out.stderr
    assert not (tmp_path / "q").exists()


@needs_unshare
def test_offline_install_then_a_job_runs_with_no_network(bundle: dict[str, Path], tmp_path: Path) -> None:
    prefix, units = tmp_path / "opt", tmp_path / "units"
    installed = run(["unshare", "-n", str(bundle["dir"] / "install.sh"), "--prefix", str(prefix),
                     "--release-key", str(bundle["pub"]), "--systemd-dir", str(units)])
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert re.search(r"checksums: \d+ members verified", installed.stdout), installed.stdout
    assert "signature: SHA256SUMS signed by" in installed.stdout
    unit = (units / "secure-ai-studio.service").read_text()
    assert f"ExecStart={prefix}/.venv/bin/sai daemon" in unit
    assert run(["getent", "passwd", "sai"]).returncode == 0

    sai = str(prefix / ".venv" / "bin" / "sai")
    state, sock = tmp_path / "state", Path(f"/tmp/sai-bundle-{os.getpid()}.sock")
    config = tmp_path / "config.toml"
    config.write_text("[defaults]\nwidth = 64\nheight = 64\nsteps = 2\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SAI_SOCKET": str(sock), "LANG": "C.UTF-8"}
    # cwd outside the checkout: the installed venv alone must carry the daemon, its config and the model.
    daemon = subprocess.Popen(["unshare", "-n", sai, "daemon", "--state-dir", str(state), "--config", str(config)],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while run([sai, "status"], cwd=tmp_path, env=env).returncode != 0:
            assert daemon.poll() is None, daemon.communicate()[0]
            assert time.monotonic() < deadline, "the installed daemon did not answer in 120 s"
            time.sleep(0.5)
        job = run(["unshare", "-n", sai, "submit", "an offline lighthouse", "--wait"], cwd=tmp_path, env=env)
        assert job.returncode == 0 and "succeeded" in job.stdout, job.stdout + job.stderr
        job_id = job.stdout.split()[0]
        exported = run([sai, "export", job_id, "-o", str(tmp_path / "out.png")], cwd=tmp_path, env=env)
        assert exported.returncode == 0, exported.stdout + exported.stderr
        assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        daemon.terminate()
        daemon.wait(60)
        sock.unlink(missing_ok=True)
        shutil.rmtree(prefix, ignore_errors=True)  # a whole venv: the tests after this one need the disk

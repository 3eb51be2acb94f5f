"""The container image, built for real from the offline bundle with podman (chroot isolation, no
registry: the base is made here with debootstrap), then run with a read-only root filesystem.

`podman run` does not work on this kind of machine (crun cannot set rlimits), so the built image
is exercised two ways: the Containerfile's `smoke` stage runs a daemon and a job inside the build,
and the runtime image's own filesystem is mounted read-only and entered with chroot as uid 10001,
with /tmp a tmpfs, the state and socket directories as volumes and no network, as compose.yaml runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.deploy_helpers import ROOT, run

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1800),  # the image is built in the first test's fixture: minutes on 2 cores
    pytest.mark.skipif(shutil.which("podman") is None or shutil.which("debootstrap") is None or os.geteuid() != 0,
                       reason="needs root, podman and debootstrap (make test installs them with apt as root)"),
]

BASE = "localhost/debian:bookworm-local"
IMAGE = "localhost/secure-ai-studio:test"
SHM_ROOM = 8 * 2**30


@pytest.fixture(scope="module")
def base_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Debian bookworm with its Python 3.11, made locally: no container registry is reachable."""
    if run(["podman", "image", "exists", BASE]).returncode != 0:
        root = tmp_path_factory.mktemp("debootstrap") / "root"
        made = run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv", "bookworm", str(root)])
        assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
        imported = run(["sh", "-c", f"tar -C {root} -c . | podman import - {BASE}"])
        assert imported.returncode == 0, imported.stderr
        shutil.rmtree(root, ignore_errors=True)
    return BASE


@pytest.fixture(scope="module")
def image(bundle: dict[str, Path], base_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The smoke and runtime images, removed with their build layers afterwards (several GiB that
    the rest of the suite needs: a CI machine once ran out of disk building them). The locally
    made base stays, for the next run."""
    context = tmp_path_factory.mktemp("context")
    try:
        yield _build(bundle, base_image, context)
    finally:
        run(["podman", "rmi", "--force", "--ignore", f"{IMAGE}-smoke", IMAGE])
        run(["podman", "image", "prune", "--force"])
        shutil.rmtree(context, ignore_errors=True)


def _build(bundle: dict[str, Path], base_image: str, context: Path) -> dict[str, str]:
    os.link(bundle["tarball"], context / bundle["tarball"].name)
    name = bundle["tarball"].name.removesuffix(".tar.gz")
    common = ["podman", "build", "--isolation=chroot", "--format", "docker", "-f", str(ROOT / "Containerfile"),
              "--build-arg", f"BASE={base_image}", "--build-arg", f"BUNDLE={name}"]
    env = build_env()
    smoke = run([*common, "--target", "smoke", "-t", f"{IMAGE}-smoke", str(context)], env=env)
    assert smoke.returncode == 0, smoke.stdout[-4000:] + smoke.stderr[-4000:]
    runtime = run([*common, "--target", "runtime", "-t", IMAGE, str(context)], env=env)
    assert runtime.returncode == 0, runtime.stdout[-2000:] + runtime.stderr[-2000:]
    return {"smoke": smoke.stdout + smoke.stderr, "image": IMAGE}


def build_env() -> dict[str, str]:
    """podman's environment for the builds. While it commits a layer, podman keeps a temporary copy
    of it (about 2 GiB for the venv layers, under /var/tmp by default), and a CI machine once ran
    out of disk right there. The copies go to /dev/shm instead when it has room for them (TMPDIR, as
    containers.conf documents)."""
    env = dict(os.environ)
    if os.path.isdir("/dev/shm") and shutil.disk_usage("/dev/shm").free > SHM_ROOM:
        env["TMPDIR"] = "/dev/shm"
    return env


def inspect(image: str) -> dict[str, object]:
    out = run(["podman", "image", "inspect", image])
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)[0]  # type: ignore[no-any-return]


def test_smoke_stage_ran_a_daemon_and_a_job_inside_the_image(image: dict[str, str]) -> None:
    assert "smoke: ok" in image["smoke"]
    assert "succeeded" in image["smoke"] and "you     sai (admin)" in image["smoke"]


def test_runtime_image_is_non_root_with_healthcheck_volumes_and_drain_signal(image: dict[str, str]) -> None:
    inspected = inspect(image["image"])
    config = inspected["Config"]
    assert isinstance(config, dict)
    assert config["User"] == "10001:10001"
    assert config["StopSignal"] == "SIGTERM"
    assert inspected["Healthcheck"]["Test"] == ["CMD", "sai", "status"]  # type: ignore[index]
    assert set(config["Volumes"]) == {"/var/lib/secure-ai-studio", "/run/sai", "/models"}
    assert config["Entrypoint"][:2] == ["sai", "daemon"]
    size = int(inspected["Size"])  # type: ignore[call-overload]
    print(f"runtime image: {size / 2**20:.0f} MiB")


READ_ONLY_RUN = textwrap.dedent("""\
    set -e
    img=$1; root=$(mktemp -d); vol=$(mktemp -d); state=$vol/state; sock=$vol/run
    mkdir -m 0700 $state; mkdir -m 0750 $sock; chown 10001:10001 $state $sock
    mount --bind "$(podman image mount $img)" $root
    mount -o remount,bind,ro $root
    mount -t tmpfs -o mode=1777 tmpfs $root/tmp
    mount --bind $state $root/var/lib/secure-ai-studio
    mount --bind $sock $root/run/sai
    mount -t proc proc $root/proc
    mount --rbind /dev $root/dev
    printf '[defaults]\\nwidth = 64\\nheight = 64\\nsteps = 2\\n' > $root/tmp/c.toml
    in_image="env -i PATH=/opt/secure-ai-studio/.venv/bin:/usr/bin:/bin SAI_SOCKET=/run/sai/daemon.sock
        HOME=/var/lib/secure-ai-studio PYTHONDONTWRITEBYTECODE=1 HF_HUB_OFFLINE=1
        unshare -n /usr/sbin/chroot --userspec=10001:10001 $root"
    # each program execs the next, so $! below is the daemon itself
    $in_image sai daemon --state-dir /var/lib/secure-ai-studio --config /tmp/c.toml > $vol/log 2>&1 &
    pid=$!
    for i in $(seq 180); do
        kill -0 $pid 2>/dev/null || { cat $vol/log; exit 1; }
        $in_image sai status >/dev/null 2>&1 && break; sleep 1
    done
    $in_image sai status
    $in_image sai submit "a read-only root" --wait
    if touch $root/opt/planted 2>/dev/null; then echo "root filesystem is writable"; exit 1; fi
    kill -TERM $pid; wait $pid; echo "daemon exit $?"
    ls -ln $state/outputs | grep -c '\\.png\\.sai$'
    """)


def test_runtime_image_serves_a_job_with_a_read_only_root_and_no_network(image: dict[str, str], tmp_path: Path) -> None:
    script = tmp_path / "read_only_run.sh"
    script.write_text(READ_ONLY_RUN)
    out = run(["unshare", "-m", "sh", str(script), image["image"]])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "succeeded" in out.stdout and "daemon exit 0" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "1"  # the one encrypted output, written to the state volume

"""One offline bundle per test session (`make bundle`, signed with a throw-away release key): the
bundle and container tests both start from it, as an air-gapped site does."""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

import pytest

from tests.deploy.deploy_helpers import ROOT, make_key, run


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"tarball", "dir" (unpacked), "pub" (the release public key), "work"}."""
    work = tmp_path_factory.mktemp("bundle")
    key = work / "release.pem"
    pub = make_key(key)
    made = run(["make", "-C", str(ROOT), "bundle", f"VENV={Path(sys.prefix)}", "LOCK=requirements.lock",
                f"DIST={work / 'dist'}", f"RELEASE_KEY={key}"])
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    tarballs = list((work / "dist").glob("*.tar.gz"))
    assert [t.name for t in tarballs] == ["secure-ai-studio-0.1.0-linux_x86_64-cpu.tar.gz"]
    with tarfile.open(tarballs[0]) as tar:
        tar.extractall(work / "unpacked", filter="data")
    (top,) = (work / "unpacked").iterdir()
    return {"tarball": tarballs[0], "dir": top, "pub": pub, "work": work}

"""One offline bundle for the deploy tests (`make bundle`, signed with a throw-away release key): the
bundle and container tests both start from it, as an air-gapped site does. It is removed when they
are done: with its unpacked copy it holds about twice the wheelhouse, and the tests after these
need the disk."""

from __future__ import annotations

import shutil
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.deploy_helpers import ROOT, make_key, run


@pytest.fixture(scope="package")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
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
    yield {"tarball": tarballs[0], "dir": top, "pub": pub, "work": work}
    shutil.rmtree(work, ignore_errors=True)

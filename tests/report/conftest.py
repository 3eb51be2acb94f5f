"""`report_daemon`: one real daemon per module that has run the jobs of `report_helpers.run_jobs`."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import DaemonProcess
from tests.report.report_helpers import ReportDaemon, logo_config, run_jobs


@pytest.fixture(scope="module")
def report_daemon(tiny_model: Path) -> Iterator[ReportDaemon]:
    root = Path(tempfile.mkdtemp(prefix="sai-r-", dir="/tmp"))
    config = logo_config(root)
    daemon = DaemonProcess.create(root, config, None, tiny_model)
    try:
        daemon.start()
        try:
            jobs = asyncio.run(run_jobs(daemon.socket, Path(config["watermark"]["logo"])))
        except TimeoutError:
            raise TimeoutError(f"the jobs did not finish; daemon log:\n{daemon.read_log()[-4000:]}") from None
        yield ReportDaemon(daemon, jobs)
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)

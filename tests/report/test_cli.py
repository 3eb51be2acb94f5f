"""`sai report` argument errors: clear messages and exit status 2, before any daemon is asked."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from console import cli
from tests.harness import ROOT


def sai_in_process(*args: str) -> tuple[int, str]:
    """Run `sai` in this process (argument errors need no subprocess); (exit status, stderr)."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            code = cli.main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, stderr.getvalue()


@pytest.mark.parametrize("args, message", [
    (["--since", "yesterday"], "argument --since: 'yesterday' is not a time"),
    (["--format", "xml"], "argument --format: invalid choice: 'xml'"),
    (["--bucket", "soon"], "'soon' is not a duration"),
    (["--alpha", "5"], "'5' is not a significance level between 0 and 1"),
    (["--compare", "2h..1h"], "argument --compare: expected 2 arguments"),
    (["--compare", "1h..2h", "1h..now"], "period '1h..2h' ends before it starts"),
    (["--compare", "lastweek", "1h..now"], "'lastweek' is neither a report file nor a period START..END"),
    (["--compare", "2h..1h", "1h..now", "--since", "3h"], "--since and --until do not apply to --compare"),
    (["--since", "1h", "--until", "2h"], "--since must be before --until"),
])
def test_bad_arguments_are_clear_errors(args: list[str], message: str, tmp_path: Path) -> None:
    code, stderr = sai_in_process("--socket", str(tmp_path / "no.sock"), "report", *args)
    assert code == 2 and message in stderr, stderr


def test_a_file_that_is_not_a_report_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"jobs": []}))
    code, stderr = sai_in_process("report", "--compare", str(other), str(other))
    assert code == 2 and "is not a report written by `sai report --format json`" in stderr
    other.write_text("{not json")
    code, stderr = sai_in_process("report", "--compare", str(other), str(other))
    assert code == 2 and f"cannot read the report {other}" in stderr


def test_help_imports_no_statistics_or_plotting_library() -> None:
    probe = ("import sys; sys.argv = ['sai', '--help']\nimport console.cli\ntry: console.cli.main()\n"
             "except SystemExit: pass\n"
             "print('HEAVY', sorted(m for m in ('numpy', 'scipy', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "report" in out.stdout and "HEAVY []" in out.stdout

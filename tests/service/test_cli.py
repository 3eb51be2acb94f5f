"""The `sai` command line against a real daemon, and its start-up cost."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.exitcodes import ExitCode
from tests.configs import NO_WORKER
from tests.harness import run_sai

ROOT = Path(__file__).resolve().parents[2]




@pytest.mark.parametrize("code", [
    "import daemon.protocol, daemon.client",
    "import sys; sys.argv = ['sai', '--help']\nimport console.cli\ntry: console.cli.main()\nexcept SystemExit: pass",
])
def test_light_entry_points_do_not_import_torch(code):
    probe = code + "\nimport sys; heavy = sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules)" \
                   "\nprint('HEAVY', heavy)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout


def test_help_lists_everyday_commands_first():
    out = run_sai("--help")
    assert out.returncode == 0
    listed = [line.split()[0] for line in out.stdout.split("positional arguments:")[1].split("options:")[0].splitlines()
              if line.startswith("    ") and not line.startswith("      ")]
    assert listed[:4] == ["daemon", "status", "worker", "pause"] and listed.index("submit") < listed.index("audit")
    assert {"submit", "jobs", "cancel", "export", "audit", "report", "verify"} <= set(listed)


def test_version_names_the_installed_release():
    from importlib.metadata import version

    out = run_sai("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"sai {version('secure-ai-studio')}"


def test_no_daemon_is_a_clear_message(tmp_path):
    out = run_sai("status", socket_path=tmp_path / "nothing.sock")
    assert out.returncode == 3
    assert "no daemon answers on" in out.stderr and "sai daemon" in out.stderr


def test_submit_wait_shows_outputs_then_export_writes_0600(make_daemon, tmp_path):
    daemon = make_daemon()
    out = run_sai("submit", "a lighthouse", "--size", "64x64", "--steps", "3", "--count", "2", "--wait",
              socket_path=daemon.socket)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    job_id, state = lines[0].split()[:2]
    assert state == "succeeded"
    assert len(lines) == 3 and all(job_id in line for line in lines[1:])
    listed = json.loads(run_sai("jobs", "--json", socket_path=daemon.socket).stdout)["jobs"]
    assert [job["job_id"] for job in listed] == [job_id]
    piped = run_sai("jobs", socket_path=daemon.socket).stdout  # not a terminal: one tab-separated line a job
    assert piped.split("\t")[:3] == [job_id, "normal", "succeeded"] and piped.count("\n") == 1
    target = tmp_path / "out.png"
    out = run_sai("export", job_id, "--index", "1", "-o", str(target), socket_path=daemon.socket)
    assert out.returncode == 0, out.stderr
    assert target.read_bytes().startswith(b"\x89PNG")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    nowhere = tmp_path / "missing" / "dir" / "x.png"
    out = run_sai("export", job_id, "-o", str(nowhere), socket_path=daemon.socket)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip() == f"sai: {nowhere.parent}: No such file or directory"
    detail = json.loads(run_sai("job", job_id, "--json", socket_path=daemon.socket).stdout)
    assert detail["params"]["prompt"] == "a lighthouse" and detail["state"] == "succeeded"
    fields = run_sai("job", job_id, socket_path=daemon.socket).stdout.splitlines()
    column = fields[0].index(job_id)  # every value starts in the same column, whatever its name's length
    assert all(line[column - 2:column] == "  " and line[column] != " " for line in fields), fields
    named = {line[:column].strip(): line[column:] for line in fields}
    assert named["prompt"] == "a lighthouse" and named["negative_prompt"] == "-" and named["error"] == "-"


def test_errors_exit_non_zero_with_the_daemons_message(make_daemon):
    daemon = make_daemon(NO_WORKER)
    out = run_sai("submit", "x", "--size", "100x64", socket_path=daemon.socket)
    assert out.returncode == 1 and "invalid width: 100 is not a multiple of 8" in out.stderr
    out = run_sai("cancel", "jnothere", socket_path=daemon.socket)
    assert out.returncode == 1 and "no job jnothere" in out.stderr
    out = run_sai("submit", "x", "--size", "big", socket_path=daemon.socket)
    assert out.returncode == 2 and "WIDTHxHEIGHT" in out.stderr


def test_queue_commands(make_daemon):
    daemon = make_daemon(NO_WORKER)
    job = json.loads(run_sai("submit", "later", "--priority", "low", "--json", socket_path=daemon.socket).stdout)
    assert job["position"] == 1
    out = run_sai("priority", job["job_id"], "critical", socket_path=daemon.socket)
    assert out.returncode == 0 and "now critical" in out.stdout
    assert "queue running" in run_sai("resume", socket_path=daemon.socket).stdout
    assert "queue paused" in run_sai("pause", socket_path=daemon.socket).stdout
    status = run_sai("status", socket_path=daemon.socket).stdout
    assert "PAUSED" in status and "1 queued" in status
    assert "tiny, not loaded (worker " in status  # no preload: the configured model, named before it loads
    out = run_sai("cancel", job["job_id"], socket_path=daemon.socket)
    assert out.returncode == 0 and "cancelled" in out.stdout


def test_bad_config_stops_the_daemon_with_file_and_key(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[queue]\nmax_batch = -1\n")
    out = run_sai("daemon", "--config", str(config), "--socket", str(tmp_path / "d.sock"),
              "--state-dir", str(tmp_path / "state"))
    assert out.returncode == ExitCode.NOT_STARTED
    assert str(config) in out.stderr and "queue.max_batch" in out.stderr and "greater than 0" in out.stderr


async def test_output_cut_short_by_a_pipe_is_quiet(make_daemon):
    """`sai … | head` ends the reader early: sai stops without a BrokenPipeError traceback."""
    daemon = make_daemon({"queue": {"start_paused": True, "burst": 200}})
    client = await daemon.client()
    for i in range(150):  # well past a pipe's 64 KiB of JSON, so the writer meets the closed end
        await client.call("job.submit", prompt=f"pipe {i}", client_token=f"pipe-{i}")
    sai = f"{sys.executable} -m console.cli --socket {daemon.socket}"
    for command in (f"{sai} audit tail -n 1000 --json | head -c 10", f"{sai} jobs --json | head -c 10"):
        out = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=120)
        assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr, out.stderr
        assert out.returncode == 0, (command, out.returncode, out.stderr)


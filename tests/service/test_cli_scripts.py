"""`sai` in scripts: the real CLI against a real daemon. Listings that pipe, job id prefixes, `sai wait`,
JSON errors, one exit status per outcome (documented once), defaults in every --help."""

from __future__ import annotations

import argparse
import json
import os
import pty
import re
import signal
import subprocess
import sys
import time

from console.cli import build_parser
from daemon.exitcodes import ExitCode
from tests.harness import ROOT, run_sai

PAUSED = {"queue": {"start_paused": True, "burst": 200}}


async def _submit_many(daemon, count: int, prompt: str = "job {i}") -> list[str]:
    client = await daemon.client()
    try:
        return [(await client.call("job.submit", prompt=prompt.format(i=i), client_token=f"t{i}"))["job_id"]
                for i in range(count)]
    finally:
        await client.close()


async def test_jobs_says_how_many_it_left_out_and_pipes_one_job_a_line(make_daemon):
    daemon = make_daemon(PAUSED)
    ids = await _submit_many(daemon, 60, prompt="line one {i}\nline two\tend")
    out = run_sai("jobs", socket_path=daemon.socket)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 50 and out.stdout.count("\n") == 50  # the default, no header, no wrapped prompt
    assert [line.split("\t")[0] for line in lines] == ids[:50]  # whole ids, in start order
    assert lines[0].split("\t")[2] == "queued" and lines[0].split("\t")[-1] == "line one 0 line two end"
    assert "50 of 60 jobs shown" in out.stderr and "--all" in out.stderr
    every = run_sai("jobs", "--all", socket_path=daemon.socket)
    assert every.stdout.count("\n") == 60 and every.stderr == ""
    few = run_sai("jobs", "--limit", "5", "--json", socket_path=daemon.socket)
    listed = json.loads(few.stdout)
    assert len(listed["jobs"]) == 5 and listed["total"] == 60 and "5 of 60" in few.stderr

    # on a narrow terminal the table cuts the prompt, never the id
    primary, secondary = pty.openpty()
    env = {**os.environ, "SAI_SOCKET": str(daemon.socket), "COLUMNS": "72", "LINES": "200"}
    proc = subprocess.run([sys.executable, "-m", "console.cli", "jobs", "--limit", "3"], stdout=secondary,
                          stderr=subprocess.PIPE, cwd=ROOT, env=env, timeout=120)
    os.close(secondary)
    shown = re.sub(r"\x1b\[[0-9;]*m", "", os.read(primary, 65536).decode())
    os.close(primary)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in shown.splitlines() if line.strip()]
    assert rows[0].split()[:2] == ["JOB", "PRI"] and len(rows) == 4, shown
    assert all(row.split()[:3] == [job_id, "normal", "queued"] for row, job_id in zip(rows[1:], ids)), shown
    assert all(len(row.rstrip()) <= 72 and "line one" in row for row in rows[1:]), shown


async def test_a_unique_start_of_an_id_names_the_job_everywhere(make_daemon):
    daemon = make_daemon(PAUSED)
    first, second = await _submit_many(daemon, 2)
    short = next(first[:n] for n in range(2, 13) if not second.startswith(first[:n]))
    detail = json.loads(run_sai("job", short, "--json", socket_path=daemon.socket).stdout)
    assert detail["job_id"] == first
    out = run_sai("priority", short[1:], "high", socket_path=daemon.socket)  # the leading j may be left out
    assert out.returncode == 0 and out.stdout.startswith(f"{first} now high"), out.stderr
    out = run_sai("cancel", short, socket_path=daemon.socket)
    assert out.returncode == 0 and out.stdout.strip() == f"{first} cancelled"

    ambiguous = run_sai("job", "j", socket_path=daemon.socket)
    assert ambiguous.returncode == ExitCode.FAILURE
    assert "ambiguous" in ambiguous.stderr and first in ambiguous.stderr and second in ambiguous.stderr
    unknown = run_sai("export", "jfffffff", "-o", "/tmp/never.png", socket_path=daemon.socket)
    assert unknown.returncode == ExitCode.FAILURE and "no job jfffffff" in unknown.stderr
    assert "Traceback" not in ambiguous.stderr + unknown.stderr


async def test_wait_exit_status_says_how_the_jobs_ended(make_daemon):
    daemon = make_daemon(PAUSED)
    [queued] = await _submit_many(daemon, 1)
    out = run_sai("wait", queued[:8], "--timeout", "1", socket_path=daemon.socket)
    assert out.returncode == ExitCode.TIMEOUT and f"not finished: {queued}" in out.stderr
    assert out.stdout.strip() == f"{queued} still queued"

    run_sai("cancel", queued, socket_path=daemon.socket)
    out = run_sai("wait", queued, "--json", socket_path=daemon.socket)
    result = json.loads(out.stdout)
    assert out.returncode == ExitCode.JOB_FAILED and result["outcome"] == "job-failed"
    assert [job["state"] for job in result["jobs"]] == ["cancelled"]

    assert "queue running" in run_sai("resume", socket_path=daemon.socket).stdout
    made = json.loads(run_sai("submit", "a harbour", "--steps", "2", "--json", socket_path=daemon.socket).stdout)
    out = run_sai("wait", made["job_id"], socket_path=daemon.socket)
    assert out.returncode == ExitCode.OK, out.stderr
    assert out.stdout.splitlines() == [f"{made['job_id']} succeeded",
                                       f"  export: sai export {made['job_id']} -o {made['job_id']}.png"]


def test_submit_wait_interrupted_says_the_job_goes_on(make_daemon):
    daemon = make_daemon(PAUSED)
    env = {**os.environ, "SAI_SOCKET": str(daemon.socket)}
    # Ctrl-C at a terminal: the command starts with SIGINT's default disposition. A suite started in
    # the background of a script inherits SIGINT ignored (as shells set it for `&` jobs), and so would
    # the command, which then rightly goes on waiting.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "console.cli", "submit", "patience", "--wait"], cwd=ROOT,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 120
    while not json.loads(run_sai("jobs", "--json", socket_path=daemon.socket).stdout)["jobs"]:
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    [job] = json.loads(run_sai("jobs", "--json", socket_path=daemon.socket).stdout)["jobs"]
    time.sleep(0.5)  # past the submit's reply, into the wait
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.INTERRUPTED and "Traceback" not in err, err
    assert "goes on in the daemon" in err and f"sai wait {job['job_id']}" in err and f"sai job {job['job_id']}" in err
    assert json.loads(run_sai("job", job["job_id"], "--json", socket_path=daemon.socket).stdout)["state"] == "queued"


def test_json_errors_are_json_on_stdout_with_the_same_status(make_daemon, tmp_path):
    daemon = make_daemon(PAUSED)
    out = run_sai("job", "j0123456789ab", "--json", socket_path=daemon.socket)
    error = json.loads(out.stdout)["error"]
    assert out.returncode == ExitCode.FAILURE == error["exit"] and error["code"] == "failure"
    assert error["message"].startswith("no job j0123456789ab") and error["rpc_code"] == -32002
    out = run_sai("jobs", "--limit", "0", "--json", socket_path=daemon.socket)
    error = json.loads(out.stdout)["error"]
    assert out.returncode == ExitCode.USAGE == error["exit"] and "--limit" in error["message"]
    out = run_sai("status", "--json", socket_path=tmp_path / "nobody.sock")
    assert out.returncode == ExitCode.UNAVAILABLE == json.loads(out.stdout)["error"]["exit"]
    out = run_sai("report", "--json", "--format", "csv")
    assert out.returncode == ExitCode.USAGE and json.loads(out.stdout)["error"]["code"] == "usage"
    report = run_sai("report", "--json", socket_path=daemon.socket)  # one flag style: --json here too
    assert report.returncode == 0 and "jobs" in json.loads(report.stdout), report.stderr


def test_another_daemon_on_the_socket_is_its_own_exit_status(make_daemon, tmp_path):
    daemon = make_daemon(PAUSED)
    out = run_sai("daemon", "--socket", str(daemon.socket), "--state-dir", str(tmp_path / "other"),
                  "--config", str(daemon.config_file))
    assert out.returncode == ExitCode.ALREADY_RUNNING, out.stderr[-2000:]
    assert "not starting: another daemon" in out.stderr


def test_exit_statuses_are_documented_once_the_same_everywhere():
    assert len({code.value for code in ExitCode}) == len(ExitCode)
    epilog = run_sai("--help").stdout.split("exit statuses")[1]
    docs = (ROOT / "docs" / "operations.md").read_text()
    for value, name, meaning in ExitCode.describe():
        assert f"{value:>3}  {name}" in epilog
        assert f"| {value} | `{name}` | {meaning} |" in docs, name


def test_every_help_shows_the_defaults():
    """Each option that has a default says what it is, in every command's --help."""
    unsaid = []

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, [*path, name])
            elif action.option_strings and action.default not in (None, False, argparse.SUPPRESS) \
                    and action.help != argparse.SUPPRESS and action.dest not in ("help", "version"):
                if "default" not in parser._get_formatter()._get_help_string(action):
                    unsaid.append(f"sai {' '.join(path)} {action.option_strings[-1]}")

    walk(build_parser(), [])
    assert unsaid == []
    jobs_help = run_sai("jobs", "--help").stdout
    assert "(default: 50)" in jobs_help and "--all" in jobs_help
    for command in ("job", "cancel", "export", "priority", "wait"):
        assert f"sai {command} [-h]" in (usage := run_sai(command, "--help").stdout) and "JOB" in usage


def test_help_runs_without_a_daemon_or_torch():
    out = subprocess.run([sys.executable, "-m", "console.cli", "wait", "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0 and f"{ExitCode.JOB_FAILED:d}: any failed" in out.stdout.replace("\n", " ")

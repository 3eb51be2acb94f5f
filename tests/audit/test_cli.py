"""`sai audit ...` end to end: the real CLI and client, the real socket server and method
registry, the audit handlers and a real AuditLog (no model, no queue: a daemon holding only the log)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest

from console.cli import main
from daemon.exitcodes import ExitCode
from tests.audit.audit_helpers import ALICE, Served, record, sai


def test_tail_table_and_json(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    assert sai(served, "tail", "-n", "5") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["SEQ", "TIME", "(UTC)"] and len(lines) == 6
    assert [int(line.split()[0]) for line in lines[1:]] == [16, 17, 18, 19, 20]
    assert sai(served, "tail", "--json", "--action", "job.submit", "--actor", "alice", "-n", "100") == 0
    entries = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert entries and all(e["action"] == "job.submit" and e["actor"]["user"] == "alice" for e in entries)


def test_tail_follow_prints_new_entries(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    outcome: list[int] = []
    runner = threading.Thread(
        target=lambda: outcome.append(sai(served, "tail", "-f", "-n", "1", "--action", "job.cancel")))
    runner.start()

    def wait_for(text: str) -> str:
        deadline, seen = time.monotonic() + 20, ""
        while time.monotonic() < deadline:
            seen += capsys.readouterr().out
            if text in seen:
                return seen
            time.sleep(0.05)
        raise AssertionError(f"{text!r} never printed; got {seen!r}")

    wait_for("job-0019")  # the last job.cancel so far
    served.call(served.log.append(ALICE, "job.start", "job-0100", {}))
    served.call(served.log.append(ALICE, "job.cancel", "job-0101", {}))
    out = wait_for("job-0101")
    assert "job-0100" not in out  # --action filters followed entries too
    served.stop()
    runner.join(20)
    assert outcome == [1]  # the daemon went away


def test_verify_checkpoint_and_against(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    assert sai(served, "verify") == 0
    assert capsys.readouterr().out.startswith("ok: the audit log verified, 21 entries")
    assert sai(served, "verify", "--deep", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"ok": True, "size": 21, "first_bad": None, "reason": None,
                                                  "jobs_checked": 0, "unrecorded_jobs": []}
    saved = served.dir / "cp.txt"
    assert sai(served, "checkpoint", "-o", str(saved)) == 0
    note = capsys.readouterr().out
    assert note == saved.read_text() and note.startswith("sai.test/audit\n21\n")
    served.call(served.log.append(*record(50)))
    assert sai(served, "verify", "--against", str(saved)) == 0
    capsys.readouterr()
    assert sai(served, "verify", "--against", str(served.dir / "missing.txt")) == 1
    assert "cannot read checkpoint" in capsys.readouterr().err
    other = Path(str(saved) + ".other")
    other.write_text(note.replace("\n21\n", "\n20\n"))
    assert sai(served, "verify", "--against", str(other)) == ExitCode.VERIFY_FAILED
    assert "FAILED" in capsys.readouterr().err


def test_proof_and_consistency_are_checked_by_the_cli(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    assert sai(served, "proof", "7") == 0
    out = capsys.readouterr().out
    assert "entry 7 in tree of 21" in out and "proof verified against the root" in out
    assert sai(served, "proof", "3", "--tree-size", "9", "--json") == 0
    reply = json.loads(capsys.readouterr().out)
    assert reply["tree_size"] == 9 and reply["verified"] is True
    assert sai(served, "consistency", "5") == 0
    assert "consistency verified" in capsys.readouterr().out
    assert sai(served, "proof", "99") == 1
    err = capsys.readouterr().err
    assert "sai: invalid index" in err and "21" in err


def test_export_then_verify_export_without_a_daemon(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    target = served.dir / "export"
    assert sai(served, "export", str(target)) == 0
    assert "exported 22 entries" in capsys.readouterr().out  # + the audit.export entry itself
    assert main(["audit", "verify-export", str(target)]) == 0
    assert "ok: the export" in capsys.readouterr().out
    assert main(["audit", "verify-export", "--deep", "--json", str(target)]) == 0
    assert json.loads(capsys.readouterr().out)["ok"]
    pem = next((target / "keys").iterdir())
    assert main(["audit", "verify-export", "--key", str(pem), str(target)]) == 0
    capsys.readouterr()
    lines = (target / "entries.jsonl").read_text().splitlines(keepends=True)
    lines[4] = lines[4].replace('"job-', '"jab-')
    (target / "entries.jsonl").write_text("".join(lines))
    assert main(["audit", "verify-export", str(target)]) == ExitCode.VERIFY_FAILED
    assert "first bad entry: 4" in capsys.readouterr().err
    assert sai(served, "export", str(target)) == 1  # not empty: refused
    assert "not empty" in capsys.readouterr().err


def test_unknown_params_are_refused_by_the_registry(served: Served) -> None:
    from daemon.client import DaemonClient
    from daemon.protocol import INVALID_PARAMS, RpcError

    async def probe() -> None:
        async with await DaemonClient.connect(served.socket) as client:
            with pytest.raises(RpcError) as info:
                await client.call("audit.tail", limit=5, verbose=True)
            assert info.value.code == INVALID_PARAMS
            with pytest.raises(RpcError) as info:
                await client.call("audit.proof", index="3")
            assert info.value.code == INVALID_PARAMS
            assert (await client.call("audit.checkpoint"))["checkpoint"].startswith("sai.test/audit\n")

    asyncio.run(probe())

"""An `audit.export` that is refused is recorded as refused, with the reason, not like one that
wrote an export (issue 20 point 7): a viewer's call, a directory that is not empty, a relative path.
A real daemon each, the entries read back with audit.tail and from the export itself."""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Any

import pytest

from daemon.protocol import CONFLICT, INVALID_PARAMS, NOT_PERMITTED, RpcError
from tests.configs import NO_WORKER


async def _exports(client: Any) -> list[dict[str, Any]]:
    entries = (await client.call("audit.tail", limit=50, action="audit.export"))["entries"]
    return [{"subject": e["subject"], **e["details"]} for e in entries]


async def test_a_viewers_export_is_recorded_as_refused_with_the_reason(make_daemon: Any, client_of: Any,
                                                                        tmp_path: Path) -> None:
    daemon = make_daemon({**NO_WORKER, "auth": {"viewer_users": [getpass.getuser()]}})
    client = await client_of(daemon)
    with pytest.raises(RpcError) as refused:
        await client.call("audit.export", directory=str(tmp_path / "out"))
    assert refused.value.code == NOT_PERMITTED
    assert await _exports(client) == [{"subject": str(tmp_path / "out"), "outcome": "refused",
                                       "reason": refused.value.message}]
    assert "needs the admin role" in refused.value.message
    assert not (tmp_path / "out").exists()


async def test_a_bad_directory_is_refused_on_record_and_a_good_export_holds_its_started_entry(
        make_daemon: Any, client_of: Any, tmp_path: Path) -> None:
    daemon = make_daemon(NO_WORKER)
    client = await client_of(daemon)
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("not an export")
    with pytest.raises(RpcError) as not_empty:
        await client.call("audit.export", directory=str(full))
    assert not_empty.value.code == CONFLICT and "not empty" in not_empty.value.message
    with pytest.raises(RpcError) as relative:
        await client.call("audit.export", directory="relative/dir")
    assert relative.value.code == INVALID_PARAMS
    good = tmp_path / "good"
    reply = await client.call("audit.export", directory=str(good))
    assert await _exports(client) == [
        {"subject": str(full), "outcome": "refused", "reason": not_empty.value.message},
        {"subject": "relative/dir", "outcome": "refused", "reason": relative.value.message},
        {"subject": str(good), "outcome": "started"}]
    assert (full / "keep.txt").read_text() == "not an export" and sorted(p.name for p in full.iterdir()) == ["keep.txt"]
    exported = [json.loads(line) for line in (good / "entries.jsonl").read_text().splitlines()]
    assert len(exported) == reply["entries"]
    assert exported[-1]["action"] == "audit.export" and exported[-1]["details"] == {"outcome": "started"}

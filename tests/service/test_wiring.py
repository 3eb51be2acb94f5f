"""How the daemon's parts are wired (issue 14 points 1 and 2): each part gets what it uses when it
is built, as typed keywords; nothing is assigned into a part afterwards; the queue never calls up
into the dispatcher or the service; Reactions takes its alerts, bus, audit and queue, not the Daemon.

Real parts throughout: SQLite files in a temporary directory, the real config, the real
AlertBook, and an in-process Daemon started and shut down as `sai daemon` does (no worker:
the model is not preloaded and the queue starts paused).
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import tempfile
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from daemon import config as config_module
from daemon.alarms import raise_alarm
from daemon.auth import in_process_peer
from daemon.catalog import ModelCatalog
from daemon.dispatch import Box, Lane, OutputWriter
from daemon.events import EventBus
from daemon.monitor.alerts import AlertBook
from daemon.protocol import UNAVAILABLE, RpcError
from daemon.queue.admission import Admission
from daemon.queue.jobs import FAILED
from daemon.queue.manager import QueueManager
from daemon.queue.store import JobStore
from daemon.reactions import Reactions
from daemon.worker.memory_model import MemoryModel
from daemon.worker.supervisor import WorkerSupervisor
from tests.harness import to_toml

DAEMON = Path(__file__).resolve().parents[2] / "daemon"
HOOKS = {
    QueueManager: ("audit", "memory", "capacity", "models", "prompt_digest"),
    Lane: ("memory", "models", "worker_events", "batch_figures", "watch_work", "only_lane"),
    OutputWriter: ("audit", "outputs_blocked"),
    Box: ("worker_events",),
    WorkerSupervisor: ("watch_reader", "on_model"),
}


def test_collaborators_are_required_keywords_with_no_stand_in() -> None:
    for part, hooks in HOOKS.items():
        params = inspect.signature(part).parameters
        for hook in hooks:
            assert hook in params, f"{part.__name__} is not given {hook} when built"
            assert params[hook].kind is inspect.Parameter.KEYWORD_ONLY, (part.__name__, hook)
            assert params[hook].default is inspect.Parameter.empty, f"{part.__name__}.{hook} has a stand-in default"


WIRING = ("service.py", "assembly.py", "reactions.py", "alarms.py", "dispatch/", "server.py", "connection.py",
          "queue/manager.py", "worker/supervisor.py", "monitor/service.py", "monitor/service_metrics.py", "api/")


def _assigned_chains(tree: ast.AST) -> list[str]:
    """Assignments into another object's attributes, `x.part.attr = ...`, where `x` is `self` or a
    parameter: a part reached through the object or argument at hand. (A function's own records,
    made or looked up in its body, are its own business.)"""
    found = []
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        roots = {arg.arg for arg in [*func.args.posonlyargs, *func.args.args, *func.args.kwonlyargs]}
        for node in ast.walk(func):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
                if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
            for target in targets:
                for leaf in target.elts if isinstance(target, ast.Tuple) else [target]:
                    chain = leaf
                    while isinstance(chain, ast.Attribute):
                        chain = chain.value
                    if (isinstance(leaf, ast.Attribute) and isinstance(leaf.value, ast.Attribute)
                            and isinstance(chain, ast.Name) and chain.id in roots):
                        found.append(f"{ast.unparse(leaf)} (line {leaf.lineno})")
    return sorted(set(found))


def test_no_part_assigns_into_another() -> None:
    """The modules that build and connect the parts set no attribute of another part."""
    paths = [path for name in WIRING for path in ([DAEMON / name] if name.endswith(".py")
                                                  else sorted((DAEMON / name).glob("*.py")))]
    offenders = {str(path.relative_to(DAEMON)): chains for path in paths
                 if path.exists() and (chains := _assigned_chains(ast.parse(path.read_text())))}
    assert offenders == {}


def test_reactions_do_not_import_the_service() -> None:
    tree = ast.parse((DAEMON / "reactions.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert "daemon.service" not in imported


class Audited:
    """Collects audit entries in a list (an audit hook as the parts are given one)."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, dict[str, Any]]] = []

    async def __call__(self, peer: Any, action: str, subject: str, details: dict[str, Any]) -> None:
        self.entries.append((action, subject, details))


def submit_params(**given: Any) -> dict[str, Any]:
    """job.submit's parameters as the handler passes them (None: the configured default)."""
    return {"prompt": "a lighthouse", "negative_prompt": "", "width": None, "height": None, "steps": None,
            "guidance": None, "seed": None, "priority": None, "count": None, "reproducible": False, **given}


async def _queue(tmp_path: Path, bus: EventBus, audit: Audited, memory: MemoryModel,
                 capacity: int | None) -> QueueManager:
    cfg = config_module.load(system_file=None, environ={})
    store = await JobStore.open(tmp_path / "jobs.sqlite3")
    queue = QueueManager(store, Admission(cfg), bus, cfg, audit=audit, memory=memory, capacity=lambda: capacity,
                         models=ModelCatalog(cfg, tmp_path, record=audit, publish=bus.publish),
                         prompt_digest=lambda prompt, negative: {})
    await queue.recover()
    return queue


async def test_fit_refusal_at_submit_comes_from_the_shared_memory_model(tmp_path: Path) -> None:
    memory, audit = MemoryModel(), Audited()
    memory.observe({"bytes_per_image": 2**30, "pixels": 512 * 512})  # as the dispatcher feeds it
    queue = await _queue(tmp_path, EventBus(), audit, memory, capacity=2**29)
    try:
        with pytest.raises(RpcError) as refused:
            await queue.submit(in_process_peer(), None, **submit_params(width=512, height=512))
        assert refused.value.code == UNAVAILABLE and refused.value.data == {"reason": "memory"}
        assert audit.entries[-1][0] == "job.refuse" and "GiB" in audit.entries[-1][2]["reason"]
        assert not hasattr(queue, "fit_refusal") and not hasattr(queue, "on_finished")
    finally:
        await queue.store.close()


async def test_reactions_take_alerts_bus_audit_and_queue(tmp_path: Path) -> None:
    bus, audit = EventBus(), Audited()
    queue = await _queue(tmp_path, bus, audit, MemoryModel(), capacity=None)
    db = await aiosqlite.connect(tmp_path / "metrics.sqlite3")
    try:
        alerts = await AlertBook.open(db, bus, audit)
        reactions = Reactions(alerts=alerts, bus=bus, audit=audit, queue=queue)
        events: list[dict[str, Any]] = []
        bus.listen({"queue"}, lambda topic, data: events.append(data))

        raise_alarm(bus, "jobs_db.locked", "writes wait on a lock")  # as the job store reports a stall
        await reactions.drain()
        assert alerts.open_alerts["jobs_db.locked"]["severity"] == "critical"
        raise_alarm(bus, "jobs_db.locked", None)
        await reactions.drain()
        assert "jobs_db.locked" not in alerts.open_alerts

        reactions.worker_event("ready", {"path": str(tmp_path / "model"), "model_id": "tiny", "pid": 7},
                               {"state": "ready", "halted": None})
        await reactions.drain()
        assert events[-1]["kind"] == "worker.ready" and events[-1]["worker"] == {"state": "ready", "halted": None}
        assert "path" not in events[-1]
        assert "model.load" not in [entry[0] for entry in audit.entries]  # the catalog records loads, once
        queue.models.worker_started({"weights_sha256": "ab" * 32, "device": "cpu", "pid": 7})
        await queue.models.drain()
        assert ("model.load", "tiny", "ab" * 32) in [(a, s, d.get("weights_sha256")) for a, s, d in audit.entries]
    finally:
        await db.close()
        await queue.store.close()


async def test_daemon_builds_its_parts_in_order_and_shares_one_memory_model() -> None:
    from daemon.service import Daemon

    root = Path(tempfile.mkdtemp(prefix="sai-wire-", dir="/tmp"))  # socket paths are limited to 107 bytes
    (root / "config.toml").write_text(to_toml({"model": {"preload": False}, "queue": {"start_paused": True},
                                                "monitor": {"enabled": False}}))
    cfg = config_module.load(root / "config.toml", environ={}, system_file=None)
    daemon = Daemon(cfg, root / "d.sock", root / "state")
    await daemon.startup()
    try:
        assert daemon.queue.memory is daemon.dispatcher.lanes[0].memory
        # a finished job reaches the monitor's failure rate as a `job` event, not as a callback
        reply = await daemon.queue.submit(in_process_peer(), None, **submit_params())
        job = await daemon.queue.get(reply["job_id"])
        await daemon.queue.finish([job], FAILED, "failed on purpose by the test")
        assert daemon.monitor.job_summary()["failed"] == 1
        # a stall the job store reports becomes a critical alert (an alarm event on the bus)
        daemon.store.on_stall("writes wait on a lock another process holds")
        await asyncio.sleep(0)
        await daemon.parts.reactions.drain()
        assert daemon.monitor.alerts.open_alerts["jobs_db.locked"]["severity"] == "critical"
    finally:
        daemon.request_stop()
        await daemon.shutdown()
    assert daemon.exit_code == 0

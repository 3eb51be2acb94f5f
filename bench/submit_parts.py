"""Where a submit's CPU goes: each part of `job.submit` measured alone, in one run, against the
budget the 3,000 submits/s target leaves (one core, because the daemon's Python runs under one GIL).

    .venv/bin/python bench/submit_parts.py [--n 8000] [--clients 20]

Parts, each with `--clients` concurrent producers on a uvloop event loop and nothing else running
in the process (no sockets unless said), CPU time of the whole process per operation:
  request path   `daemon.status` over real sockets to a real daemon (framing, JSON, dispatch, reply)
  admission      `Admission.admit` on a short prompt (ranges, prompt hygiene, policy, token bound)
  audit append   `AuditLog.append` of a submit's entry: checks, canonical JSON, Ed25519 signature,
                 Merkle frontier, group commit (WAL, synchronous=FULL)
  job store      `JobStore.insert`: the prompt sealed (AES-GCM), the row group-committed
The sum is a floor: bench/submit.py measures the whole submit, which also pays for the parts
sharing one GIL and one loop.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvloop
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from submit import TARGET, daemon_calls

from daemon.audit.log import AuditLog
from daemon.config import load
from daemon.crypto.envelope import PromptSealer
from daemon.crypto.keys import KeyStore
from daemon.queue.admission import Admission
from daemon.queue.jobs import QUEUED, Job, new_job_id
from daemon.queue.store import JobStore
from tests.harness import DaemonProcess

ACTOR = {"uid": 1000, "user": "bench", "pid": 1234}
PARAMS = {"width": 512, "height": 512, "steps": 20, "guidance": 7.5, "seed": 123, "count": 1, "reproducible": False}


async def cpu_per_op(clients: int, n: int, op: Callable[[int, int], Awaitable[object]]) -> float:
    """Process CPU seconds per call of `op(client, i)`, `clients` producers running at once."""
    per_client = n // clients

    async def producer(k: int) -> None:
        for i in range(per_client):
            await op(k, i)

    started = time.process_time()
    await asyncio.gather(*(producer(k) for k in range(clients)))
    return (time.process_time() - started) / (per_client * clients)


async def audit_part(root: Path, clients: int, n: int) -> float:
    log = await AuditLog.open(root / "audit.db", Ed25519PrivateKey.generate(), "bench/sai-audit")
    details = {"priority": "normal", "risk": 0.0, **PARAMS, "prompt_sha256": "a" * 64,
               "negative_prompt_sha256": "b" * 64}
    try:
        return await cpu_per_op(clients, n, lambda k, i: log.append(ACTOR, "job.submit", f"j{k}-{i}", details))
    finally:
        await log.close()


async def store_part(root: Path, clients: int, n: int) -> float:
    sealer = PromptSealer(KeyStore.open(root / "keys", None, scrypt_log2_n=10))
    store = await JobStore.open(root / "jobs.sqlite3", sealer)
    seqs = iter(range(1, n + 1))

    def insert(k: int, i: int) -> Awaitable[None]:
        now = time.time()
        return store.insert(Job(job_id=new_job_id(), seq=next(seqs), state=QUEUED, priority=1, params=dict(PARAMS),
                                prompt=f"bench prompt {k}-{i}", negative_prompt="", user="bench", uid=1000,
                                created_at=now, enqueued_at=now))
    try:
        return await cpu_per_op(clients, n, insert)
    finally:
        await store.close()


def admission_part(n: int) -> float:
    admission = Admission(load(None, environ={}, system_file=None))
    started = time.process_time()
    for i in range(n):
        admission.admit(f"bench prompt {i}", "", None, None, None, None, None, None, None, False)
    return (time.process_time() - started) / n


def request_path_part(root: Path, clients: int, n: int) -> float:
    daemon = DaemonProcess.create(root, {"model": {"preload": False}})
    daemon.start()
    try:
        return uvloop.run(daemon_calls(daemon, clients, n // clients, "daemon.status")).daemon_cpu
    finally:
        daemon.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8000, help="operations per part")
    parser.add_argument("--clients", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sai-bench-", dir="/tmp") as tmp:
        root = Path(tmp)
        (root / "daemon").mkdir()
        parts = {
            "request path (daemon.status)": request_path_part(root / "daemon", args.clients, args.n),
            "admission": admission_part(args.n),
            "audit append (signed, committed)": uvloop.run(audit_part(root, args.clients, args.n)),
            "job store insert (sealed, committed)": uvloop.run(store_part(root, args.clients, args.n)),
        }
    budget = 1 / TARGET
    print(f"submit parts, each alone: {args.clients} producers, {args.n} operations each; process CPU per operation")
    for name, cpu in parts.items():
        print(f"  {name:38s} {cpu * 1e3:7.3f} ms   {cpu / budget:5.2f} of the budget")
    total = sum(parts.values())
    print(f"  {'sum (a floor for one submit)':38s} {total * 1e3:7.3f} ms   {total / budget:5.2f} of the budget")
    print(f"  budget for {TARGET:.0f} submits/s on one core (the GIL): {budget * 1e3:.3f} ms per submit; "
          f"the parts alone allow at most {1 / total:.0f} submits/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Load: concurrent clients against a real daemon with the tiny model, mixing job.submit,
job.list, job.get, job.cancel and events.subscribe sessions, from two users when run as root
(the clients of the second run as `nobody` in a forked process). Prints per-method latency,
errors by code, jobs submitted against jobs found afterwards, the connection limit probed
mid-run, and each user's submits against the per-user rate limit and queue cap.

    .venv/bin/python bench/load.py [--clients 50] [--duration 60] [--sizes 64 128] [--steps 4]
"""

from __future__ import annotations

import argparse
import asyncio
import grp
import json
import os
import pwd
import random
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon import protocol
from daemon.client import DaemonClient, DaemonUnavailable
from daemon.protocol import CONFLICT, RATE_LIMITED, RpcError
from tests.harness import DaemonProcess, build_tiny

OPS = {"job.submit": 0.3, "job.get": 0.4, "job.list": 0.2, "job.cancel": 0.1}
EXPECTED = {("job.submit", RATE_LIMITED): "per-user rate limit or queue cap (config [queue])",
            ("job.cancel", CONFLICT): "the job had finished before the cancel arrived"}
FLOOD_HOLD = 2.0
SECOND_USER = "nobody"


@dataclass
class Tally:
    """What one process's clients saw; sent to the parent as JSON."""

    user: str
    clients: int
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    submitted: list[str] = field(default_factory=list)
    rate_limited: int = 0
    queue_capped: int = 0
    events: int = 0
    sessions: int = 0

    def to_json(self) -> dict[str, Any]:
        return {**vars(self), "latencies": dict(self.latencies), "errors": dict(self.errors)}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Tally:
        return cls(**{**raw, "latencies": defaultdict(list, raw["latencies"]), "errors": Counter(raw["errors"])})

    def error(self, method: str, exc: Exception) -> None:
        code = exc.code if isinstance(exc, RpcError) else "lost"
        self.errors[f"{method} {code}"] += 1
        if (method, code) not in EXPECTED:
            self.unexpected.append(f"{method}: {exc}")
        elif method == "job.submit":
            if exc.data and exc.data.get("retry_after") is None:  # type: ignore[union-attr]
                self.queue_capped += 1
            else:
                self.rate_limited += 1


@dataclass
class Plan:
    socket: str
    started: float
    duration: float
    think: float
    sizes: list[int]
    steps: int
    flood_at: float

    def in_flood_window(self, now: float) -> bool:
        """Subscribers do not reconnect while the limit probe holds the daemon at its limit."""
        return self.flood_at - 0.5 <= now <= self.flood_at + FLOOD_HOLD + 3.0


async def timed(tally: Tally, client: DaemonClient, method: str, params: dict[str, Any]) -> Any:
    started = time.perf_counter()
    try:
        result = await client.call(method, **params)
    except RpcError as exc:
        tally.latencies[f"{method} (refused)"].append(time.perf_counter() - started)
        tally.error(method, exc)
        return None
    tally.latencies[method].append(time.perf_counter() - started)
    return result


async def job_client(plan: Plan, tally: Tally, rng: random.Random) -> None:
    client = await DaemonClient.connect(plan.socket)
    mine: list[str] = []
    deadline = plan.started + plan.duration
    try:
        while time.time() < deadline:
            method = rng.choices(list(OPS), list(OPS.values()))[0]
            if method in ("job.get", "job.cancel") and not mine:
                method = "job.submit"
            if method == "job.submit":
                side = rng.choice(plan.sizes)
                params: dict[str, Any] = {
                    "prompt": f"load test {rng.randrange(10**6)}", "width": side, "height": side,
                    "steps": plan.steps, "seed": rng.randrange(2**32), "client_token": uuid.uuid4().hex,
                    "priority": rng.choice(["low", "normal", "high"])}
            elif method == "job.list":
                params = {"limit": 50, **({"state": "queued"} if rng.random() < 0.5 else {})}
            else:
                params = {"job_id": rng.choice(mine[-20:])}
            result = await timed(tally, client, method, params)
            if method == "job.submit" and result is not None:
                mine.append(result["job_id"])
                tally.submitted.append(result["job_id"])
            elif method == "job.cancel" and params["job_id"] in mine:
                mine.remove(params["job_id"])  # cancelled now, or finished before: not worth cancelling again
            await asyncio.sleep(rng.uniform(0, 2 * plan.think))
    except DaemonUnavailable as exc:
        tally.error("connection", exc)
    finally:
        await client.close()


async def subscriber(plan: Plan, tally: Tally, rng: random.Random) -> None:
    """Sessions of 2 to 6 s: connect, subscribe to job and queue events, read, hang up."""
    deadline = plan.started + plan.duration
    while time.time() < deadline:
        if plan.in_flood_window(time.time()):
            await asyncio.sleep(0.2)
            continue
        try:
            client = await DaemonClient.connect(plan.socket)
            if await timed(tally, client, "events.subscribe", {"topics": ["job", "queue"]}) is None:
                await client.close()
                await asyncio.sleep(1.0)
                continue
            session_end = min(deadline, time.time() + rng.uniform(2, 6))
            while (left := session_end - time.time()) > 0:
                try:
                    if await client.next_event(timeout=left) is None:
                        raise DaemonUnavailable("the daemon closed the event feed")
                except TimeoutError:
                    break
                tally.events += 1
            await client.close()
            tally.sessions += 1
        except DaemonUnavailable as exc:
            tally.error("events.subscribe", exc)


async def run_clients(plan: Plan, tally: Tally, seed: int) -> Tally:
    await asyncio.sleep(max(0.0, plan.started - time.time()))
    subscribers = max(1, round(tally.clients / 10))
    rngs = [random.Random(seed * 1000 + i) for i in range(tally.clients)]
    await asyncio.gather(*(subscriber(plan, tally, rngs[i]) if i < subscribers else job_client(plan, tally, rngs[i])
                           for i in range(tally.clients)))
    return tally


async def probe_connection_limit(plan: Plan, limit: int) -> dict[str, Any]:
    """At `flood_at`, open connections until one is refused; hold them FLOOD_HOLD s, then close."""
    await asyncio.sleep(max(0.0, plan.flood_at - time.time()))
    held: list[asyncio.StreamWriter] = []
    refusal: dict[str, Any] | None = None
    for i in range(limit + 20):
        reader, writer = await asyncio.open_unix_connection(plan.socket, limit=protocol.STREAM_LIMIT)
        try:
            writer.write(protocol.encode(protocol.request("daemon.status", None, i)))
            await writer.drain()
        except ConnectionError:
            pass
        try:
            reply = json.loads(await asyncio.wait_for(reader.readline(), 10) or b"null")
        except ConnectionError:
            reply = None
        if isinstance(reply, dict) and "result" in reply:
            held.append(writer)
            continue
        writer.close()
        refusal = reply["error"] if isinstance(reply, dict) else {"code": None, "message": "closed without a reply"}
        break
    await asyncio.sleep(FLOOD_HOLD)
    for writer in held:
        writer.close()
    return {"accepted": len(held), "refusal": refusal}


async def watch_queue(plan: Plan, by_user: dict[str, int]) -> None:
    """The most jobs each user had queued at once, sampled every second."""
    client = await DaemonClient.connect(plan.socket)
    try:
        while time.time() < plan.started + plan.duration:
            jobs = (await client.call("job.list", state="queued", limit=1000))["jobs"]
            for user, n in Counter(job["user"] for job in jobs).items():
                by_user[user] = max(by_user.get(user, 0), n)
            await asyncio.sleep(1.0)
    finally:
        await client.close()


async def parent_side(plan: Plan, tally: Tally, limit: int) -> tuple[Tally, dict[str, Any], dict[str, int]]:
    most_queued: dict[str, int] = {}
    results = await asyncio.gather(run_clients(plan, tally, 1), probe_connection_limit(plan, limit),
                                   watch_queue(plan, most_queued))
    return results[0], results[1], most_queued


async def account(socket_path: str, ids: list[str]) -> Counter[str]:
    """The state of every job submitted; `lost` for any the daemon no longer knows."""
    states: Counter[str] = Counter()
    client = await DaemonClient.connect(socket_path)

    async def one(job_id: str) -> str:
        try:
            return (await client.call("job.get", job_id=job_id))["state"]
        except RpcError as exc:
            return "lost" if exc.code == protocol.NOT_FOUND else f"error {exc.code}"

    for first in range(0, len(ids), 200):
        states.update(await asyncio.gather(*(one(job_id) for job_id in ids[first:first + 200])))
    await client.close()
    return states


def fork_second_user(plan: Plan, clients: int) -> tuple[int, int]:
    """A child process as SECOND_USER running `clients` clients; (pid, read end of its report)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        status = 1
        try:
            user = pwd.getpwnam(SECOND_USER)
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            tally = asyncio.run(run_clients(plan, Tally(SECOND_USER, clients), 2))
            with os.fdopen(write_fd, "w") as out:
                json.dump(tally.to_json(), out)
            status = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(status)
    os.close(write_fd)
    return pid, read_fd


def cpu_seconds(daemon: DaemonProcess) -> tuple[float, float]:
    """(daemon, worker) CPU seconds so far, user and system."""
    import psutil

    assert daemon.proc is not None
    times = [psutil.Process(pid).cpu_times() for pid in [daemon.proc.pid, *daemon.worker_pids()]]
    spent = [t.user + t.system for t in times]
    return spent[0], sum(spent[1:])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def report(args: argparse.Namespace, tallies: list[Tally], flood: dict[str, Any], most_queued: dict[str, int],
           states: Counter[str], elapsed: float, config: dict[str, Any], cpu: dict[str, float]) -> int:
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: Counter[str] = Counter()
    for tally in tallies:
        for method, values in tally.latencies.items():
            latencies[method] += values
        errors.update(tally.errors)
    print(f"\n{'method':<28}{'calls':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'calls/s':>9}")
    for method in sorted(latencies):
        values = latencies[method]
        print(f"{method:<28}{len(values):>8}{percentile(values, .5) * 1e3:>9.1f}{percentile(values, .99) * 1e3:>9.1f}"
              f"{max(values) * 1e3:>9.1f}{len(values) / elapsed:>9.1f}")
    unexpected = [line for tally in tallies for line in tally.unexpected]
    print("\nerrors by code:", ", ".join(f"{key}: {n}" for key, n in sorted(errors.items())) or "none")
    for (method, code), why in EXPECTED.items():
        print(f"  expected {method} {code}: {errors.get(f'{method} {code}', 0)} ({why})")
    print(f"  unexpected: {len(unexpected)}" + "".join(f"\n    {line}" for line in unexpected[:10]))
    submitted = sum(len(t.submitted) for t in tallies)
    lost = states.get("lost", 0)
    print(f"\njobs: {submitted} accepted, {sum(states.values()) - lost} found afterwards "
          f"({', '.join(f'{s} {n}' for s, n in sorted(states.items()) if s != 'lost')}); lost {lost}")
    events, sessions = sum(t.events for t in tallies), sum(t.sessions for t in tallies)
    print(f"events: {events} received over {sessions} subscribe sessions")
    print(f"CPU over the run ({os.cpu_count()} cores x {elapsed:.0f} s): " + ", ".join(
        f"{name} {seconds:.0f} s ({seconds / elapsed:.0%} of a core)" for name, seconds in cpu.items()))
    cap = config["daemon"]["max_connections"]
    refusal = flood["refusal"] or {}
    print(f"\nconnection limit {cap}: the probe opened {flood['accepted']} more beside the load's "
          f"({cap - flood['accepted']} open), then was refused with {refusal.get('code')}: {refusal.get('message')!r}")
    queue = config["queue"]
    bound = queue["burst"] + queue["rate_per_minute"] / 60 * elapsed
    print(f"per-user fairness (rate {queue['rate_per_minute']:g}/min, burst {queue['burst']}: at most "
          f"{bound:.0f} submits each in {elapsed:.0f} s; queue cap {queue['max_queued_per_user']}):")
    for tally in tallies:
        accepted = len(tally.submitted)
        print(f"  {tally.user:<8} {tally.clients:>3} clients  accepted {accepted:>5} ({accepted / bound:.2f} of the "
              f"bound, {accepted / max(1, submitted):.0%} of all)  rate-limited {tally.rate_limited:>5}  "
              f"queue-capped {tally.queue_capped:>5}  most queued at once {most_queued.get(tally.user, 0)}")
    return 1 if lost or unexpected else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--think", type=float, default=0.05, help="mean pause between a client's calls, s")
    parser.add_argument("--second-user-share", type=float, default=0.4,
                        help=f"share of the clients run as {SECOND_USER!r} (root only)")
    args = parser.parse_args()
    two_users = os.getuid() == 0 and SECOND_USER in {p.pw_name for p in pwd.getpwall()}
    second = round(args.clients * args.second_user_share) if two_users else 0
    me = pwd.getpwuid(os.getuid()).pw_name
    config: dict[str, Any] = {
        "daemon": {"max_connections": args.clients + 30, "max_connections_per_user": 64 if two_users else 10**4},
        "queue": {"rate_per_minute": 1200.0, "burst": 30, "max_queued_per_user": 100, "max_batch": 4},
        "model": {"threads": 1}, "defaults": {"width": 64, "height": 64, "steps": args.steps}}
    with tempfile.TemporaryDirectory(prefix="sai-load-", dir="/tmp") as tmp:
        root = Path(tmp)
        model = build_tiny(root / "tiny")
        if two_users:
            os.chmod(root, 0o711)
            config["daemon"]["socket_group"] = grp.getgrgid(pwd.getpwnam(SECOND_USER).pw_gid).gr_name
            config["auth"] = {"operator_users": [SECOND_USER]}
        daemon = DaemonProcess.create(root, config, model_dir=model).start()
        print(f"load benchmark: {args.clients} clients for {args.duration:g} s ({args.clients - second} as {me}"
              + (f", {second} as {SECOND_USER}" if second else
                 "; one uid only (not root): every client is this user, each submit with its own client_token")
              + f"), tiny model {'/'.join(map(str, args.sizes))} px {args.steps} steps, "
              f"think {args.think * 1e3:.0f} ms, "
              f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
        plan = Plan(str(daemon.socket), time.time() + 1.0, args.duration, args.think, args.sizes, args.steps,
                    time.time() + 1.0 + args.duration / 2)
        child = fork_second_user(plan, second) if second else None
        try:
            clients_cpu, (daemon_cpu, worker_cpu) = sum(os.times()[:4]), cpu_seconds(daemon)
            tally, flood, most_queued = asyncio.run(parent_side(plan, Tally(me, args.clients - second),
                                                                config["daemon"]["max_connections"]))
            tallies = [tally]
            if child:
                with os.fdopen(child[1]) as report_in:
                    raw = report_in.read()
                os.waitpid(child[0], 0)
                child = None
                if not raw:
                    raise RuntimeError(f"the {SECOND_USER} clients failed (their traceback is above)")
                tallies.append(Tally.from_json(json.loads(raw)))
            elapsed = time.time() - plan.started
            daemon_now, worker_now = cpu_seconds(daemon)
            cpu = {"daemon": daemon_now - daemon_cpu, "worker": worker_now - worker_cpu,
                   "load clients": sum(os.times()[:4]) - clients_cpu}
            states = asyncio.run(account(plan.socket, [j for t in tallies for j in t.submitted]))
            return report(args, tallies, flood, most_queued, states, min(elapsed, args.duration), config, cpu)
        finally:
            if child:
                os.kill(child[0], 9)
                os.waitpid(child[0], 0)
            daemon.stop()


if __name__ == "__main__":
    sys.exit(main())

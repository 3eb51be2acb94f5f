"""The service's own metrics on a real daemon: jobs submitted, refused, cancelled, failed (its worker
killed) and succeeded move the counters and histograms a user expects, and the exposition that
`sai metrics --prometheus` prints passes the real `promtool check metrics`."""

from __future__ import annotations

import os
import signal
import subprocess

from daemon import __version__
from daemon.protocol import RpcError
from tests.monitor.test_api import sai
from tests.monitor.test_prometheus import values

PROMTOOL = "promtool"  # `make test` installs it (Debian's prometheus package)


async def refused(client, **params) -> RpcError:
    try:
        await client.call("job.submit", **params)
    except RpcError as exc:
        return exc
    raise AssertionError(f"job.submit {params} was accepted")


async def next_event(client, topic: str, kind: str, job_id: str | None = None) -> dict:
    while True:
        event = await client.next_event(timeout=180)
        data = event["data"]
        if event["topic"] == topic and data.get("kind") == kind and job_id in (None, data.get("job_id")):
            return data


def promtool_check_metrics(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)


async def test_jobs_move_the_service_metrics_and_promtool_accepts_them(make_daemon, client_of, wait_for) -> None:
    daemon = make_daemon({"queue": {"max_attempts": 1, "max_queued_per_user": 2, "start_paused": True},
                          "policy": {"blocked_terms": ["forbidden"]}})
    client = await client_of(daemon)
    await refused(client, prompt="a forbidden thing")
    await refused(client, prompt="too many steps", steps=10_000)
    low = (await client.call("job.submit", prompt="low", priority="low"))["job_id"]
    high = (await client.call("job.submit", prompt="high", priority="high", count=2))["job_id"]
    await refused(client, prompt="a third while two wait")

    paused = values((await client.call("metrics.prometheus"))["text"])
    depth = paused["sai_queue_jobs"]
    assert depth[(("priority", "low"), ("state", "queued"))] == 1
    assert depth[(("priority", "high"), ("state", "queued"))] == 1
    assert depth[(("priority", "normal"), ("state", "queued"))] == 0
    assert paused["sai_queue_paused"][()] == 1
    assert paused["sai_jobs_submitted_total"][(("priority", "high"),)] == 1

    await client.call("job.cancel", job_id=low)
    await client.call("queue.resume")
    done = await wait_for(client, high)
    assert done["state"] == "succeeded" and len(done["outputs"]) == 2
    model = done["model_id"]

    await client.call("events.subscribe", topics=["job", "queue"])
    doomed = (await client.call("job.submit", prompt="killed", width=256, height=256, steps=60))["job_id"]
    await next_event(client, "job", "progress", doomed)
    os.kill(daemon.worker_pids()[0], signal.SIGKILL)
    assert (await wait_for(client, doomed))["state"] == "failed"  # max_attempts 1: quarantined at once
    await client.call("worker.restart", reason="after the test's kill")
    await next_event(client, "queue", "worker.restarted")
    await client.call("audit.checkpoint")

    code, text, err = await sai("--socket", str(daemon.socket), "metrics", "--prometheus")
    assert code == 0, err
    got = values(text)
    finished = got["sai_jobs_finished_total"]
    assert finished[(("model", model), ("outcome", "succeeded"))] == 1
    assert finished[(("model", model), ("outcome", "failed"))] == 1
    assert finished[(("model", model), ("outcome", "cancelled"))] == 1
    assert got["sai_images_generated_total"][(("model", model),)] == 2
    refusals = {labels[0][1]: n for labels, n in got["sai_job_submits_refused_total"].items()}
    assert refusals == {"policy": 1, "invalid": 1, "queue_full": 1, "rate_limit": 0, "memory": 0,
                        "disk_space": 0, "other": 0}
    assert got["sai_jobs_submitted_total"][(("priority", "normal"),)] == 1
    assert got["sai_job_queue_wait_seconds_count"][(("priority", "high"),)] == 1
    assert got["sai_job_queue_wait_seconds_count"][(("priority", "normal"),)] == 1
    assert got["sai_job_queue_wait_seconds_sum"][(("priority", "high"),)] > 0  # it waited through the pause
    assert got["sai_image_generation_seconds_count"][(("model", model),)] == 1  # the failed batch is no figure
    assert got["sai_image_generation_seconds_sum"][(("model", model),)] > 0
    for outcome in ("succeeded", "failed", "cancelled"):
        assert got["sai_job_duration_seconds_count"][(("outcome", outcome),)] == 1
        assert got["sai_job_duration_seconds_bucket"][(("le", "+Inf"), ("outcome", outcome))] == 1
    restarts = {labels: n for labels, n in got["sai_worker_restarts_total"].items()}
    assert restarts == {(("cause", "crash"), ("worker", "cpu0")): 1, (("cause", "leak"), ("worker", "cpu0")): 0,
                        (("cause", "operator"), ("worker", "cpu0")): 1}
    assert got["sai_worker_up"][(("device", "cpu"), ("worker", "cpu0"))] == 1
    assert sum(got["sai_queue_jobs"].values()) == 0 and got["sai_queue_paused"][()] == 0
    assert got["sai_audit_entries_total"][()] >= 10  # submits, refusals, starts, finishes, outputs, ...
    assert got["sai_audit_checkpoints_total"][()] >= 1
    assert 0 < got["sai_audit_checkpoint_entries"][()] <= got["sai_audit_log_entries"][()]
    assert got["sai_audit_last_checkpoint_timestamp_seconds"][()] > 1.7e9
    assert got["sai_build_info"][(("version", __version__),)] == 1
    assert got["sai_host_memory_total_bytes"][()] > 0  # the monitor's gauges are still there

    check = promtool_check_metrics(text)
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), (check.stdout,
                                                                                             check.stderr)

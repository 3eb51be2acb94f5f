"""Protocol fuzzing against one real daemon: malformed and hostile frames, slow and stalled
clients, floods of connections. After every frame the daemon is alive, the frame got the error
code the protocol gives it (or only its own connection was closed), and a fresh client still
gets `daemon.status`. The last test checks the daemon's peak RSS and prints the figures:

    fuzz: N frames tried, peak RSS X MiB (start Y MiB)

`SAI_FUZZ_EXAMPLES=2000 pytest -s tests/reliability/test_fuzz.py` for a long run.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.api import load_all
from daemon.protocol import MAX_LINE
from tests.harness import DaemonProcess
from tests.reliability.fuzz_helpers import (
    BAD_UTF8_PIECES,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    PARSE_ERROR,
    RATE_LIMITED,
    SAFE_METHODS,
    UNAVAILABLE,
    FuzzRun,
    RawClient,
    accepts,
    assert_serving,
    envelopes,
    error_of,
    examples,
    exchange,
    expected_for,
    fill_jobs,
    flood,
    json_values,
    not_utf8,
    peak_rss_mib,
    request,
    rss_mib,
    start_daemon,
    well_typed,
)

pytestmark = pytest.mark.timeout(240)

METHODS = load_all()
LIMITS = {"max_connections": 40, "max_connections_per_user": 40, "max_batch_requests": 32,
          "line_timeout": 2.0, "write_timeout": 2.0, "max_unread_mb": 1}
PEAK_BUDGET_MIB = 256.0
"""How far above its pre-fuzz RSS the daemon may ever go (a 1 MiB frame parses to tens of MiB)."""


def fuzz(default_examples: int) -> settings:
    return settings(max_examples=examples(default_examples), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    """No worker, queue paused, rate limits out of the way, small connection limits and timeouts."""
    proc, root = start_daemon(LIMITS)
    yield proc
    proc.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def run(daemon: DaemonProcess) -> FuzzRun:
    assert daemon.proc is not None
    RawClient(daemon.socket).call("daemon.status")  # warm: the first request's imports are not fuzzing
    return FuzzRun(daemon.socket, daemon.proc.pid, rss_mib(daemon.proc.pid))


def lone_reply(run: FuzzRun, frame: bytes) -> Any:
    """The one reply `frame` gets (the probe that follows it answers too)."""
    run.tried(3)
    others = exchange(run.socket, frame, expect=1)
    assert len(others) == 1, others
    return others[0]


# -- frames that are not JSON-RPC ------------------------------------------------------------

@fuzz(150)
@given(st.one_of(st.binary(min_size=1, max_size=64).filter(lambda b: b"\n" not in b and not_utf8(b)),
                 st.tuples(st.sampled_from(BAD_UTF8_PIECES), st.integers(0, 60)).map(
                     lambda t: request("daemon.status")[:t[1]] + t[0] + request("daemon.status")[t[1]:])))
def test_invalid_utf8_is_a_parse_error(daemon, run, frame):
    error = error_of(lone_reply(run, frame + b"\n"))
    assert error["code"] == PARSE_ERROR and "not UTF-8" in error["message"]
    assert_serving(daemon)


@fuzz(40)
@given(escape=st.sampled_from(["\\ud800", "\\udfff", "\\uDBFF", "\\udc00x", "a\\ud83d"]),
       where=st.sampled_from(["id", "prompt", "key", "method"]))
def test_lone_surrogate_escapes_are_parse_errors(daemon, run, escape, where):
    frames = {"id": '{"jsonrpc":"2.0","id":"%s","method":"daemon.status"}',
              "prompt": '{"jsonrpc":"2.0","id":1,"method":"job.submit","params":{"prompt":"a%sb"}}',
              "key": '{"jsonrpc":"2.0","id":1,"method":"job.get","params":{"%s":"j1"}}',
              "method": '{"jsonrpc":"2.0","id":1,"method":"job.%s"}'}
    error = error_of(lone_reply(run, (frames[where] % escape).encode() + b"\n"))
    assert error["code"] == PARSE_ERROR and "surrogate" in error["message"]
    assert_serving(daemon)


@fuzz(40)
@given(depth=st.integers(1_000, 190_000), opener=st.sampled_from(["[", '{"a":']), closed=st.booleans(),
       where=st.sampled_from(["line", "param", "id", "batch"]))
def test_deep_nesting_is_a_parse_error(daemon, run, depth, opener, closed, where):
    depth = min(depth, (MAX_LINE - 200) // (len(opener) + 1))
    deep = opener * depth + (("]" if opener == "[" else "}") * depth if closed else "")
    frame = {"line": deep, "param": '{"jsonrpc":"2.0","id":1,"method":"job.list","params":{"state":%s}}' % deep,
             "id": '{"jsonrpc":"2.0","id":%s,"method":"daemon.status"}' % deep,
             "batch": '[{"jsonrpc":"2.0","id":1,"method":"daemon.status"},%s]' % deep}[where]
    error = error_of(lone_reply(run, frame.encode() + b"\n"))
    assert error["code"] == PARSE_ERROR, error
    assert_serving(daemon)


@fuzz(20)
@given(depth=st.integers(2, 400))
def test_moderate_nesting_reaches_the_type_check(daemon, run, depth):
    reply = lone_reply(run, request("job.get", job_id=json.loads("[" * depth + "]" * depth)) + b"\n")
    error = error_of(reply)
    assert error["code"] == INVALID_PARAMS and error["data"]["field"] == "job_id"
    assert_serving(daemon)


@fuzz(6)
@given(kind=st.sampled_from(["batch", "keys", "string"]), fill=st.floats(0.5, 0.99), connections=st.integers(1, 30))
def test_wide_frames_at_once(daemon, run, kind, fill, connections):
    """Lines near 1 MiB that parse into large objects (half a million batch items, a hundred
    thousand parameter names), from many connections at the same moment."""
    size = int((MAX_LINE - 100) * fill)
    frame = {"batch": lambda: "[" + ",".join(["1"] * (size // 2)) + "]",
             "keys": lambda: request("job.list", **{f"k{i}": 0 for i in range(size // 16)}).decode(),
             "string": lambda: request("job.get", job_id="j" * size).decode()}[kind]().encode() + b"\n"
    clients = [RawClient(daemon.socket, timeout=30) for _ in range(connections)]
    for client in clients:
        client.send(frame)
    run.tried(connections)
    for client in clients:
        error = error_of(client.message())
        assert error["code"] == {"batch": INVALID_REQUEST, "keys": INVALID_PARAMS, "string": -32002}[kind], error
        client.close()
    assert_serving(daemon)


huge_numbers = st.one_of(
    st.sampled_from(["1e400", "-1e400", "1E+999", "NaN", "Infinity", "-Infinity", "9" * 5000, "-" + "9" * 100_000]),
    st.integers(min_value=10**64, max_value=10**400).map(str),
    st.integers(65, 20_000).map(lambda n: "1" * n),
    st.integers(309, 5000).map(lambda e: f"1.5e{e}"))


@fuzz(100)
@given(number=huge_numbers, where=st.sampled_from(["id", "limit", "seed", "line", "batch", "nested"]))
def test_huge_and_non_finite_numbers_are_parse_errors(daemon, run, number, where):
    frame = {"id": '{"jsonrpc":"2.0","id":%s,"method":"daemon.status"}',
             "limit": '{"jsonrpc":"2.0","id":1,"method":"job.list","params":{"limit":%s}}',
             "seed": '{"jsonrpc":"2.0","id":1,"method":"job.submit","params":{"prompt":"x","seed":%s}}',
             "line": "%s",
             "batch": '[{"jsonrpc":"2.0","id":1,"method":"daemon.status"},%s]',
             "nested": '{"jsonrpc":"2.0","id":1,"method":"daemon.status","params":{"x":[{"y":%s}]}}'}[where] % number
    error = error_of(lone_reply(run, frame.encode() + b"\n"))
    assert error["code"] == PARSE_ERROR, error
    assert_serving(daemon)


# -- parameters -------------------------------------------------------------------------------

def param_cases() -> list[tuple[str, str]]:
    """Every parameter of every method, and an unknown one for each method."""
    cases = [(name, param) for name, m in sorted(METHODS.items()) for param in m.params]
    return cases + [(name, "") for name in sorted(METHODS)]


@pytest.mark.parametrize("method_name, param", param_cases(), ids=lambda v: v or "unknown")
@fuzz(25)
@given(data=st.data())
def test_bad_params_are_refused_naming_the_field(daemon, run, method_name, param, data):
    m = METHODS[method_name]
    params = {name: well_typed(m.hints.get(name, Any)) for name in m.required if name != param}
    if param:
        hint = m.hints.get(param, Any)
        params[param] = data.draw(json_values.filter(lambda v: not accepts(hint, v)), label="wrong value")
        field, words = param, "must be"
    else:
        field = data.draw(st.text(min_size=1, max_size=16).filter(lambda k: k not in m.params), label="unknown")
        params[field] = data.draw(json_values, label="value")
        words = "unknown parameter"
    error = error_of(lone_reply(run, request(method_name, **params) + b"\n"))
    assert error["code"] == INVALID_PARAMS and error["data"]["field"] == field, (params, error)
    assert words in error["data"]["reason"], error
    assert_serving(daemon)


@pytest.mark.parametrize("method_name", sorted(name for name, m in METHODS.items() if m.required))
def test_missing_required_params_are_named(daemon, run, method_name):
    for missing in sorted(METHODS[method_name].required):
        m = METHODS[method_name]
        params = {name: well_typed(m.hints.get(name, Any)) for name in m.required if name != missing}
        error = error_of(lone_reply(run, request(method_name, **params) + b"\n"))
        assert error["code"] == INVALID_PARAMS and error["data"] == {"field": missing, "reason": "required"}, error
    assert_serving(daemon)


# -- envelopes and batches --------------------------------------------------------------------

def check_reply(obj: Any, reply: Any) -> None:
    expected = expected_for(obj, METHODS)
    assert isinstance(reply, dict) and reply.get("jsonrpc") == "2.0", reply
    assert ("result" in reply) != ("error" in reply), reply
    if expected.code is not None:
        assert error_of(reply)["code"] == expected.code, (obj, reply)
        assert reply["id"] == expected.reply_id, (obj, reply)
    elif "error" in reply:
        assert reply["error"]["code"] != INTERNAL_ERROR, (obj, reply)


@fuzz(600)
@given(obj=envelopes | json_values.filter(lambda v: not isinstance(v, list)))  # a list is a batch: below
def test_envelopes_get_the_answer_the_protocol_gives(daemon, run, obj):
    run.tried(3)
    expected = expected_for(obj, METHODS)
    others = exchange(run.socket, json.dumps(obj).encode() + b"\n", expect=int(expected.reply))
    assert len(others) == int(expected.reply), (obj, others)
    if expected.reply:
        check_reply(obj, others[0])
    assert_serving(daemon)


@fuzz(300)
@given(batch=st.lists(envelopes | json_values | st.just({"jsonrpc": "2.0", "method": "daemon.status"}), max_size=40))
def test_batches_of_garbage(daemon, run, batch):
    run.tried(3)
    answered = [obj for obj in batch if expected_for(obj, METHODS).reply]
    refused_whole = not batch or len(batch) > LIMITS["max_batch_requests"]
    others = exchange(run.socket, json.dumps(batch).encode() + b"\n", expect=int(refused_whole or bool(answered)))
    if refused_whole:
        assert len(others) == 1 and error_of(others[0])["code"] == INVALID_REQUEST, others
        assert "batch" in others[0]["error"]["message"]
    else:
        if not answered:
            assert others == [], others
        else:
            assert len(others) == 1 and isinstance(others[0], list) and len(others[0]) == len(answered), others
            decided = sorted(str((e.code, e.reply_id)) for e in map(lambda o: expected_for(o, METHODS), answered)
                             if e.code is not None)
            got = sorted(str((r.get("error", {}).get("code"), r.get("id"))) for r in others[0])
            for item in decided:
                assert item in got, (batch, others)
                got.remove(item)
            assert all(r.get("error", {}).get("code") != INTERNAL_ERROR for r in others[0]), others
    assert_serving(daemon)


# -- partial, slow and stalled clients --------------------------------------------------------

@fuzz(100)
@given(obj=envelopes, cut=st.floats(0, 1, exclude_max=True), junk=st.binary(max_size=32))
def test_partial_line_then_close(daemon, run, obj, cut, junk):
    frame = junk.replace(b"\n", b"") + json.dumps(obj).encode()
    client = RawClient(daemon.socket)
    client.send(frame[:int(len(frame) * cut)])
    client.close()
    run.tried()
    assert_serving(daemon)


@fuzz(40)
@given(chunks=st.lists(st.integers(1, 24), min_size=1, max_size=30), method=st.sampled_from(SAFE_METHODS[:3]))
def test_fragmented_request_is_answered(daemon, run, chunks, method):
    frame = request(method, req_id="frag", **({"job_id": "j0"} if method == "job.get" else {})) + b"\n"
    client = RawClient(daemon.socket)
    sent, sizes = 0, iter(chunks)
    while sent < len(frame):
        size = next(sizes, len(frame))
        client.sock.sendall(frame[sent:sent + size])
        sent += size
        time.sleep(0.001)
    run.tried()
    reply = client.message()
    client.close()
    assert reply["id"] == "frag" and ("result" in reply or reply["error"]["code"] == -32002), reply
    assert_serving(daemon)


def test_slow_clients_and_the_line_timeout(daemon, run):
    """One byte at a time within the line timeout is answered; a line left unfinished, or
    trickled past the timeout, gets -32600 and only that connection is closed; an idle one stays."""
    frame = request("daemon.status", req_id="slow") + b"\n"
    slow = RawClient(daemon.socket)
    for byte in frame:
        slow.sock.sendall(bytes([byte]))
        time.sleep(0.01)
    assert slow.message()["id"] == "slow"
    idle, stalled, trickle = RawClient(daemon.socket), RawClient(daemon.socket), RawClient(daemon.socket)
    stalled.send(frame[:20])
    started = time.monotonic()
    for byte in frame[:6]:  # every gap well under the timeout, their sum over it once it goes quiet
        trickle.sock.sendall(bytes([byte]))
        time.sleep(0.3)
    run.tried(4)
    for client in (stalled, trickle):
        error = error_of(client.message())
        assert error["code"] == INVALID_REQUEST and "daemon.line_timeout" in error["message"], error
        assert client.closed_by_daemon(5)
    assert time.monotonic() - started < LIMITS["line_timeout"] + 3
    assert idle.call("daemon.status", req_id="idle")["id"] == "idle"
    for client in (slow, idle, stalled, trickle):
        client.close()
    assert_serving(daemon)


def test_overlong_line_closes_only_that_connection(daemon, run):
    other = RawClient(daemon.socket)
    client = RawClient(daemon.socket)
    try:
        client.sock.sendall(request("job.get", job_id="a" * MAX_LINE) + b"\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # it may close before it has read it all
    run.tried()
    error = error_of(client.message())
    assert error["code"] == INVALID_REQUEST and f"longer than {MAX_LINE} bytes" in error["message"]
    assert client.closed_by_daemon(5)
    assert other.call("daemon.status")["result"]
    client.close()
    other.close()
    assert_serving(daemon)


def test_client_that_stops_reading_is_dropped(daemon, run):
    """Pipelined requests whose replies are never read: past max_unread_mb (big replies) or
    write_timeout (small ones) that connection is dropped; everyone else is served meanwhile."""
    fill_jobs(daemon, run, 400, LIMITS["max_batch_requests"])
    big = RawClient(daemon.socket)
    big.send(b"".join(request("job.list", req_id=i, limit=1000) + b"\n" for i in range(30)))
    small = RawClient(daemon.socket)
    small.send(b"".join(request("daemon.status", req_id=i) + b"\n" for i in range(2000)))
    run.tried(2030)
    started = time.monotonic()
    latencies = [assert_serving(daemon)]
    while time.monotonic() - started < LIMITS["write_timeout"] + 1:
        latencies.append(assert_serving(daemon))
        time.sleep(0.2)
    assert big.closed_by_daemon(10) and small.closed_by_daemon(10)
    assert max(latencies) < LIMITS["write_timeout"], latencies  # nobody waited on the stalled readers
    log = daemon.read_log()
    assert "MiB unread (daemon.max_unread_mb)" in log and "(daemon.write_timeout)" in log
    big.close()
    small.close()


def test_subscriber_that_never_reads_is_dropped(daemon, run):
    sub = RawClient(daemon.socket)
    assert "result" in sub.call("events.subscribe", topics=["job", "queue", "audit"])
    before = daemon.read_log().count("closing the connection of")
    fill_jobs(daemon, run, 1500, LIMITS["max_batch_requests"])  # each submit: a job event and an audit event, unread
    assert sub.closed_by_daemon(LIMITS["write_timeout"] + 10)
    assert daemon.read_log().count("closing the connection of") > before
    sub.close()
    assert_serving(daemon)


# -- floods of connections --------------------------------------------------------------------

def test_connection_flood_past_the_limit(daemon, run):
    time.sleep(0.3)  # connections of earlier tests finish closing
    served, refused = flood(daemon, LIMITS["max_connections"] + 10)
    run.tried(LIMITS["max_connections"] + 10)
    assert len(served) == LIMITS["max_connections"] and len(refused) == 10
    assert all(e["code"] == UNAVAILABLE and "daemon.max_connections" in e["message"] for e in refused), refused
    assert served[0].call("daemon.status")["result"]
    for client in served:
        client.close()
    for i in range(300):  # churn: connect, sometimes a partial frame, hang up
        churn = RawClient(daemon.socket)
        if i % 3 == 0:
            churn.sock.sendall(b'{"jsonrpc":"2.0","id":1,"meth')
        churn.close()
    run.tried(300)
    deadline = time.monotonic() + 5
    while True:  # the daemon sees the hang-ups shortly after they happen
        try:
            assert_serving(daemon)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_connection_flood_past_the_per_user_limit(run):
    capped, root = start_daemon({**LIMITS, "max_connections_per_user": 8})
    try:
        served, refused = flood(capped, 12)
        run.tried(12)
        assert len(served) == 8 and len(refused) == 4
        assert all(e["code"] == RATE_LIMITED and "daemon.max_connections_per_user" in e["message"]
                   and e["data"]["limit"] == 8 for e in refused), refused
        served.pop().close()
        time.sleep(0.2)
        assert_serving(capped)
        for client in served:
            client.close()
    finally:
        capped.stop()
        shutil.rmtree(root, ignore_errors=True)


# -- the figures --------------------------------------------------------------------------------

def test_memory_stayed_bounded(daemon, run, tmp_path_factory):
    if run.frames == 0:
        pytest.skip("the fuzz tests of this module did not run: nothing to measure")
    peak = peak_rss_mib(run.pid)
    figures = {"frames": run.frames, "peak_rss_mib": round(peak, 1), "start_rss_mib": round(run.start_rss_mib, 1),
               "now_rss_mib": round(rss_mib(run.pid), 1), "seconds": round(time.monotonic() - run.started, 1),
               "examples_override": examples(0) or None}
    path = tmp_path_factory.mktemp("fuzz") / "fuzz-figures.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\nfuzz: {run.frames} frames tried, peak RSS {peak:.1f} MiB (start {run.start_rss_mib:.1f} MiB); "
          f"figures in {path}")
    assert peak < run.start_rss_mib + PEAK_BUDGET_MIB, figures
    assert_serving(daemon)

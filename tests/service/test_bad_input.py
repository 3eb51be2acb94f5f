"""Every class of bad input gets a clear error naming what was wrong, and the daemon serves on."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.protocol import MAX_LINE, RpcError
from tests.configs import NO_WORKER
from tests.harness import submit_long_prompts


@pytest.fixture
async def idle(make_daemon, client_of):
    """A daemon whose queue is paused and whose worker never starts: admission only."""
    daemon = make_daemon(NO_WORKER)
    return daemon, await client_of(daemon)


async def raw_exchange(path, payload: bytes, read: bool = True) -> list[dict]:
    reader, writer = await asyncio.open_unix_connection(str(path), limit=4 * MAX_LINE)
    writer.write(payload)
    await writer.drain()
    replies = []
    if read:
        line = await asyncio.wait_for(reader.readline(), 10)
        replies.append(json.loads(line))
    writer.close()
    return replies


async def assert_serving(client) -> None:
    status = await client.call("daemon.status")
    assert status["pid"] > 0


@pytest.mark.parametrize("params, field, words", [
    ({"prompt": "x", "width": 100}, "width", "multiple of 8"),
    ({"prompt": "x", "width": 4096}, "width", "out of range"),
    ({"prompt": "x", "height": 32}, "height", "out of range"),
    ({"prompt": "x", "width": 2048, "height": 2048}, "width", "pixels"),
    ({"prompt": "x", "steps": 0}, "steps", "out of range"),
    ({"prompt": "x", "steps": 10_000}, "steps", "out of range"),
    ({"prompt": "x", "guidance": -1}, "guidance", "out of range"),
    ({"prompt": "x", "guidance": 99.5}, "guidance", "out of range"),
    ({"prompt": "x", "seed": -5}, "seed", "out of range"),
    ({"prompt": "x", "seed": 2**40}, "seed", "out of range"),
    ({"prompt": "x", "count": 0}, "count", "out of range"),
    ({"prompt": "x", "count": 1000}, "count", "out of range"),
    ({"prompt": "x", "priority": "urgent"}, "priority", "not one of"),
    ({"prompt": "x", "width": "512"}, "width", "must be an integer"),
    ({"prompt": "x", "steps": 4.5}, "steps", "must be an integer"),
    ({"prompt": "x", "count": True}, "count", "must be an integer"),
    ({"prompt": 42}, "prompt", "must be a string"),
    ({"prompt": "x", "colour": "red"}, "colour", "unknown parameter"),
    ({}, "prompt", "required"),
    ({"prompt": " \u200b\x07 "}, "prompt", "empty"),
    ({"prompt": "x" * 5000}, "prompt", "at most"),
    ({"prompt": "x", "client_token": ""}, "client_token", "1 to 128"),
])
async def test_invalid_submit_names_the_field(idle, params, field, words):
    _, client = idle
    with pytest.raises(Exception) as info:
        await client.call("job.submit", **params)
    err = info.value
    assert err.code == -32602, err
    assert err.data["field"] == field
    assert words in err.data["reason"], err.data["reason"]
    await assert_serving(client)


async def test_prompt_is_normalised_and_warned(idle):
    _, client = idle
    reply = await client.call("job.submit", prompt="Cafe\u0301 \u202eevil\u202c\tnight\x00 " + "word " * 40)
    job = await client.call("job.get", job_id=reply["job_id"])
    prompt = job["params"]["prompt"]
    assert prompt.startswith("Café evil night word")
    assert "\u202e" not in prompt and "\x00" not in prompt and "\t" not in prompt
    assert any("control or invisible" in w for w in reply["warnings"])
    assert any("CLIP tokens; the Stable Diffusion 1.x CLIP text encoder reads the first 77" in w
               for w in reply["warnings"])


async def test_policy_refuses_with_the_rule_and_flags_raise_risk(make_daemon, client_of):
    daemon = make_daemon({**NO_WORKER, "policy": {"blocked_terms": ["forbidden thing"],
                                                  "blocked_patterns": [r"\bserial\s*number\s*\d+"],
                                                  "flagged_terms": ["passport"]}})
    client = await client_of(daemon)
    for prompt, rule in (("a FORBIDDEN   thing here", "term 'forbidden thing'"),
                         ("ＦＯＲＢＩＤＤＥＮ thing", "term 'forbidden thing'"),
                         ("card with serial number 1234", r"pattern '\\bserial\\s*number\\s*\\d+'")):
        with pytest.raises(Exception) as info:
            await client.call("job.submit", prompt=prompt)
        assert info.value.code == -32005
        assert info.value.data["rule"] == rule
        assert rule in info.value.message
    with pytest.raises(Exception) as info:
        await client.call("job.submit", prompt="fine", negative_prompt="forbidden thing")
    assert info.value.data["field"] == "negative_prompt"
    safe = await client.call("job.submit", prompt="a landscape")
    flagged = await client.call("job.submit", prompt="a passport photo")
    assert safe["risk"] == 0 and flagged["risk"] > safe["risk"]
    assert any("passport" in w for w in flagged["warnings"])


async def test_rate_limit_and_queue_cap(make_daemon, client_of):
    daemon = make_daemon({**NO_WORKER, "queue": {"start_paused": True, "burst": 3, "rate_per_minute": 6.0,
                                                 "max_queued_per_user": 100}})
    client = await client_of(daemon)
    for i in range(3):
        await client.call("job.submit", prompt=f"ok {i}")
    with pytest.raises(Exception) as info:
        await client.call("job.submit", prompt="too fast")
    assert info.value.code == -32003
    assert 5 <= info.value.data["retry_after"] <= 10
    assert "try again in" in info.value.message
    capped = make_daemon({**NO_WORKER, "queue": {"start_paused": True, "max_queued_per_user": 2}})
    client = await client_of(capped)
    for i in range(2):
        await client.call("job.submit", prompt=f"ok {i}")
    with pytest.raises(Exception) as info:
        await client.call("job.submit", prompt="one too many")
    assert info.value.code == -32003 and "2 jobs queued" in info.value.message


async def test_queue_cap_holds_against_a_burst_of_concurrent_submits(make_daemon, client_of):
    daemon = make_daemon({**NO_WORKER, "queue": {"start_paused": True, "max_queued_per_user": 5,
                                                 "burst": 1000, "rate_per_minute": 1e6}})
    clients = [await client_of(daemon) for _ in range(20)]
    answers = await asyncio.gather(*(c.call("job.submit", prompt=f"burst {i}") for i, c in enumerate(clients)),
                                   return_exceptions=True)
    refused = [a for a in answers if isinstance(a, Exception)]
    assert len(answers) - len(refused) == 5
    assert {getattr(a, "code", None) for a in refused} == {-32003}
    assert (await clients[0].call("daemon.status"))["queue"]["queued"] == 5


async def test_errors_repeat_a_huge_client_value_only_in_part(idle):
    _, client = idle
    huge = "x" * 300_000
    for method, params in (("job.get", {"job_id": huge}), (huge, {}), ("job.list", {huge: 1}),
                           ("job.list", {"state": huge})):
        with pytest.raises(RpcError) as info:
            await client.call(method, **params)
        assert len(json.dumps(info.value.to_json())) < 2000
        assert "300000 characters" in json.dumps(info.value.to_json())
    assert (await client.call("daemon.status"))["queue"]["queued"] == 0


async def test_roles_from_config(make_daemon, client_of):
    daemon = make_daemon({**NO_WORKER, "auth": {"viewer_users": ["root", *_me()]}})
    client = await client_of(daemon)
    status = await client.call("daemon.status")
    assert status["you"]["role"] == "viewer"
    assert (await client.call("job.list"))["jobs"] == []
    for method, params, needed in (("job.submit", {"prompt": "x"}, "operator"),
                                   ("queue.pause", {}, "admin"), ("queue.resume", {}, "admin")):
        with pytest.raises(Exception) as info:
            await client.call(method, **params)
        assert info.value.code == -32001
        assert info.value.data["needed"] == needed and needed in info.value.message
    operator = make_daemon({**NO_WORKER, "auth": {"operator_users": _me()}})
    client = await client_of(operator)
    await client.call("job.submit", prompt="operators may submit")
    with pytest.raises(Exception) as info:
        await client.call("queue.pause")
    assert info.value.code == -32001 and info.value.data["needed"] == "admin"


def _me() -> list[str]:
    import os
    import pwd

    return [pwd.getpwuid(os.getuid()).pw_name]


def test_socket_is_0660_and_closed_to_other_users(idle_sync):
    import os
    import stat
    import subprocess

    mode = stat.S_IMODE(os.stat(idle_sync.socket).st_mode)
    assert mode == 0o660
    if os.getuid() != 0 or not os.access("/usr/bin/python3", os.X_OK):
        pytest.skip("needs root and a system python to try the socket as another user")
    os.chmod(idle_sync.socket.parent, 0o755)  # only the socket's own mode may keep them out
    probe = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\n"
             "try:\n s.connect(sys.argv[1]); print('connected')\n"
             "except PermissionError: print('denied')")
    out = subprocess.run(["/usr/bin/python3", "-c", probe, str(idle_sync.socket)], capture_output=True, text=True,
                         user=65534, group=65534, extra_groups=[], cwd="/")
    assert out.stdout.strip() == "denied", out.stderr


async def test_framing_errors(idle):
    daemon, client = idle
    cases = [
        (b"{not json\n", -32700, "parse error"),
        (b"\xff\xfe\n", -32700, "not UTF-8"),
        (b"[1, 2]\n", -32600, "expected a JSON object"),
        (b"42\n", -32600, "expected a JSON object"),
        (b"[]\n", -32600, "empty batch"),
        (b'{"jsonrpc":"1.0","id":1,"method":"daemon.status"}\n', -32600, '"jsonrpc" must be "2.0"'),
        (b'{"jsonrpc":"2.0","id":1,"method":7}\n', -32600, '"method"'),
        (b'{"jsonrpc":"2.0","id":{},"method":"daemon.status"}\n', -32600, '"id"'),
        (b'{"jsonrpc":"2.0","id":1,"method":"no.such"}\n', -32601, "no such method"),
        (b'{"jsonrpc":"2.0","id":1,"method":"job.get","params":"x"}\n', -32602, "must be an object"),
        (b'{"jsonrpc":"2.0","id":1,"method":"job.get","params":{"job_id":"nope"}}\n', -32002, "no job"),
    ]
    for payload, code, words in cases:
        reply = (await raw_exchange(daemon.socket, payload))[0]
        reply = reply[0] if isinstance(reply, list) else reply
        assert reply["error"]["code"] == code, (payload, reply)
        assert words in reply["error"]["message"], (payload, reply)
    await assert_serving(client)


async def test_batches_and_notifications(idle):
    daemon, _ = idle
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "daemon.status"},
             {"jsonrpc": "2.0", "method": "daemon.status"},
             {"jsonrpc": "2.0", "id": 2, "method": "no.such"},
             "garbage"]
    replies = (await raw_exchange(daemon.socket, json.dumps(batch).encode() + b"\n"))[0]
    assert sorted(r.get("id") or 0 for r in replies) == [0, 1, 2]
    by_id = {r["id"]: r for r in replies}
    assert "result" in by_id[1] and by_id[2]["error"]["code"] == -32601
    assert by_id[None]["error"]["code"] == -32600
    # A lone notification gets no reply at all; the next request still does.
    reader, writer = await asyncio.open_unix_connection(str(daemon.socket))
    writer.write(b'{"jsonrpc":"2.0","method":"daemon.status"}\n{"jsonrpc":"2.0","id":9,"method":"daemon.status"}\n')
    await writer.drain()
    assert json.loads(await asyncio.wait_for(reader.readline(), 10))["id"] == 9
    writer.close()


async def test_oversized_line_closes_only_that_connection(idle):
    daemon, client = idle
    reader, writer = await asyncio.open_unix_connection(str(daemon.socket), limit=4 * MAX_LINE)
    writer.write(b'{"jsonrpc":"2.0","id":1,"method":"job.submit","params":{"prompt":"' + b"a" * (2 * MAX_LINE) + b'"}}\n')
    try:
        await writer.drain()
    except ConnectionError:
        pass  # the daemon may close before it has read all of it
    reply = json.loads(await asyncio.wait_for(reader.readline(), 10))
    assert reply["error"]["code"] == -32600 and "longer than 1048576 bytes" in reply["error"]["message"]
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed
    writer.close()
    await assert_serving(client)



MANY_QUEUED = {**NO_WORKER, "queue": {**NO_WORKER["queue"], "burst": 1000, "rate_per_minute": 100000.0}}


async def test_a_listing_longer_than_a_line_comes_in_pages_that_each_fit_one(make_daemon, client_of):
    daemon = make_daemon(MANY_QUEUED)
    client = await client_of(daemon)
    ids = await submit_long_prompts(client, 300)
    request = {"jsonrpc": "2.0", "id": 1, "method": "job.list", "params": {"limit": 1000}}
    reader, writer = await asyncio.open_unix_connection(str(daemon.socket), limit=4 * MAX_LINE)
    writer.write(json.dumps(request).encode() + b"\n")
    line = await asyncio.wait_for(reader.readline(), 30)
    writer.close()
    first = json.loads(line)["result"]
    assert len(line) <= MAX_LINE and first["total"] == 300 and 100 < len(first["jobs"]) < 300
    seen = [job["job_id"] for job in first["jobs"]]
    while len(seen) < first["total"]:
        page = await client.call("job.list", limit=1000, offset=len(seen))
        assert page["jobs"], "a page with room for none"
        seen += [job["job_id"] for job in page["jobs"]]
    assert sorted(seen) == sorted(ids)


async def test_a_reply_over_the_line_limit_becomes_an_error_and_the_connection_serves_on(make_daemon, client_of):
    """Three listings of about a line each in one batch: their replies together would be a line no
    client reads, so the batch gets one error saying so, and the next request is answered."""
    daemon = make_daemon(MANY_QUEUED)
    client = await client_of(daemon)
    await submit_long_prompts(client, 300)
    batch = [{"jsonrpc": "2.0", "id": n, "method": "job.list", "params": {"limit": 1000}} for n in (1, 2, 3)]
    reader, writer = await asyncio.open_unix_connection(str(daemon.socket), limit=4 * MAX_LINE)
    writer.write(json.dumps(batch).encode() + b"\n" + b'{"jsonrpc":"2.0","id":4,"method":"daemon.status"}\n')
    replies = [json.loads(await asyncio.wait_for(reader.readline(), 30)) for _ in range(2)]
    writer.close()
    by_id = {reply.get("id"): reply for reply in replies}
    error = by_id[None]["error"]
    assert error["code"] == -32603 and error["data"]["reason"] == "reply_too_large"
    assert error["data"]["bytes"] > MAX_LINE and "ask for less" in error["message"]
    assert by_id[4]["result"]["pid"] > 0
    assert "over the 1048576-byte line limit" in daemon.read_log()

async def test_client_disconnecting_mid_request(idle):
    daemon, client = idle
    for payload in (b'{"jsonrpc":"2.0","id":1,"meth', b'{"jsonrpc":"2.0","id":1,"method":"job.list"}\n'):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(daemon.socket))
        sock.sendall(payload)
        sock.close()
    await asyncio.sleep(0.2)
    await assert_serving(client)


json_values = st.recursive(st.none() | st.booleans() | st.integers()
                           | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=st.dictionaries(st.sampled_from(["prompt", "width", "height", "steps", "guidance", "seed",
                                               "priority", "count", "negative_prompt", "junk"]), json_values))
def test_fuzzed_submit_params_get_an_answer(idle_sync, params):
    daemon = idle_sync
    reply = asyncio.run(raw_exchange(daemon.socket, json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "job.submit", "params": params}).encode() + b"\n"))[0]
    assert ("result" in reply) != ("error" in reply)
    if "error" in reply:
        assert reply["error"]["code"] in (-32602, -32005, -32003) and reply["error"]["message"]
    status = asyncio.run(raw_exchange(daemon.socket, b'{"jsonrpc":"2.0","id":2,"method":"daemon.status"}\n'))[0]
    assert "result" in status


@pytest.fixture
def idle_sync(make_daemon):
    return make_daemon({**NO_WORKER, "queue": {"start_paused": True, "burst": 10_000, "rate_per_minute": 1e6}})

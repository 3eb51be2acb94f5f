"""Pure parts: config layering and checks, ordering and aging, role resolution, framing."""

from __future__ import annotations

import json

import pytest

from daemon import config as config_mod
from daemon.auth import Role, resolve_role
from daemon.protocol import RpcError, decode, encode, parse_request
from daemon.queue import scheduler
from daemon.queue.jobs import QUEUED, Job


def make_job(seq: int, priority: int, enqueued_at: float = 0.0, width: int = 64, count: int = 1,
             reproducible: bool = False) -> Job:
    return Job(job_id=f"j{seq}", seq=seq, state=QUEUED, priority=priority,
               params={"width": width, "height": 64, "steps": 4, "guidance": 7.5, "seed": 1, "count": count,
                       "reproducible": reproducible},
               prompt="p", negative_prompt="", user="u", uid=1, created_at=enqueued_at, enqueued_at=enqueued_at)


def test_order_is_priority_then_fifo():
    jobs = [make_job(1, 0), make_job(2, 1), make_job(3, 3), make_job(4, 1), make_job(5, 2)]
    assert [j.seq for j in scheduler.order(jobs, now=0, aging_seconds=0)] == [3, 5, 2, 4, 1]


def test_aging_lifts_a_waiting_low_job_one_level_per_interval():
    old_low = make_job(1, 0, enqueued_at=0)
    new_normal = make_job(2, 1, enqueued_at=100)
    new_high = make_job(3, 2, enqueued_at=100)
    assert scheduler.effective_rank(old_low, now=100, aging_seconds=60) == 1
    assert [j.seq for j in scheduler.order([new_normal, old_low], 100, 60)] == [1, 2]  # tie: FIFO
    assert [j.seq for j in scheduler.order([new_high, old_low], 100, 60)] == [3, 1]
    assert [j.seq for j in scheduler.order([new_high, old_low], 130, 60)] == [1, 3]
    assert scheduler.effective_rank(old_low, now=10_000, aging_seconds=60) == 3  # capped at critical
    assert [j.seq for j in scheduler.order([new_normal, old_low], 100, 0)] == [2, 1]  # aging off


def test_pick_batch_groups_same_shape_within_limit():
    policy = scheduler.Policy(aging_seconds=0, max_batch=4)
    jobs = [make_job(1, 1, count=2), make_job(2, 1, width=128), make_job(3, 1), make_job(4, 1, count=2),
            make_job(5, 1)]
    assert [j.seq for j in scheduler.pick_batch(jobs, 0, policy)] == [1, 3, 5]
    assert [j.seq for j in scheduler.pick_batch(jobs, 0, policy, image_budget=2)] == [1]
    assert [j.seq for j in scheduler.pick_batch([make_job(1, 1, reproducible=True), make_job(2, 1)], 0, policy)] == [1]
    assert [j.seq for j in scheduler.pick_batch([make_job(1, 1), make_job(2, 1, reproducible=True)], 0, policy)] == [1]


def test_config_rejects_unknown_keys_and_wrong_types(tmp_path):
    bad = tmp_path / "bad.toml"
    for text, key, words in (("[queue]\nmax_batch = 'four'\n", "queue.max_batch", "must be an integer"),
                             ("[queue]\nmax_bacth = 4\n", "queue.max_bacth", "unknown key"),
                             ("[nope]\nx = 1\n", "nope", "unknown section"),
                             ("[queue]\nmax_batch = 0\n", "queue.max_batch", "greater than 0"),
                             ("[policy]\nblocked_patterns = ['(']\n", "policy.blocked_patterns", "not a valid regular"),
                             ("[auth]\nunknown = 'admin'\n", "auth.unknown", "one of viewer, refuse"),
                             ("not toml [", "(file)", "not valid TOML")):
        bad.write_text(text)
        with pytest.raises(config_mod.ConfigError) as info:
            config_mod.load(bad, environ={}, system_file=None)
        assert info.value.key == key and words in info.value.reason and info.value.source == str(bad)


def test_config_layers_file_then_environment(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text("[queue]\nmax_batch = 2\naging_seconds = 5\n")
    cfg = config_mod.load(good, environ={"SAI_QUEUE_MAX_BATCH": "7", "SAI_DAEMON_INSTALLATION": "lab-3"},
                          system_file=None)
    assert cfg.queue.max_batch == 7 and cfg.queue.aging_seconds == 5.0 and cfg.daemon.installation == "lab-3"
    with pytest.raises(config_mod.ConfigError) as info:
        config_mod.load(None, environ={"SAI_QUEUE_MAX_BATCH": "many"}, system_file=None)
    assert info.value.source == "environment" and info.value.key == "queue.max_batch"


def test_config_sections_read_as_attributes_and_as_mappings():
    cfg = config_mod.load(None, environ={}, system_file=None)
    for name, values in cfg.values.items():
        section = getattr(cfg, name)
        assert dict(section) == values
        for key, value in values.items():  # no key may hide behind a Mapping method or vice versa
            assert getattr(section, key) == value == section[key], f"{name}.{key}"
    with pytest.raises(AttributeError, match="queue.max_bacth"):
        _ = cfg.queue.max_bacth
    with pytest.raises(AttributeError, match=r"\[nope\]"):
        _ = cfg.nope
    assert cfg.replace(queue__max_batch=2).queue.max_batch == 2 and cfg.queue.max_batch != 2


def test_role_resolution_order():
    auth = config_mod.load(None, environ={}, system_file=None).auth
    assert resolve_role("root", 0, (), auth, daemon_uid=0) is Role.ADMIN
    assert resolve_role("alice", 1000, (), auth, daemon_uid=0) is Role.VIEWER
    cfg = config_mod.load(None, environ={}, system_file=None).replace(
        auth__unknown="refuse", auth__operator_groups=["artists"], auth__viewer_users=["root"])
    assert resolve_role("alice", 1000, (), cfg.auth, daemon_uid=0) is None
    assert resolve_role("alice", 1000, ("artists",), cfg.auth, daemon_uid=0) is Role.OPERATOR
    assert resolve_role("root", 0, (), cfg.auth, daemon_uid=0) is Role.VIEWER  # a user rule beats own uid


def test_framing_round_trip_and_errors():
    message = {"jsonrpc": "2.0", "id": 1, "method": "job.submit", "params": {"prompt": "é✓"}}
    line = encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and decode(line) == message
    assert parse_request(message).params == {"prompt": "é✓"}
    assert parse_request({"jsonrpc": "2.0", "method": "x"}).is_notification
    with pytest.raises(RpcError) as info:
        parse_request({"jsonrpc": "2.0", "id": True, "method": "x"})
    assert info.value.code == -32600
    with pytest.raises(RpcError):
        decode(b"\x80")
    assert json.loads(encode({"a": "\u2028"}))["a"] == "\u2028"


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(jobs=st.lists(st.tuples(st.integers(0, 3), st.floats(0, 1000)), min_size=1, max_size=40),
       now=st.floats(1000, 2000), aging=st.sampled_from([0.0, 30.0, 120.0, 400.0]),
       removed=st.sets(st.integers(0, 39)))
def test_queue_index_positions_match_the_sorted_start_order(jobs, now, aging, removed):
    """The bisection shortcut must agree with sorting the whole queue, for any mix and aging."""
    times = sorted(t for _, t in jobs)  # submission order is waiting order
    queued = [make_job(i + 1, p, enqueued_at=times[i]) for i, (p, _) in enumerate(jobs)]
    index = scheduler.QueueIndex()
    for job in queued:
        index.add(job)
    for i in sorted(removed):
        if i < len(queued):
            index.remove(queued[i])
    alive = [job for i, job in enumerate(queued) if i not in removed]
    expected = scheduler.order(alive, now, aging)
    assert len(index) == len(alive)
    assert [index.position(job, now, aging) for job in expected] == list(range(1, len(alive) + 1))
    assert index.oldest_enqueued() == min((job.enqueued_at for job in alive), default=None)


@settings(max_examples=300, deadline=None)
@given(text=st.text(min_size=0, max_size=120))
def test_the_token_bound_skips_the_tokenizer_only_when_no_text_can_be_too_long(tiny_model, text: str) -> None:
    from daemon.models.families import token_warnings
    from daemon.queue.tokens import load_tokenizer, prompt_tokens

    tokens = prompt_tokens("tiny", "sd15", tiny_model)
    count = load_tokenizer(tiny_model / "tokenizer")
    assert tokens.counts["clip"] is not None
    assert tokens.warnings(text) == token_warnings("sd15", {"clip": count(text)})

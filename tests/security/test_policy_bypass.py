"""Item 13: blocked terms cannot be slipped past the policy with look-alikes or invisible characters.

The attack, run as a real operator against a daemon blocking `bomb` and `kill`: every disguise
the review found accepted (a combining grapheme joiner, variation selectors, the Hangul filler,
`KİLL` with U+0130, `bomb_` and `bomb1`, Cyrillic and Greek look-alikes) and a few more; each
must now be refused with -32005 naming the rule, while words that merely contain a term are not.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.queue.admission import PromptPolicy
from tests.security.attack_helpers import run_as, shared_daemon

DISGUISES = [
    "bo\u034fmb", "bom\ufe0fb", "b\ufe00omb", "bo\u3164mb", "K\u0130LL", "bomb_", "bomb1", "_kill_", "kill42",
    "b\u043emb", "\u0432omb", "k\u0456ll", "\u041a\u0406LL", "\u039aILL", "\u0412\u041e\u041c\u0412", "\u03bai\u217c\u217c",
    "\uff42\uff4f\uff4d\uff42", "b0mb", "kiII", "k\u200bill", "k\u00adill", "ki\u0301ll", "\U0001d424\U0001d422\U0001d425\U0001d425",
]
INNOCENT = ["a bombastic skill", "Bombay at dusk", "a kilt and a comb", "a tomb on a hill", "killer whales? skilled"]

SUBMIT_ALL = r'''
path, prompts = sys.argv[1], json.loads(sys.argv[2])
print(json.dumps([rpc(path, "job.submit", prompt=f"how to {p} now") for p in prompts]))
'''


def test_disguised_terms_are_refused_as_a_real_operator(make_daemon, local_users) -> None:
    daemon = shared_daemon(make_daemon, local_users, {
        "policy": {"blocked_terms": ["bomb", "kill"]},
        "queue": {"start_paused": True, "rate_per_minute": 6000.0, "burst": 100}, "model": {"preload": False}})
    replies = run_as(local_users["operator"], SUBMIT_ALL, str(daemon.socket), json.dumps(DISGUISES + INNOCENT))
    accepted = [p for p, r in zip(DISGUISES, replies) if "result" in r]
    assert not accepted, f"accepted despite a blocked term: {[ascii(p) for p in accepted]}"
    for reply in replies[:len(DISGUISES)]:
        assert reply["error"]["code"] == -32005 and reply["error"]["data"]["rule"] in ("term 'bomb'", "term 'kill'")
    assert all("result" in r for r in replies[len(DISGUISES):]), replies[len(DISGUISES):]


POLICY = PromptPolicy(["bomb", "kill", "pipe bomb"], [], [], 0.25)
INVISIBLE = st.sampled_from(["\u034f", "\u200b", "\u200d", "\u2060", "\ufe0f", "\ufe0e", "\u3164", "\u00ad",
                             "\U000e0101", "\u180e"])
LOOKALIKE = {"o": "\u043e\u03bf\u0585", "b": "\u0432\u13cf", "i": "\u0456\u0399\u0406\u0131",
             "l": "I\u04cf\u0399", "k": "\u043a\u039a\u041a", "m": "\u043c\u041c"}
"""Digits that look like letters (b0mb, ki11) are in DISGUISES; not here, where a digit may follow
as a separator: `kil10` reads as the one token `killo` (a known limit of treating digits as both)."""
SEPARATOR = st.sampled_from([" ", "_", "0", "7", "-", ".", "\u3000"])


@st.composite
def disguised(draw: st.DrawFn) -> str:
    term = draw(st.sampled_from(["bomb", "kill", "pipe bomb"]))
    out = []
    for ch in term:
        choices = [ch, ch.upper(), *LOOKALIKE.get(ch, "")]
        out.append(draw(st.sampled_from(choices)))
        out.append(draw(st.lists(INVISIBLE, max_size=2).map("".join)))
    return draw(SEPARATOR) + "".join(out) + draw(SEPARATOR)


@settings(max_examples=300, deadline=None)
@given(before=st.text(alphabet="abc xyz", max_size=12), word=disguised(), after=st.text(alphabet="xyz ", max_size=12))
def test_any_disguise_of_a_blocked_term_is_refused(before: str, word: str, after: str) -> None:
    try:
        POLICY.check("prompt", before + word + after)
    except Exception as exc:
        assert getattr(exc, "code", None) == -32005
    else:
        raise AssertionError(f"accepted: {before + word + after!a}")


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="acdefghjnpqrstuvwxyz ,.", max_size=60))
def test_text_without_the_terms_letters_is_accepted(text: str) -> None:
    assert POLICY.check("prompt", text) == (0.0, [])

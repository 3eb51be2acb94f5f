"""What a submit must pass before it is queued: ranges, prompt hygiene, policy, rate limits."""

from __future__ import annotations

import math
import re
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from daemon.config import Config
from daemon.models.families import SIZE_STEP
from daemon.protocol import PRIORITIES, RATE_LIMITED, REFUSED_BY_POLICY, RpcError, invalid_params
from daemon.queue.jobs import SEED_RANGE
from daemon.queue.textfold import TermMatcher, views
from daemon.queue.tokens import NOT_JUDGED, PromptTokens

SEED_MAX = SEED_RANGE - 1


@dataclass
class Admitted:
    params: dict[str, Any]
    prompt: str
    negative_prompt: str
    priority: int
    risk: float
    warnings: list[str] = field(default_factory=list)


def clean_prompt(text: str, field_name: str, max_chars: int, warnings: list[str]) -> str:
    """NFC, control and format characters removed (bidi overrides, zero-width), whitespace folded."""
    text = unicodedata.normalize("NFC", text)
    if not text.isprintable():  # the common case skips the per-character walk
        kept = []
        removed = 0
        for ch in text:
            if ch in "\t\n\r":
                kept.append(" ")
            elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
                removed += 1
            else:
                kept.append(ch)
        text = "".join(kept)
        if removed:
            warnings.append(f"{field_name}: removed {removed} control or invisible character(s)")
    cleaned = " ".join(text.split())
    if len(cleaned) > max_chars:
        raise invalid_params(field_name, f"{len(cleaned)} characters; at most {max_chars} are accepted")
    return cleaned


class PromptPolicy:
    """Blocked terms and patterns refuse a prompt; flagged terms raise its risk score. Terms are
    matched as whole tokens through look-alikes and invisible characters (daemon.queue.textfold)."""

    def __init__(self, blocked_terms: list[str], blocked_patterns: list[str], flagged_terms: list[str],
                 flag_weight: float) -> None:
        self.blocked_terms = TermMatcher(blocked_terms)
        self.blocked_patterns = [(f"pattern {p!r}", re.compile(p, re.IGNORECASE)) for p in blocked_patterns]
        self.flagged = TermMatcher(flagged_terms)
        self.flag_weight = flag_weight

    def check(self, field_name: str, text: str) -> tuple[float, list[str]]:
        seen = views(text) if self.blocked_terms or self.flagged else []
        rules = [f"term {t!r}" for t in self.blocked_terms.find(seen)[:1]]
        if not rules and self.blocked_patterns:
            folded = unicodedata.normalize("NFKC", text).casefold()
            rules = [rule for rule, pattern in self.blocked_patterns
                     if pattern.search(folded) or pattern.search(text)][:1]
        if rules:
            raise RpcError(REFUSED_BY_POLICY, f"refused by policy: {field_name} matches blocked {rules[0]}",
                           {"field": field_name, "rule": rules[0]})
        hits = self.flagged.find(seen)
        return self.flag_weight * len(hits), [f"{field_name}: flagged term {t!r}" for t in hits]


class TokenBucket:
    def __init__(self, rate_per_second: float, burst: int) -> None:
        self.rate = rate_per_second
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> float:
        """0 when a token was taken, else the seconds until one is available."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class Admission:
    def __init__(self, config: Config) -> None:
        self.limits = config.limits
        self.defaults = config.defaults
        self.queue = config.queue
        pol = config.policy
        self.policy = PromptPolicy(pol.blocked_terms, pol.blocked_patterns, pol.flagged_terms, pol.flag_weight)
        self._buckets: dict[int, TokenBucket] = {}

    def rate_limit(self, uid: int, user: str, queued_by_user: int) -> None:
        if queued_by_user >= self.queue.max_queued_per_user:
            raise RpcError(RATE_LIMITED, f"{user} already has {queued_by_user} jobs queued, the most allowed; "
                           "wait for some to finish or cancel some", {"retry_after": None,
                                                                      "queued": queued_by_user})
        bucket = self._buckets.get(uid)
        if bucket is None:
            bucket = self._buckets[uid] = TokenBucket(self.queue.rate_per_minute / 60.0, self.queue.burst)
        wait = bucket.take()
        if wait > 0:
            raise RpcError(RATE_LIMITED, f"rate limit for {user}: {self.queue.rate_per_minute:g} submits per "
                           f"minute; try again in {wait:.1f} s", {"retry_after": round(wait, 3)})

    def _int_in(self, name: str, value: int, low: int, high: int) -> int:
        if not low <= value <= high:
            raise invalid_params(name, f"{value} is out of range; allowed {low} to {high}")
        return value

    def admit(self, prompt: str, negative_prompt: str, width: int | None, height: int | None,
              steps: int | None, guidance: float | None, seed: int | None, priority: str | None,
              count: int | None, reproducible: bool, tokens: PromptTokens = NOT_JUDGED) -> Admitted:
        """`tokens`: the job's model's tokenizers, whose encoders' limits warn of a prompt too long."""
        lim, d = self.limits, self.defaults
        warnings: list[str] = []
        prompt = clean_prompt(prompt, "prompt", lim.max_prompt_chars, warnings)
        if not prompt:
            raise invalid_params("prompt", "empty after removing control characters and spaces")
        negative_prompt = clean_prompt(negative_prompt, "negative_prompt", lim.max_prompt_chars, warnings)
        width = d.width if width is None else width
        height = d.height if height is None else height
        for name, side in (("width", width), ("height", height)):
            self._int_in(name, side, lim.min_side, lim.max_side)
            if side % SIZE_STEP:
                raise invalid_params(name, f"{side} is not a multiple of {SIZE_STEP}")
        if width * height > lim.max_pixels:
            raise invalid_params("width", f"{width}×{height} is {width * height} pixels; at most "
                                 f"{lim.max_pixels} are allowed (reduce width or height)")
        steps = self._int_in("steps", d.steps if steps is None else steps, 1, lim.max_steps)
        guidance = float(d.guidance if guidance is None else guidance)
        if not math.isfinite(guidance) or not 0 <= guidance <= lim.max_guidance:
            raise invalid_params("guidance", f"{guidance} is out of range; allowed 0 to {lim.max_guidance}")
        count = self._int_in("count", d.count if count is None else count, 1, lim.max_count)
        if seed is not None:
            self._int_in("seed", seed, 0, SEED_MAX)
        priority = d.priority if priority is None else priority
        if priority not in PRIORITIES:
            raise invalid_params("priority", f"{priority!r} is not one of {', '.join(PRIORITIES)}")
        risk = 0.0
        for name, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if text:
                added, flags = self.policy.check(name, text)
                risk += added
                warnings += flags
        if too_long := tokens.warnings(prompt):
            warnings += too_long
            risk += 0.1
        params = {"width": width, "height": height, "steps": steps, "guidance": guidance, "seed": seed,
                  "count": count, "reproducible": reproducible}
        return Admitted(params, prompt, negative_prompt, PRIORITIES.index(priority), round(min(1.0, risk), 3),
                        warnings)

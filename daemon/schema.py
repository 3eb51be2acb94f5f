"""The allowed values of every setting, read from the comments of the shipped `config/default.toml`.

The shipped file is the one place a setting's default and range are written. A comment on the
same line as a key, after two spaces, is that key's rule:

    opacity = 0.6  # 0 to 1
    hysteresis = 0.05  # 0 to below 1 (a fraction of the threshold)
    max_batch = 4  # > 0
    aging_seconds = 300.0  # >= 0
    log_level = "info"  # one of debug, info, warning, error
    color = "#ffffff"  # check colour

`> N`, `>= N`, `N to M` (both included), `N to below M`, `one of A, B`, or `check NAME` for a
rule that takes code (`NAMED_CHECKS`). A note in parentheses at the end is added to the message.
A key without such a comment only needs a value of its default's type.

Import-light on purpose: `daemon.config` checks every layer with these rules, and the console's
commands load the config.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from daemon.crypto.limits import check_scrypt_log2_n
from daemon.protocol import PRIORITIES

DEFAULT_FILE = Path(__file__).resolve().parent / "default.toml"  # config/default.toml, shipped inside the package
RULE_MARK = "  # "
LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")
TEMPLATE_FIELDS = ("job_id", "date", "user", "index", "model")
"""What `watermark.text` may name; daemon.outputs.pipeline.mark_spec fills each of them."""

Check = Callable[[Any], "str | None"]


class SchemaError(Exception):
    """The shipped default.toml itself states a rule this module cannot read (a build fault)."""


def parse_listen(text: str) -> tuple[str, int]:
    """"HOST:PORT" or "[V6]:PORT" on a loopback address; ValueError says why not.

    Loopback only: the exporter has no authentication, and the socket's roles do not apply to it."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9464")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port {port_text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 1 to 65535")
    if host.lower() in LOCAL_NAMES:
        return "127.0.0.1", port
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address; use a loopback address such as 127.0.0.1") from None
    if not address.is_loopback:
        raise ValueError(f"{host} is not a loopback address: the exporter has no authentication, so it only "
                         "listens on 127.0.0.1 or ::1 (put a proxy in front to publish it)")
    return str(address), port


def parse_color(text: str) -> tuple[int, int, int]:
    """'#rrggbb' → (r, g, b)."""
    value = text.strip().lstrip("#")
    if len(value) != 6:
        raise ValueError(f"colour {text!r} must be #rrggbb")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def _loopback(value: str) -> str | None:
    if value == "":
        return None
    try:
        parse_listen(value)
    except ValueError as exc:
        return str(exc)
    return None


def _colour(value: str) -> str | None:
    try:
        parse_color(value)
    except ValueError as exc:
        return str(exc)
    return None


def _template(value: str) -> str | None:
    try:
        value.format(**{name: "x" for name in TEMPLATE_FIELDS})
    except (KeyError, IndexError, ValueError) as exc:
        return f"bad template ({exc}); fields: " + ", ".join(f"{{{name}}}" for name in TEMPLATE_FIELDS)
    return None


def _regexes(value: list[Any]) -> str | None:
    for pattern in value:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as exc:
            return f"pattern {pattern!r} is not a valid regular expression: {exc}"
    return None


def _strings(value: list[Any]) -> str | None:
    bad = [v for v in value if not isinstance(v, str)]
    return f"every item must be a string, not {bad[0]!r}" if bad else None


def _priority(value: str) -> str | None:
    return None if value in PRIORITIES else f"must be one of {', '.join(PRIORITIES)}"


DEVICE_NAME = re.compile(r"cpu|cuda(:[0-9]{1,3})?")


def parse_devices(value: object) -> list[str] | None:
    """`[worker] devices` as a list of device names, or None for "auto"; ValueError says why not.

    "auto", a TOML list such as ["cuda:0", "cuda:2"] or ["cpu", "cpu"], or the same as one string
    separated by commas ("cuda:0,cuda:2": what a SAI_WORKER_DEVICES variable can carry)."""
    if isinstance(value, str):
        if value.strip() == "auto":
            return None
        if value.strip().startswith("["):
            try:
                value = tomllib.loads(f"v = {value}")["v"]
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"cannot read {value!r} as a list: {exc}") from None
        else:
            value = [part.strip() for part in value.split(",")]
    if not isinstance(value, list) or not value:
        raise ValueError('must be "auto" or a non-empty list of devices such as ["cuda:0", "cuda:1"] or ["cpu", "cpu"]')
    names = []
    for item in value:
        if not isinstance(item, str) or not DEVICE_NAME.fullmatch(item):
            raise ValueError(f'{item!r} is not a device: "cpu", "cuda" or "cuda:N"')
        names.append("cuda:0" if item == "cuda" else item)
    repeated = sorted({name for name in names if name != "cpu" and names.count(name) > 1})
    if repeated:
        raise ValueError(f"{repeated[0]} is listed twice: one worker per GPU (only \"cpu\" may repeat)")
    return names


def _devices(value: object) -> str | None:
    try:
        parse_devices(value)
    except ValueError as exc:
        return str(exc)
    return None


def _libpq_url(value: str) -> str | None:
    """`[fleet] database`: empty, or a postgresql:// URL (libpq's other forms are not taken, so a
    typo is caught here rather than as a connection failure)."""
    if value == "" or re.match(r"postgres(ql)?://", value):
        return None
    return 'must be empty or a URL starting with postgresql:// (e.g. "postgresql://sai@db.example/sai")'


SOCKET_PATH_MAX = 107
"""The longest path a Unix socket address holds (sun_path, less its terminating NUL)."""


def _box_sockets(value: dict[str, Any]) -> str | None:
    """`[fleet] sockets`: box name -> the absolute path of a socket that reaches that box's daemon."""
    for box, path in value.items():
        if not box.strip():
            return "a box name must not be empty"
        if not isinstance(path, str) or not path.startswith("/"):
            return f"box {box!r}: the socket must be an absolute path, not {path!r}"
        if len(path.encode()) > SOCKET_PATH_MAX:
            return f"box {box!r}: the socket path is longer than the {SOCKET_PATH_MAX} bytes a Unix socket takes"
    return None


NAMED_CHECKS: dict[str, Check] = {
    "box_sockets": _box_sockets, "colour": _colour, "devices": _devices, "libpq_url": _libpq_url,
    "loopback": _loopback, "priority": _priority,
    "regexes": _regexes,
    "scrypt_log2_n": check_scrypt_log2_n, "strings": _strings, "template": _template,
}
"""Rules that take code: a format, or a set of names the code defines (priorities, the key store's scrypt bounds)."""
ANY_TYPE_CHECKS = frozenset({"devices"})
"""Checks that judge the value's type themselves (a string or a list), so the default's type is not imposed."""


@dataclass(frozen=True)
class Rule:
    """One key's rule as the shipped file states it; `check` answers why a value breaks it, or None."""

    text: str
    check: Check
    choices: tuple[str, ...] = ()
    any_type: bool = False
    """The check takes values of more than one type (ANY_TYPE_CHECKS)."""


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise SchemaError(f"{text!r} is not a number") from None


def _with_note(reason: str, note: str) -> str:
    return f"{reason} ({note})" if note else reason


def parse_rule(text: str) -> Rule:
    """A rule from the text of its comment; SchemaError when it is not one of the forms above."""
    body, note = text.strip(), ""
    if body.endswith(")") and " (" in body:
        body, _, note = body[:-1].partition(" (")
    if body.startswith("check "):
        name = body.removeprefix("check ").strip()
        if name not in NAMED_CHECKS:
            raise SchemaError(f"unknown check {name!r}; known: {', '.join(sorted(NAMED_CHECKS))}")
        return Rule(text, NAMED_CHECKS[name], any_type=name in ANY_TYPE_CHECKS)
    if body.startswith("one of "):
        choices = tuple(c.strip() for c in body.removeprefix("one of ").split(","))
        reason = _with_note(f"must be one of {', '.join(choices)}", note)
        return Rule(text, lambda v: None if v in choices else reason, choices)
    if body.startswith(">= "):
        low_text = body.removeprefix(">= ").strip()
        low, reason = _number(low_text), _with_note(f"must be {low_text} or more", note)
        return Rule(text, lambda v: None if v >= low else reason)
    if body.startswith("> "):
        low_text = body.removeprefix("> ").strip()
        low, reason = _number(low_text), _with_note(f"must be greater than {low_text}", note)
        return Rule(text, lambda v: None if v > low else reason)
    low_text, sep, high_text = body.partition(" to ")
    if sep:
        if high_text.startswith("below "):
            high_text = high_text.removeprefix("below ")
            lo, hi = _number(low_text), _number(high_text)
            reason = _with_note(f"must be at least {low_text} and below {high_text}", note)
            return Rule(text, lambda v: None if lo <= v < hi else reason)
        lo, hi = _number(low_text), _number(high_text)
        reason = _with_note(f"must be between {low_text} and {high_text}", note)
        return Rule(text, lambda v: None if lo <= v <= hi else reason)
    raise SchemaError(f"cannot read the rule {text!r} (> N, >= N, N to M, N to below M, one of A, B, check NAME)")


def read_rules(text: str, source: str = "default.toml") -> dict[str, Rule]:
    """`{"section.key": Rule}` for every key of `text` (a TOML file) that carries a rule comment."""
    rules: dict[str, Rule] = {}
    section = ""
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("[") and not stripped.startswith("[["):
            section = stripped.strip("[]").strip()
            continue
        if not stripped or stripped.startswith("#") or RULE_MARK not in line:
            continue
        cut = line.find(RULE_MARK)
        while cut != -1:  # the first "  # " outside the value: what comes before it parses on its own
            try:
                keys = tomllib.loads(line[:cut])
            except tomllib.TOMLDecodeError:
                cut = line.find(RULE_MARK, cut + 1)
                continue
            (key,) = keys
            try:
                rules[f"{section}.{key}"] = parse_rule(line[cut + len(RULE_MARK):])
            except SchemaError as exc:
                raise SchemaError(f"{source}:{number}: {section}.{key}: {exc}") from None
            break
    return rules


@lru_cache(maxsize=1)
def shipped_rules() -> dict[str, Rule]:
    """The rules of the shipped default.toml (read once per process)."""
    return read_rules(DEFAULT_FILE.read_text(encoding="utf-8"), str(DEFAULT_FILE))


def choices(dotted: str) -> tuple[str, ...]:
    """The names a `one of` key of the shipped file allows, in the file's order (e.g. the anchors)."""
    return shipped_rules()[dotted].choices

"""Layered configuration: shipped defaults, system and user files, --config, SAI_* variables.

The shipped `config/default.toml` is also the schema: an override may only set keys that exist
there, with a value of the same type and within the range the key's line states (daemon.schema).
A bad value stops start-up with the file, key and reason.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from daemon.schema import DEFAULT_FILE, shipped_rules

SYSTEM_FILE = Path("/etc/secure-ai-studio/config.toml")
ENV_PREFIX = "SAI_"


class ConfigError(Exception):
    """A configuration value that cannot be used; names where it came from."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        super().__init__(f"{source}: {key}: {reason}")
        self.source, self.key, self.reason = source, key, reason


class Section(Mapping[str, Any]):
    """Read-only view of one `[section]`, with attribute access (`config.queue.max_batch`).

    The values are also plain instance attributes: the request path reads config values many
    times per submit, and an instance attribute is a dictionary hit, not a call to __getattr__
    (no key shadows a Mapping method: config keys are lower-case words that tests check)."""

    def __init__(self, name: str, values: dict[str, Any]) -> None:
        self.__dict__.update(values)
        self._name = name
        self._values = values

    def __getattr__(self, key: str) -> Any:  # only reached for a key the section does not have
        raise AttributeError(f"config has no key {self.__dict__.get('_name', '?')}.{key}")

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


@dataclass(frozen=True)
class Config:
    values: dict[str, dict[str, Any]]
    sources: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        # Built once: the request path reads config values many times per submit.
        object.__setattr__(self, "_sections", {name: Section(name, values) for name, values in self.values.items()})

    def __getattr__(self, section: str) -> Section:
        try:
            return self.__dict__["_sections"][section]
        except KeyError:
            raise AttributeError(f"config has no section [{section}]") from None

    def replace(self, **dotted: Any) -> Config:
        """A copy with `section__key=value` overrides, type-checked like a file (tests, CLI flags)."""
        layer: dict[str, dict[str, Any]] = {}
        for name, value in dotted.items():
            section, _, key = name.partition("__")
            layer.setdefault(section, {})[key] = value
        values = {s: dict(v) for s, v in self.values.items()}
        _merge(values, layer, "override")
        return Config(values, self.sources + ("override",))


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def _coerce(default: Any, value: Any) -> tuple[bool, Any]:
    if isinstance(default, bool) or isinstance(value, bool):
        return type(default) is type(value), value
    if isinstance(default, float) and isinstance(value, int):
        return True, float(value)
    return type(default) is type(value), value


def _merge(base: dict[str, dict[str, Any]], layer: Mapping[str, Any], source: str) -> None:
    rules = shipped_rules()
    for section, table in layer.items():
        if section not in base:
            raise ConfigError(source, section, f"unknown section; known: {', '.join(sorted(base))}")
        if not isinstance(table, dict):
            raise ConfigError(source, section, "must be a table")
        for key, value in table.items():
            dotted = f"{section}.{key}"
            if key not in base[section]:
                raise ConfigError(source, dotted, "unknown key")
            default = base[section][key]
            ok, value = _coerce(default, value)
            if not ok:
                raise ConfigError(source, dotted, f"must be {_type_name(default)}, not {_type_name(value)}")
            rule = rules.get(dotted)
            reason = rule.check(value) if rule else None
            if reason:
                raise ConfigError(source, dotted, f"{reason} (got {value!r})")
            base[section][key] = value


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "(file)", f"not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(str(path), "(file)", f"cannot read: {exc.strerror}") from None


def _env_layer(base: Mapping[str, Mapping[str, Any]], environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    layer: dict[str, dict[str, Any]] = {}
    for section, table in base.items():
        for key in table:
            name = f"{ENV_PREFIX}{section}_{key}".upper()
            if name in environ:
                raw = environ[name]
                try:
                    value = tomllib.loads(f"v = {raw}")["v"]
                except tomllib.TOMLDecodeError:
                    value = raw
                if isinstance(table[key], str):
                    value = raw
                layer.setdefault(section, {})[key] = value
    return layer


@lru_cache(maxsize=1)
def defaults() -> Config:
    """The shipped file alone (no system, user or environment layer), read once."""
    return Config(_read(DEFAULT_FILE), (str(DEFAULT_FILE),))


def load(config_file: str | os.PathLike[str] | None = None,
         environ: Mapping[str, str] | None = None,
         system_file: Path | None = SYSTEM_FILE) -> Config:
    """Defaults, then the system file, the user file, `config_file`, then SAI_* variables."""
    environ = os.environ if environ is None else environ
    values = _read(DEFAULT_FILE)
    sources = [str(DEFAULT_FILE)]
    xdg = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    candidates: list[tuple[Path, bool]] = []
    if system_file is not None:
        candidates.append((system_file, False))
    candidates.append((Path(xdg) / "secure-ai-studio" / "config.toml", False))
    if config_file is not None:
        candidates.append((Path(config_file), True))
    for path, required in candidates:
        if not required and not path.is_file():
            continue
        _merge(values, _read(path), str(path))
        sources.append(str(path))
    env = _env_layer(values, environ)
    if env:
        _merge(values, env, "environment")
        sources.append("environment")
    return Config(values, tuple(sources))

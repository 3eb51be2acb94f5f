"""Layered configuration: shipped defaults, system and user files, --config, SAI_* variables.

The shipped `config/default.toml` is also the schema: an override may only set keys that exist
there, with a value of the same type and within the range the key's line states (daemon.schema).
A bad value stops start-up with the file, key and reason.

`[models.NAME]` tables are the one open-ended part: any name, each key held to the rule of the key
of the same name in `[model]` (path, family, config_dir, scheduler, dtype) or `[defaults]` (steps,
guidance, width, height). Which file set each of their keys is kept (`Config.origins`) so that a
check made later, at the daemon's start (daemon.catalog: paths), still names the file.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from daemon.schema import DEFAULT_FILE, shipped_rules

SYSTEM_FILE = Path("/etc/secure-ai-studio/config.toml")
ENV_PREFIX = "SAI_"
MODELS = "models"
MODEL_KEYS = {"path": "model", "family": "model", "config_dir": "model", "scheduler": "model", "dtype": "model",
              "prediction": "model",
              "steps": "defaults", "guidance": "defaults", "width": "defaults", "height": "defaults"}
"""The keys a `[models.NAME]` table may set, each with the section whose key of that name states its
type and rule."""
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
BUILT_IN_MODELS = ("tiny", "tiny-sdxl", "tiny-sd3", "tiny-flux", "tiny-pixart", "sd15-shaped")
"""Models the worker builds offline from code (daemon.models.builders): configured without a path."""


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

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


@dataclass(frozen=True)
class Config:
    values: dict[str, dict[str, Any]]
    sources: tuple[str, ...] = field(default=())
    origins: dict[str, str] = field(default_factory=dict)
    """`models.NAME.KEY` -> the file (or "environment", "override") that set it."""

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
        origins = dict(self.origins)
        _merge(values, layer, "override", origins)
        _check_models(values, origins)
        return Config(values, self.sources + ("override",), origins)


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def _coerce(default: Any, value: Any) -> tuple[bool, Any]:
    if isinstance(default, bool) or isinstance(value, bool):
        return type(default) is type(value), value
    if isinstance(default, float) and isinstance(value, int):
        return True, float(value)
    return type(default) is type(value), value


def _checked(default: Any, value: Any, rule_key: str, dotted: str, source: str) -> Any:
    """`value` as the type of `default`, held to the rule of `rule_key`; ConfigError naming `dotted`."""
    ok, value = _coerce(default, value)
    rule = shipped_rules().get(rule_key)
    if not ok and not (rule and rule.any_type):
        raise ConfigError(source, dotted, f"must be {_type_name(default)}, not {_type_name(value)}")
    reason = rule.check(value) if rule else None
    if reason:
        raise ConfigError(source, dotted, f"{reason} (got {value!r})")
    return value


def _merge(base: dict[str, dict[str, Any]], layer: Mapping[str, Any], source: str,
           origins: dict[str, str] | None = None) -> None:
    for section, table in layer.items():
        if section not in base:
            raise ConfigError(source, section, f"unknown section; known: {', '.join(sorted(base))}")
        if not isinstance(table, dict):
            raise ConfigError(source, section, "must be a table")
        if section == MODELS:
            _merge_models(base, table, source, {} if origins is None else origins)
            continue
        for key, value in table.items():
            dotted = f"{section}.{key}"
            if key not in base[section]:
                raise ConfigError(source, dotted, "unknown key")
            base[section][key] = _checked(base[section][key], value, dotted, dotted, source)


def _merge_models(base: dict[str, dict[str, Any]], tables: dict[str, Any], source: str,
                  origins: dict[str, str]) -> None:
    """`[models.NAME]` tables: a later layer adds models or changes keys of one a lower layer named."""
    for name, table in tables.items():
        where = f"{MODELS}.{name}"
        if not MODEL_NAME.fullmatch(name):
            raise ConfigError(source, where, "a model name is 1 to 64 letters, digits, '.', '_' or '-', "
                              "starting with a letter or digit")
        if not isinstance(table, dict):
            raise ConfigError(source, where, f"must be a table ([{where}] with path = ...), not {_type_name(table)}")
        model = dict(base[MODELS].get(name, {}))
        for key, value in table.items():
            dotted = f"{where}.{key}"
            if key not in MODEL_KEYS:
                raise ConfigError(source, dotted, f"unknown key; a model table takes {', '.join(MODEL_KEYS)}")
            home = MODEL_KEYS[key]
            model[key] = _checked(base[home][key], value, f"{home}.{key}", dotted, source)
            origins[dotted] = source
        origins.setdefault(where, source)
        base[MODELS][name] = model


def _check_models(values: dict[str, dict[str, Any]], origins: Mapping[str, str]) -> None:
    """What only the merged whole can tell: every extra model has a path (or is built in), and no
    name is taken twice."""
    default = values["model"]["name"]
    for name, model in values[MODELS].items():
        where = f"{MODELS}.{name}"
        source = origins.get(where, "config")
        if name == default:
            raise ConfigError(source, where, f"{name!r} is already the default model's name (model.name); "
                              "give this one another name")
        if not model.get("path") and name not in BUILT_IN_MODELS:
            raise ConfigError(source, f"{where}.path", "missing: a model needs path = a local diffusers directory "
                              f"or .safetensors file (only the built-in {', '.join(BUILT_IN_MODELS)} need none)")
    known = [default, *values[MODELS]]
    for name in values["performance"]["compile_models"]:
        if name not in known:
            raise ConfigError(origins.get("performance.compile_models", "config"), "performance.compile_models",
                              f"{name!r} is not a configured model; known: {', '.join(known)}")


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
        if section == MODELS:  # tables of tables: set in a file, not one variable per key
            continue
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
    origins: dict[str, str] = {}
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
        _merge(values, _read(path), str(path), origins)
        sources.append(str(path))
    env = _env_layer(values, environ)
    if env:
        _merge(values, env, "environment", origins)
        sources.append("environment")
    _check_models(values, origins)
    return Config(values, tuple(sources), origins)

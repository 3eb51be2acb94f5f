"""One settings schema (issue 14 point 3): config/default.toml states every default and range once;
the config loader holds every layer to them; priorities, the seed rule and the file helpers live once."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from daemon import config, schema
from daemon.outputs.pipeline import OutputSettings
from daemon.outputs.visible import MarkSpec
from daemon.queue.jobs import SEED_RANGE, Job

ROOT = Path(__file__).resolve().parents[2]


def _just_outside(rule: schema.Rule, default: object) -> object | None:
    """A value of the default's type below the lower bound the rule's text states (None: no bound)."""
    body = rule.text.split(" (")[0]
    for prefix, step in ((">= ", 1), ("> ", 0)):
        if body.startswith(prefix):
            low = float(body.removeprefix(prefix))
            break
    else:
        if " to " not in body or body.startswith("check"):
            return None
        low, step = float(body.split(" to ")[0]), 1
    return int(low) - step if isinstance(default, int) else low - 0.5 * step


def test_every_shipped_default_keeps_its_own_rule() -> None:
    shipped = config.defaults()
    rules = schema.shipped_rules()
    assert rules, "default.toml carries no rules"
    for dotted, rule in rules.items():
        section, key = dotted.split(".")
        assert key in shipped.values[section], f"{dotted}: a rule for a key the file does not set"
        assert rule.check(shipped.values[section][key]) is None, f"{dotted}: default breaks {rule.text!r}"


def test_every_numeric_range_in_the_file_is_enforced_by_the_loader() -> None:
    shipped = config.defaults()
    tried = 0
    for dotted, rule in schema.shipped_rules().items():
        section, key = dotted.split(".")
        bad = _just_outside(rule, shipped.values[section][key])
        if bad is None:
            continue
        tried += 1
        with pytest.raises(config.ConfigError) as err:
            shipped.replace(**{f"{section}__{key}": bad})
        assert err.value.key == dotted and repr(bad) in err.value.reason
    assert tried > 60


@pytest.mark.parametrize("text, key, words", [
    ("[watermark]\nopacity = 1.5\n", "watermark.opacity", "must be between 0 and 1"),
    ("[watermark]\nposition = 'middle'\n", "watermark.position", "must be one of top-left"),
    ("[watermark]\ncolor = 'red'\n", "watermark.color", "#rrggbb"),
    ("[watermark]\ntext = 'SAI {prompt}'\n", "watermark.text", "bad template"),
    ("[outputs]\npreview_max_side = 8\n", "outputs.preview_max_side", "must be between 16 and 2048"),
    ("[alerts]\nhysteresis = 1.0\n", "alerts.hysteresis", "below 1 (a fraction of the threshold)"),
    ("[defaults]\npriority = 'urgent'\n", "defaults.priority", "one of low, normal, high, critical"),
])
def test_watermark_and_output_ranges_stop_the_load_naming_file_and_key(tmp_path: Path, text: str, key: str,
                                                                       words: str) -> None:
    """Before, the loader let a watermark range through and only the output pipeline refused it."""
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(config.ConfigError) as err:
        config.load(bad, environ={}, system_file=None)
    assert (err.value.source, err.value.key) == (str(bad), key) and words in err.value.reason


def test_typed_settings_hold_no_defaults_of_their_own() -> None:
    for cls in (OutputSettings, MarkSpec):
        own = [f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING]
        assert own == [], f"{cls.__name__} repeats defaults of config/default.toml: {own}"
    w, o = config.defaults().watermark, config.defaults().outputs
    settings = OutputSettings.defaults()
    assert (settings.opacity, settings.position, settings.png_compress_level) == (w.opacity, w.position,
                                                                                  o.png_compress_level)
    assert MarkSpec.shipped().scale == w.scale and MarkSpec.from_json({"text": "x"}).margin == w.margin


def test_a_rule_the_loader_cannot_read_names_the_line() -> None:
    with pytest.raises(schema.SchemaError, match=r"x.toml:2: s.k: cannot read the rule 'about 3'"):
        schema.read_rules("[s]\nk = 1  # about 3\n", "x.toml")
    assert schema.read_rules('[s]\nc = "#fff  # no"  # check colour\n')["s.c"].text == "check colour"


def test_priorities_are_defined_once() -> None:
    from console import jobview
    from console.commands import jobs as cli_jobs
    from console.screens import new_job
    from daemon import protocol
    from daemon.queue import jobs as queue_jobs

    for module in (cli_jobs, new_job, jobview, queue_jobs):
        assert module.PRIORITIES is protocol.PRIORITIES, module.__name__


def test_image_seeds_follow_one_rule() -> None:
    job = Job(job_id="j1", seq=1, state="queued", priority=1, params={"seed": SEED_RANGE - 1, "count": 3},
              prompt="p", negative_prompt="", user="u", uid=0, created_at=0.0, enqueued_at=0.0)
    assert [job.image_seed(i) for i in range(3)] == [SEED_RANGE - 1, 0, 1]
    job.params.pop("seed")
    assert job.image_seed(0) is None


@pytest.mark.parametrize("module, forbidden", [
    ("daemon.crypto.keys", "daemon.outputs"),
    ("daemon.config", "daemon.monitor"),
])
def test_lower_layers_do_not_load_upper_ones(module: str, forbidden: str) -> None:
    code = (f"import sys, {module}; "
            f"print(sorted(m for m in sys.modules if m == {forbidden!r} or m.startswith({forbidden + '.'!r})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert out.strip() == "[]", f"importing {module} loads {out.strip()}"

"""SVG snapshots (pytest-textual-snapshot) of the main screen and the job form, from fixed state:
no daemon, a frozen clock, made-up ids and pids. `pytest --snapshot-update` rewrites them after a
deliberate change; look at snapshot_report.html first."""

from __future__ import annotations

import ast
import inspect
from typing import Any

from textual.pilot import Pilot
from textual.widgets import Input

from tests.console import console_helpers
from tests.console.console_helpers import fill, fill_monitoring, offline_app


async def filled(pilot: Pilot[Any]) -> None:
    await pilot.pause()
    fill(pilot.app)  # type: ignore[arg-type]
    await pilot.pause()


async def form_with_errors(pilot: Pilot[Any]) -> None:
    await filled(pilot)
    await pilot.press("n")
    await pilot.pause()
    form = pilot.app.screen
    for widget in form.query(Input):
        widget.cursor_blink = False
    await pilot.press(*"a lighthouse at dusk")
    form.query_one("#steps", Input).value = "many"
    await pilot.pause()  # the edit is handled (it clears the field's error) before the daemon's answer comes
    form.show_rpc_error(_invalid("steps", "must be an integer, got str"))  # type: ignore[attr-defined]
    await pilot.pause()


def _invalid(field: str, reason: str) -> Exception:
    from daemon.protocol import invalid_params

    return invalid_params(field, reason)


def test_main_screen_80x24(snap_compare: Any) -> None:
    assert snap_compare(offline_app(), terminal_size=(80, 24), run_before=filled)


def test_main_screen_160x50(snap_compare: Any) -> None:
    assert snap_compare(offline_app(), terminal_size=(160, 50), run_before=filled)


def test_main_screen_light_theme_audit_pane(snap_compare: Any) -> None:
    async def light(pilot: Pilot[Any]) -> None:
        await filled(pilot)
        await pilot.press("T", "4")

    assert snap_compare(offline_app(), terminal_size=(80, 24), run_before=light)


def test_new_job_form_with_an_inline_error(snap_compare: Any) -> None:
    assert snap_compare(offline_app(), terminal_size=(80, 24), run_before=form_with_errors)


def test_help_screen(snap_compare: Any) -> None:
    assert snap_compare(offline_app(), terminal_size=(100, 40), run_before=filled, press=["question_mark"])


def test_monitoring_panes_with_figures_and_alerts_160x50(snap_compare: Any) -> None:
    async def monitored(pilot: Pilot[Any]) -> None:
        await filled(pilot)
        fill_monitoring(pilot.app)  # type: ignore[arg-type]
        await pilot.pause()

    assert snap_compare(offline_app(), terminal_size=(160, 50), run_before=monitored)


def test_the_snapshots_state_goes_in_through_the_panes_public_methods() -> None:
    """`fill` and `fill_monitoring` hand the panes answers as the daemon's arrive (a pane's `load`,
    which its own `reload` uses), never setting a pane's attributes or calling its private parts,
    so a snapshot shows what a real answer would."""
    tree = ast.parse(inspect.getsource(console_helpers))
    fills = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in ("fill", "fill_monitoring")]
    assert len(fills) == 2
    for fn in fills:
        private = [ast.unparse(n) for n in ast.walk(fn) if isinstance(n, ast.Attribute) and n.attr.startswith("_")]
        set_on_panes = [ast.unparse(t) for n in ast.walk(fn) if isinstance(n, (ast.Assign, ast.AugAssign))
                        for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
                        if ast.unparse(t).startswith(("main.audit", "main.memory", "main.alerts"))]
        assert not private and not set_on_panes, (fn.name, private, set_on_panes)

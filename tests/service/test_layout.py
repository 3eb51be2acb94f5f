"""Module names say what they hold (issue 14 point 4): an RPC handler lives in the api module
named after its area, the console's widgets package holds widgets, and the command modules
share the CLI's helpers through a module of their own rather than through console.cli."""

from __future__ import annotations

from daemon.api import load_all

OTHER_AREAS = {("status", "daemon"), ("monitor", "metrics"), ("monitor", "alerts"), ("outputs", "keys"),
               ("identify", "output"), ("outputs", "ca")}
"""Areas served by a module of another name: the daemon's own status, the monitor's metrics and
alerts, the key rotation that re-wraps every output, and output.identify (images from clients,
with its upload state, not this installation's output files), and ca.export (the certificate outputs are
signed under)."""


def test_each_api_module_is_named_after_the_methods_it_registers() -> None:
    misplaced = []
    for name, method in load_all().items():
        module, area = method.handler.__module__.rsplit(".", 1)[1], name.split(".", 1)[0]
        if module not in (area, area + "s") and (module, area) not in OTHER_AREAS:
            misplaced.append(f"{name} in daemon.api.{module}")
    assert not misplaced, misplaced


def test_console_widgets_package_holds_only_widgets() -> None:
    """Formatting, the row filter and the job view are shared with the CLI: they live beside
    console.cli, not among the widgets (importing them must not mean importing a widget)."""
    import importlib
    import inspect
    import pkgutil

    from textual.widget import Widget

    import console.widgets

    not_widgets = []
    for info in pkgutil.iter_modules(console.widgets.__path__):
        module = importlib.import_module(f"console.widgets.{info.name}")
        own = [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == module.__name__]
        if not any(issubclass(c, Widget) for c in own):
            not_widgets.append(module.__name__)
    assert not not_widgets, not_widgets


def test_commands_take_the_cli_helpers_from_their_own_modules() -> None:
    """The command modules import console.cliargs and console.cliout at the top; none reaches back
    into console.cli (which imports them) from inside a function."""
    import ast
    from pathlib import Path

    import console.commands

    back = []
    for path in sorted(Path(console.commands.__path__[0]).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "console.cli":
                back.append(f"{path.name}:{node.lineno}")
    assert not back, back


def test_the_tests_are_a_package_with_no_bare_name_helper_imports() -> None:
    """Every test directory is a package, so helpers are imported by their full name
    (tests.console.console_helpers), and a test file needs no prefix to keep its name unique."""
    import ast
    from pathlib import Path

    tests = Path(__file__).resolve().parents[1]
    folders = [tests, *(p for p in tests.iterdir() if p.is_dir() and list(p.glob("test_*.py")))]
    assert [str(p) for p in folders if not (p / "__init__.py").exists()] == []
    bare, prefixed = [], []
    for folder in folders[1:]:
        siblings = {p.stem for p in folder.glob("*.py")}
        for path in folder.glob("*.py"):
            if path.stem.startswith(f"test_{folder.name[:3]}_") or path.stem.startswith(f"test_{folder.name}_"):
                prefixed.append(path.name)
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in siblings:
                    bare.append(f"{folder.name}/{path.name}:{node.lineno} {node.module}")
    assert bare == [] and prefixed == [], (bare, prefixed)


def test_the_no_worker_config_is_defined_once() -> None:
    import ast
    from pathlib import Path

    from tests.configs import NO_WORKER

    tests = Path(__file__).resolve().parents[1]
    copies = []
    for path in tests.rglob("*.py"):
        if path.name == "configs.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Dict):
                try:
                    value = ast.literal_eval(node)
                except ValueError:
                    continue
                if value == NO_WORKER:
                    copies.append(f"{path.relative_to(tests)}:{node.lineno}")
    assert copies == [], copies


def test_the_daemon_harness_is_test_support_not_product() -> None:
    """The subprocess daemon for tests and benches lives in tests/harness.py (bench/ puts the
    repository root on sys.path to import it); the installed daemon package does not carry it."""
    import importlib.util

    assert importlib.util.find_spec("daemon.harness") is None
    assert importlib.util.find_spec("tests.harness") is not None

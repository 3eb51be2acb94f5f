"""The `:` command line: a command it does not know, or one a read-only console may not run, is
answered in words and the keyboard goes back to the pane; `:help` lists the `:` commands."""

from __future__ import annotations

from typing import Any

from console.app import SaiConsole
from console.screens.help import HelpScreen
from tests.configs import NO_WORKER
from tests.console.console_helpers import connected, notifications, screen_text, until

SIZE = (80, 24)


async def queued(client: Any, count: int) -> None:
    for n in range(count):
        await client.call("job.submit", prompt=f"command line test {n}")


async def test_unknown_command_is_named_and_the_queue_keys_work_again(make_daemon: Any, client_of: Any) -> None:
    daemon = make_daemon(NO_WORKER)
    await queued(await client_of(daemon), 3)
    app = SaiConsole(str(daemon.socket))
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        table = app.main.table
        await until(pilot, lambda: len(table.shown) == 3, 10, "3 jobs listed")
        await pilot.press("colon", *"frobnicate now", "enter")
        await until(pilot, lambda: "unknown command 'frobnicate' (try :help)" in notifications(app), 5,
                    "the unknown command named")
        assert app.focused is table
        await pilot.press("j")
        await until(pilot, lambda: "row 2/3" in screen_text(app), 5, "j moving the cursor after the error")

        await pilot.press("colon", *"help", "enter")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), 5, "the help screen")
        text = screen_text(app)
        for _ in range(120):  # the command line group comes last: scroll through it as a reader would
            await pilot.press("j")
            text += screen_text(app)
        for command in (":at TIME", ":sort COLUMN", ":theme dark|light", ":job ID", ":verify", ":restart", ":resume"):
            assert command in text, f"{command} not in\n{text}"


async def test_read_only_console_says_why_a_changing_command_does_nothing(make_daemon: Any, client_of: Any) -> None:
    daemon = make_daemon(NO_WORKER)
    await queued(await client_of(daemon), 2)
    app = SaiConsole(str(daemon.socket), readonly=True)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        table = app.main.table
        await until(pilot, lambda: len(table.shown) == 2, 10, "2 jobs listed")
        await pilot.press("colon", *"restart", "enter")
        await until(pilot, lambda: any(":restart changes the daemon's state, and this console is read-only" in n
                                       for n in notifications(app)), 5, "the refusal")
        assert app.focused is table
        await pilot.press("j")
        await until(pilot, lambda: "row 2/2" in screen_text(app), 5, "j moving the cursor after the refusal")
        await pilot.press("colon", *"help", "enter")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), 5, "the help screen")
        listed = [keys for heading, rows in app.screen.groups if heading.startswith("Command line")
                  for keys, _ in rows]
        assert ":verify" in listed and ":restart" not in listed and ":resume" not in listed, listed

"""How `sai … --help` reads: every option's default shown, and the exit statuses in `sai --help`."""

from __future__ import annotations

import argparse
import textwrap

from daemon.exitcodes import ExitCode


class HelpFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to an option's help unless the help already says what the default is,
    or there is none to tell (None, False: the option is simply off). A description or epilog
    with line breaks of its own is printed as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or isinstance(action.default, bool):
            return text
        if not action.option_strings and action.nargs not in ("?", "*"):
            return text
        return f"{text} (default: %(default)s)"


def exit_status_epilog() -> str:
    rows = "\n".join(textwrap.fill(meaning, 100, initial_indent=f"  {value:>3}  {name:<16} ",
                                   subsequent_indent=" " * 24) for value, name, meaning in ExitCode.describe())
    notes = textwrap.fill("JOB, wherever a command takes one: a job id, or enough of its start to be unique "
                          "(j3f2a). --json: JSON on stdout, and an error as {\"error\": {\"code\", \"exit\", "
                          "\"message\"}} there too.", 100)
    return f"exit statuses (the same for every command; docs/operations.md):\n{rows}\n\n{notes}\n"


def apply(parser: argparse.ArgumentParser) -> None:
    """The formatter for `parser` and every subcommand parser under it (add_parser does not pass it on)."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                apply(child)

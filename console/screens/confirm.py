"""A yes/no question that defaults to No, and the cancel flow that asks it."""

from __future__ import annotations

from typing import Any, ClassVar

from textual import on
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Label, Static

from console.widgets.pane import console_of

CANCELLABLE = ("queued", "running")
NAMED = 8


class ConfirmScreen(ModalScreen[bool]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
        Binding("left,h", "app.focus_previous", "Previous", show=False),
        Binding("right,l", "app.focus_next", "Next", show=False),
    ]

    def __init__(self, title: str, question: str, yes: str = "Yes") -> None:
        super().__init__()
        self.title_text, self.question, self.yes = title, question, yes

    def compose(self) -> Any:
        with Vertical(id="confirm-box"):
            yield Label(self.title_text, id="confirm-title")
            yield Static(self.question, id="confirm-question", markup=False)
            with Horizontal(id="confirm-buttons"):
                yield Button("No", id="no", variant="primary", compact=True)
                yield Button(self.yes, id="yes", variant="error", compact=True)

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


def describe(jobs: list[dict[str, Any]]) -> str:
    lines = [f"  {job['job_id']}  {job.get('state', '?'):<8} {job.get('priority', ''):<8} owner {job.get('user', '?')}"
             for job in jobs[:NAMED]]
    if len(jobs) > NAMED:
        owners = sorted({str(job.get("user", "?")) for job in jobs[NAMED:]})
        lines.append(f"  … and {len(jobs) - NAMED} more (owners: {', '.join(owners)})")
    return "\n".join(lines)


async def cancel_jobs(screen: Screen[Any], jobs: list[dict[str, Any]]) -> int:
    """Ask (default No), naming the jobs and owners, then cancel each; the daemon's refusals are shown.
    Returns how many the daemon accepted. Must run in a worker (it waits for the answer)."""
    live = [job for job in jobs if job.get("state") in CANCELLABLE]
    if not live:
        screen.notify("Nothing to cancel: select or tag (space) a queued or running job.", severity="warning")
        return 0
    noun = "job" if len(live) == 1 else f"{len(live)} jobs"
    question = f"Cancel {noun}?\n\n{describe(live)}\n\nRunning jobs stop at their next step."
    if not await screen.app.push_screen_wait(ConfirmScreen("Cancel jobs", question, yes="Cancel jobs")):
        return 0
    console = console_of(screen)
    done = 0
    for job in live:
        try:
            await console.rpc("job.cancel", job_id=job["job_id"])
            done += 1
        except Exception as exc:
            console.report(f"Cancel {job['job_id']}", exc)
    if done:
        screen.notify(f"Cancelled {done} of {len(live)}.")
    return done

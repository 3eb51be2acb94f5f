"""One job: every param, a timeline of its states, its outputs with their verification, its audit
entries, and a preview of the image drawn in the terminal (textual-image: a graphics protocol when
the terminal has one, else half-block or unicode cells)."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Awaitable
from typing import Any, ClassVar

from PIL import Image as PILImage
from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import work
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Label, Static
from textual_image.widget import Image

from console.formatting import bar, clock_time, human_bytes, parse_time, short_hash
from console.screens.confirm import CANCELLABLE, cancel_jobs
from console.screens.help import key_label
from console.widgets.key_bar import KeyBar
from console.widgets.pane import console_of

PREVIEW_SIDE = 256


def grid() -> Table:
    table = Table.grid(padding=(0, 1))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    return table


class JobDetailScreen(Screen[None]):
    COMPONENT_CLASSES: ClassVar[set[str]] = {"job-detail--heading"}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,backspace,q", "back", "Back", show=True),
        Binding("x,ctrl+d", "cancel", "Cancel job", show=True),
        Binding("o", "next_output", "Next image", show=True),
        Binding("v", "verify", "Verify outputs", show=True),
        Binding("r,f5", "reload", "Reload", show=False),
        Binding("j", "scroll(1)", "Down", show=False),
        Binding("k", "scroll(-1)", "Up", show=False),
    ]

    def __init__(self) -> None:
        """One instance serves every job (`show`): the app installs it, so opening a job costs a
        layout and a paint, not composing, mounting and styling a dozen widgets each time."""
        super().__init__()
        self.job: dict[str, Any] = {}
        self.job_id = ""
        self.seen: list[tuple[float, str]] = []
        self.audit_entries: list[dict[str, Any]] = []
        self.verification: dict[int, dict[str, Any]] = {}
        self.verify_note = ""
        self.audit_note = "loading…"
        self.output_index = 0

    def show(self, job: dict[str, Any]) -> None:
        """Point the screen at `job` (from the queue table: drawn at once, then reloaded)."""
        changed = str(job["job_id"]) != self.job_id
        self.job = dict(job)
        self.job_id = str(job["job_id"])
        if changed:
            self.seen, self.audit_entries, self.verification = [], [], {}
            self.output_index = 0
            if self.is_mounted:
                self.query_one("#preview-image", Image).image = None
                self.query_one("#preview-title", Label).update("Preview")
                self.query_one("#preview-note", Static).update("")
        self.verify_note, self.audit_note = "", "loading…"

    def compose(self) -> Any:
        yield Static(id="detail-title")
        with Horizontal(id="detail-body"):
            with VerticalScroll(id="detail-info"):
                yield Static(id="detail-text")
            with Vertical(id="detail-preview"):
                yield Label("Preview", id="preview-title", classes="detail-heading")
                yield Image(id="preview-image")
                yield Static(id="preview-note")
        yield KeyBar(self._keys(), id="detail-keys")

    def _keys(self) -> list[tuple[str, str]]:
        """The key hints: `x Cancel job` only while there is something to cancel and leave to do it."""
        cancellable = self.job.get("state") in CANCELLABLE and not console_of(self).readonly
        bindings = [b for b in self.BINDINGS if isinstance(b, Binding)]
        return [(key_label(self.app, b.key), b.description) for b in bindings
                if b.show and (b.action != "cancel" or cancellable)]

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (action == "cancel" and console_of(self).readonly)

    def on_screen_resume(self) -> None:
        info = self.query_one("#detail-info", VerticalScroll)
        info.focus()
        info.scroll_home(animate=False)
        self._draw()
        self.action_reload()

    # -- loading ---------------------------------------------------------------------------------

    @work(group="load", exclusive=True)
    async def action_reload(self) -> None:
        """The job and its audit entries together, then one redraw (one relayout, not two)."""
        console = console_of(self)
        job, entries = await asyncio.gather(console.rpc("job.get", job_id=self.job_id), self._audit_entries(),
                                            return_exceptions=True)
        if isinstance(job, BaseException):
            console.report(f"job.get {self.job_id}", job)
        else:
            self.job = job
        if isinstance(entries, BaseException):
            self.audit_note = f"audit.tail: {entries}"
        else:
            self.audit_entries = entries
            self.audit_note = "none found"
        self._draw()
        if self.job.get("state") == "succeeded":
            self._verify()
            self._preview()

    async def _audit_entries(self) -> list[dict[str, Any]]:
        """This job's entries, by subject: this box's and, when the console is attached to the fleet
        box that ran it (console.fleetlinks), that box's too, marked with its box, in time order."""
        console = console_of(self)
        box = self.job.get("box")
        there = console.links.call_of(box)
        asked: list[Awaitable[Any]] = [console.rpc("audit.tail", limit=200, subject=self.job_id)]
        if there is not None:
            asked.append(there("audit.tail", limit=200, subject=self.job_id))
        here, *others = await asyncio.gather(*asked, return_exceptions=True)
        if isinstance(here, BaseException):
            raise here
        entries = list(here.get("entries", []))
        for other in others:  # the other box's trouble is the fleet pane's to show
            if not isinstance(other, BaseException):
                entries += [{**entry, "box": box} for entry in other.get("entries", [])]
        return sorted(entries, key=lambda entry: parse_time(entry.get("time")) or 0.0) if others else entries

    @work(group="verify", exclusive=True)
    async def _verify(self) -> None:
        try:
            result = await console_of(self).rpc_where_held("output.verify", job_id=self.job_id)
        except Exception as exc:
            self.verify_note = f"not verified: {exc}"
        else:
            self.verify_note = ""
            self.verification = {int(o.get("index", 0)): o for o in result.get("outputs", [])}
        self._draw()

    @work(group="preview", exclusive=True)
    async def _preview(self) -> None:
        note = self.query_one("#preview-note", Static)
        outputs = self.job.get("outputs") or []
        self.query_one("#preview-title", Label).update(
            f"Preview (image {self.output_index + 1} of {len(outputs)}, o: next)" if outputs else "Preview")
        try:
            result = await console_of(self).rpc_where_held("output.preview", job_id=self.job_id,
                                                           index=self.output_index, max_side=PREVIEW_SIDE)
            image = PILImage.open(io.BytesIO(base64.b64decode(result["png"])))
            image.load()
        except Exception as exc:
            note.update(Text(f"no preview: {exc}", style="italic"))
            return
        self.query_one("#preview-image", Image).image = image
        note.update(f"{result.get('width')}×{result.get('height')} preview, decrypted in memory")

    # -- live updates from the app ---------------------------------------------------------------

    def job_event(self, job: dict[str, Any]) -> None:
        old_state = self.job.get("state")
        params = {**(self.job.get("params") or {}), **(job.get("params") or {})}
        self.job = {**self.job, **job, "params": params}
        if job.get("state") != old_state:
            self.seen.append((console_of(self).clock(), str(job.get("state"))))
            if job.get("state") == "succeeded":
                self.action_reload()
        self._draw()

    def job_progress(self, progress: float, step: int, steps: int) -> None:
        self.job["progress"] = progress
        self.job["step"], self.job["steps"] = step, steps
        self._draw_title()

    def audit_event(self, entry: dict[str, Any]) -> None:
        if entry.get("subject") == self.job_id:
            self.audit_entries.append(entry)
            self._draw()

    # -- drawing ---------------------------------------------------------------------------------

    def _draw_title(self) -> None:
        job = self.job
        state = str(job.get("state", "?"))
        text = Text(f"Job {self.job_id}  ", style="bold")
        text.append(state.upper(), style="reverse")
        if state == "running":
            step = f" step {job['step']}/{job['steps']}" if job.get("steps") else ""
            text.append(f"  {bar(float(job.get('progress') or 0), 20)} {float(job.get('progress') or 0):.0%}{step}")
        text.append(f"  priority {job.get('priority', '-')}  owner {job.get('user', '-')}")
        if job.get("error"):
            text.append(f"\n{job['error']}", style="bold")
        self.query_one("#detail-title", Static).update(text)
        self.query_one(KeyBar).set_keys(self._keys())

    def _draw(self) -> None:
        """Everything on the left as one renderable: one widget to lay out and paint per change."""
        self._draw_title()
        heading = self.get_component_rich_style("job-detail--heading", partial=True)
        parts: list[Any] = []
        for title, body in (("Params", self._params()), ("Timeline", self._timeline()),
                            ("Outputs", self._outputs()), ("Audit entries", self._audit())):
            parts += [Text(title, style=heading), body, Text()]
        self.query_one("#detail-text", Static).update(Group(*parts))

    def _params(self) -> Table:
        job = self.job
        params = grid()
        shown = dict(job.get("params") or {})
        if not job.get("prompt_visible", True) and "prompt" not in shown:
            shown["prompt"] = "(hidden: only the owner or an admin may see it)"
        for key in ["prompt", "negative_prompt"] + sorted(k for k in shown if k not in ("prompt", "negative_prompt")):
            if key in shown:
                params.add_row(key, Text(str(shown[key])))
        for key in ("model_id", "attempts", "risk"):
            if job.get(key) not in (None, ""):
                params.add_row(key, str(job[key]))
        for warning in job.get("warnings") or []:
            params.add_row("warning", Text(str(warning)))
        return params

    def _audit(self) -> Table | str:
        if not self.audit_entries:
            return self.audit_note
        audit = grid()
        for entry in self.audit_entries:
            actor = (entry.get("actor") or {}).get("user", "")
            seq = f"{entry['box']} #{entry.get('seq')}" if entry.get("box") else f"#{entry.get('seq')}"
            audit.add_row(seq, Text(f"{clock_time(parse_time(entry.get('time')))} {entry.get('action')} by {actor}"))
        return audit

    def _timeline(self) -> Table:
        events: list[tuple[float, str]] = []
        job = self.job
        for key, label in (("created_at", "queued"), ("started_at", "running"), ("finished_at", str(job.get("state")))):
            stamp = parse_time(job.get(key))
            if stamp is not None:
                events.append((stamp, label))
        recorded = {label for _, label in events}
        events += [(t, f"{state} (seen live)") for t, state in self.seen if state not in recorded]
        for entry in self.audit_entries:
            stamp = parse_time(entry.get("time"))
            if stamp is not None:
                events.append((stamp, f"audit: {entry.get('action')}"))
        table = grid()
        for stamp, label in sorted(events):
            table.add_row(clock_time(stamp), label)
        return table

    def _outputs(self) -> Table | str:
        outputs = self.job.get("outputs") or []
        if not outputs:
            return "none yet" if self.job.get("state") in ("queued", "running") else "none"
        table = grid()
        for output in outputs:
            index = int(output.get("index", 0))
            check = self.verification.get(index)
            status = ("verified ✓" if check.get("ok") else f"FAILED ✗ {check.get('error') or ''}") if check \
                else (self.verify_note or "verifying…")
            size = f"{output.get('width', '?')}×{output.get('height', '?')}"
            table.add_row(f"#{index}", Text(f"{size} sha256 {short_hash(output.get('sha256'), 16)} "
                                            f"{human_bytes(output.get('size'))if output.get('size') else ''}"))
            table.add_row("", Text(status, style="bold" if check and not check.get("ok") else ""))
        return table

    # -- keys ------------------------------------------------------------------------------------

    def action_back(self) -> None:
        self.dismiss(None)

    def action_scroll(self, step: int) -> None:
        info = self.query_one("#detail-info", VerticalScroll)
        info.scroll_to(y=info.scroll_y + step, animate=False)

    def action_next_output(self) -> None:
        outputs = self.job.get("outputs") or []
        if outputs:
            self.output_index = (self.output_index + 1) % len(outputs)
            self._preview()

    def action_verify(self) -> None:
        self.verification.clear()
        self.verify_note = "verifying…"
        self._draw()
        self._verify()

    @work(group="cancel", exclusive=True)
    async def action_cancel(self) -> None:
        state = self.job.get("state")
        if state not in CANCELLABLE:
            self.notify(f"{self.job_id} is {state}: only a queued or running job can be cancelled.",
                        severity="warning")
            return
        await cancel_jobs(self, [self.job])

"""The queue: every job the daemon lists, live from the `job` topic; sortable, filterable, taggable.

A Line API widget: it draws only the rows on screen, so filtering or re-sorting a thousand jobs
costs a list sort and a repaint of one screenful, and a progress event repaints one line. Rows
are cached as drawn strips until their job, the width or the theme changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from console import jobview
from console.formatting import bar, duration, parse_time
from console.jobview import COLUMN_SORT, FINISHED, PRIORITY_LABEL, SORT_KEYS, SORTS, STATE_MARK, job_fields
from console.rowfilter import RowFilter


class QueueTable(ScrollView, can_focus=True):
    """Jobs by job id, drawn a screenful at a time; the cursor is a row of `shown`."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "queue-table--header", "queue-table--cursor", "queue-table--queued", "queue-table--running",
        "queue-table--succeeded", "queue-table--failed", "queue-table--cancelled", "queue-table--tag",
        "queue-table--dim", "queue-table--critical",
    }
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "move(-1)", "Up", show=False),
        Binding("down,j", "move(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home,g", "first", "First row", show=False),
        Binding("end,G", "last", "Last row", show=False),
        Binding("enter", "select", "Job detail", show=False),
        Binding("space", "tag", "Tag", show=False),
        Binding("s", "cycle_sort", "Sort by next column", show=False),
        Binding("S", "reverse_sort", "Reverse sort", show=False),
    ]

    cursor: reactive[int] = reactive(0, always_update=True)

    class ViewChanged(Message):
        """Rows, filter, sort or tags changed: the pane's title counts."""

    class PromptsWanted(Message):
        def __init__(self, job_ids: list[str]) -> None:
            super().__init__()
            self.job_ids = job_ids

    class Selected(Message):
        def __init__(self, job_id: str) -> None:
            super().__init__()
            self.job_id = job_id

    def __init__(self, clock: Callable[[], float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clock = clock
        self.jobs: dict[str, dict[str, Any]] = {}
        self.tagged: set[str] = set()
        self.row_filter = RowFilter()
        self.sort = "queue"
        self.reverse = False
        self.shown: list[str] = []
        self._cursor_state: str | None = None
        """The state of the job under the cursor when it was last placed there or followed."""
        self._row_of: dict[str, int] = {}
        self._columns: list[tuple[str, str, int]] = []
        self._lines: dict[str, tuple[int, Style, Strip]] = {}
        self._header: tuple[int, Style, str, Strip] | None = None
        self._fields: dict[str, dict[str, str]] = {}
        self._keys: dict[str, Any] = {}
        self._keys_sort = self.sort
        self._styles: dict[str, Style] = {}
        self._rebuild_pending = False
        self.boxes = False
        """A fleet member's queue: a column names the box of each job (`show_boxes`)."""
        self.models: set[str] = set()
        """The models the jobs name: a column shows each job's once there are two or more."""

    def on_mount(self) -> None:
        self.set_interval(5.0, self._refresh_ages)
        self.watch(self.app, "theme", self._restyle, init=False)

    # -- layout and drawing ------------------------------------------------------------------

    @property
    def wide(self) -> bool:
        return self.size.width >= 110

    def on_resize(self) -> None:
        spec = jobview.queue_columns(self.wide, self.boxes, len(self.models) > 1)
        fixed = sum(width for _, _, width in spec) + 2 * len(spec)
        self._columns = [(key, label, width or max(8, self.size.width - fixed)) for key, label, width in spec]
        self._lines.clear()
        self._header = None
        self._sync_size()
        self._follow_cursor()

    def _sync_size(self) -> None:
        """Rows changed. Setting `virtual_size` the usual way re-lays out the whole screen; the
        table draws no scrollbar (see the .tcss; the header says which row the cursor is on, and
        a scrollbar cost more to paint than the rows), so updating it in place is enough."""
        size = Size(self.size.width, len(self.shown) + 1)
        if size != self.virtual_size:
            self.set_reactive(QueueTable.virtual_size, size)
            self._scroll_update(size)
        self.refresh()

    def _restyle(self) -> None:
        self._styles.clear()
        self._lines.clear()
        self._header = None
        self.refresh()

    def _style(self, name: str) -> Style:
        if name not in self._styles:
            self._styles[name] = self.get_component_rich_style(f"queue-table--{name}", partial=True)
        return self._styles[name]

    def on_focus(self) -> None:
        self.refresh_line(self.cursor + 1)  # the cursor row is drawn dim while focus is elsewhere

    def on_blur(self) -> None:
        self.refresh_line(self.cursor + 1)

    def _state_cell(self, job: dict[str, Any]) -> Text:
        state = job.get("state", "")
        style = self._style(state) if state in STATE_MARK else Style()
        if state == "running":
            progress = float(job.get("progress") or 0.0)
            label = "running " if self.wide else ""
            return Text(f"▶ {label}{bar(progress, 10 if self.wide else 4)} {progress:.0%}", style=style)
        if state == "queued" and job.get("next"):
            return Text(f"{STATE_MARK[state]} next" + (" (in worker)" if self.wide else ""), style=style)
        return Text(f"{STATE_MARK.get(state, '?')} {state}", style=style)

    def _cells(self, job: dict[str, Any]) -> dict[str, Text]:
        params = job.get("params") or {}
        prompt = params.get("prompt")
        priority = str(job.get("priority", ""))
        tagged = job["job_id"] in self.tagged
        created = parse_time(job.get("created_at"))
        return {
            "tag": Text("*" if tagged else " ", style=self._style("tag")),
            "job_id": Text(job["job_id"], style=self._style("tag") if tagged else ""),
            "priority": Text(PRIORITY_LABEL.get(priority, priority),
                             style=self._style("critical") if priority == "critical" else ""),
            "state": self._state_cell(job),
            "prompt": Text(" ".join(str(prompt).split())) if prompt is not None
            else Text("(hidden)" if job.get("prompt_visible") is False else "…", style=self._style("dim")),
            "user": Text(str(job.get("user", ""))),
            "age": Text(duration(self.clock() - created) if created is not None else "-"),
            "box": Text(str(job.get("box") or "-"), style=self._style("dim") if not job.get("box") else ""),
            "model": Text(str(job.get("model_id") or "-")),
        }

    def _join(self, cells: dict[str, Text], style: Style | None = None) -> Strip:
        line = Text(no_wrap=True, end="")
        for key, _, width in self._columns:
            cell = cells[key].copy()
            cell.truncate(width, overflow="ellipsis", pad=True)
            line.append(" ")
            line.append_text(cell)
            line.append(" ")
        if style is not None:
            line.stylize(style)
        segments = list(line.render(self.app.console))
        return Strip(segments, line.cell_len)

    def _row_strip(self, job_id: str, width: int, base: Style) -> Strip:
        """The row as drawn: cached with the width and base style it was made for."""
        cached = self._lines.get(job_id)
        if cached is not None and cached[0] == width and cached[1] == base:
            return cached[2]
        strip = self._join(self._cells(self.jobs[job_id])).adjust_cell_length(width).apply_style(base)
        self._lines[job_id] = (width, base, strip)
        return strip

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        base = self.rich_style
        if y == 0:
            position = f"{self.cursor + 1}/{len(self.shown)}" if self.shown else "0/0"
            if self._header is None or self._header[:3] != (width, base, position):
                labels = {key: Text(label) for key, label, _ in self._columns}
                labels["prompt"] = Text(f"prompt · row {position}")  # where the cursor is: no scrollbar
                header = self._join(labels, self._style("header"))
                self._header = (width, base, position, header.adjust_cell_length(width, base).apply_style(base))
            return self._header[3]
        row = int(self.scroll_offset.y) + y - 1
        if not 0 <= row < len(self.shown):
            return Strip.blank(width, base)
        strip = self._row_strip(self.shown[row], width, base)
        if row == self.cursor:
            cursor = self._style("cursor")
            strip = Strip(Segment.apply_style(list(strip), post_style=cursor if self.has_focus else
                                              Style(reverse=True, dim=True)), strip.cell_length)
        return strip

    def _refresh_row(self, job_id: str) -> None:
        self._lines.pop(job_id, None)
        row = self._row_of.get(job_id)
        if row is not None:
            self.refresh_line(row + 1)

    # -- the view: filter, sort, rows --------------------------------------------------------

    def _fill(self) -> None:
        """Recompute the rows shown, keeping the cursor on the same job, unless that job has just
        finished: then the cursor keeps its row, so an operator watching the head of the queue is
        not carried down to the finished jobs each time one ends."""
        self._rebuild_pending = False
        keep = self.selected_key()
        if self._keys_sort != self.sort:
            self._keys, self._keys_sort = {}, self.sort
        ids = list(self.jobs)
        if self.row_filter:
            ids = [job_id for job_id in ids if self.row_filter.matches(self._fields_of(job_id))]
        ids.sort(key=self._sort_key, reverse=self.reverse)
        self.shown = ids
        self._row_of = {job_id: row for row, job_id in enumerate(self.shown)}
        self._sync_size()
        row = self._row_of.get(keep) if keep else 0
        if row is None or (keep and self._just_finished(keep)):
            row = min(self.cursor, max(0, len(self.shown) - 1))
        self.cursor = row
        self.post_message(self.ViewChanged())

    def _just_finished(self, job_id: str) -> bool:
        state = self.jobs[job_id].get("state")
        return state in FINISHED and self._cursor_state not in (None, *FINISHED)

    def _fields_of(self, job_id: str) -> dict[str, str]:
        fields = self._fields.get(job_id)
        if fields is None:
            fields = self._fields[job_id] = job_fields(self.jobs[job_id])
        return fields

    def _sort_key(self, job_id: str) -> Any:
        key = self._keys.get(job_id)
        if key is None:
            key = self._keys[job_id] = SORT_KEYS[self.sort](self.jobs[job_id])
        return key

    def _forget(self, job_id: str) -> None:
        """The job changed: its line, filter fields and sort key are stale."""
        for cache in (self._lines, self._fields, self._keys):
            cache.pop(job_id, None)

    def rebuild_soon(self) -> None:
        """Coalesce bursts of changes (a thousand submits) into one re-sort."""
        if not self._rebuild_pending:
            self._rebuild_pending = True
            self.set_timer(0.15, self._fill)

    def _refresh_ages(self) -> None:
        """Every drawn row holds its age: drop them all, not only those in view, or a row scrolled
        into view later shows the age it had when it was last drawn. Rows are redrawn when shown."""
        self._lines.clear()
        self.refresh()

    def show_boxes(self) -> None:
        self.boxes = True
        self.on_resize()

    def _note_model(self, job: dict[str, Any]) -> None:
        """The model column appears with a second model (and stays: jobs come and go)."""
        model = str(job.get("model_id") or "")
        if model and model not in self.models:
            self.models.add(model)
            if len(self.models) == 2:
                self.on_resize()

    # -- data in -----------------------------------------------------------------------------

    def load(self, jobs: list[dict[str, Any]]) -> None:
        known = set(self.jobs)
        self.jobs = {job["job_id"]: job for job in jobs}
        self.tagged &= set(self.jobs)
        for cache in (self._lines, self._fields, self._keys):
            cache.clear()
        for job in jobs:
            self._note_model(job)
        self._fill()
        missing = [job_id for job_id, job in self.jobs.items()
                   if "prompt" not in (job.get("params") or {}) and job.get("prompt_visible") is not False
                   and job_id not in known]
        if missing:
            self.post_message(self.PromptsWanted(missing))

    def apply(self, job: dict[str, Any]) -> None:
        """A job object from an event (no prompt): merge it, keeping the prompt we have."""
        job_id = job["job_id"]
        old = self.jobs.get(job_id)
        merged = dict(job)
        if old is not None:
            params = dict(merged.get("params") or {})
            for key in ("prompt", "negative_prompt"):
                if key in (old.get("params") or {}) and key not in params:
                    params[key] = old["params"][key]
            merged["params"] = params
            merged["prompt_visible"] = old.get("prompt_visible", merged.get("prompt_visible"))
        old_key = self._sort_key(job_id) if old is not None else None
        self.jobs[job_id] = merged
        self._note_model(merged)
        self._forget(job_id)
        if old is None:
            self.post_message(self.PromptsWanted([job_id]))
        visible = not self.row_filter or self.row_filter.matches(self._fields_of(job_id))
        if old is not None and job_id in self._row_of and visible and old_key == self._sort_key(job_id):
            self._refresh_row(job_id)
        elif job_id in self._row_of or visible:
            self.rebuild_soon()

    def set_prompt(self, job: dict[str, Any]) -> None:
        """A job fetched with job.get: it carries the prompt when we may see it."""
        current = self.jobs.get(job["job_id"])
        if current is None:
            return
        params = dict(current.get("params") or {})
        for key in ("prompt", "negative_prompt"):
            if key in (job.get("params") or {}):
                params[key] = job["params"][key]
        current["params"] = params
        current["prompt_visible"] = job.get("prompt_visible")
        self._forget(job["job_id"])
        self._refresh_row(job["job_id"])

    def progress(self, job_id: str, progress: float) -> None:
        job = self.jobs.get(job_id)
        if job is not None and job.get("state") == "running":
            job["progress"] = progress
            self._refresh_row(job_id)

    # -- cursor --------------------------------------------------------------------------------

    def validate_cursor(self, cursor: int) -> int:
        return max(0, min(cursor, len(self.shown) - 1)) if self.shown else 0

    def watch_cursor(self, old: int, new: int) -> None:
        selected = self.selected_key()
        self._cursor_state = self.jobs[selected].get("state") if selected in self.jobs else None
        self.refresh_line(0)
        self.refresh_line(old + 1)
        self.refresh_line(new + 1)
        self._follow_cursor()

    def _follow_cursor(self) -> None:
        """Scroll just enough to show the cursor row under the header. Forced: without a scrollbar
        (overflow hidden) Textual refuses scroll_to, and the rows shown stayed the first ones."""
        rows = max(1, self.size.height - 1)
        top = int(self.scroll_offset.y)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, force=True)
        elif self.cursor >= top + rows:
            self.scroll_to(y=self.cursor - rows + 1, animate=False, force=True)

    def selected_key(self) -> str | None:
        return self.shown[self.cursor] if 0 <= self.cursor < len(self.shown) else None

    def select_key(self, job_id: str | None) -> None:
        if job_id in self._row_of:
            self.cursor = self._row_of[job_id]

    def action_move(self, step: int) -> None:
        self.cursor += step

    def action_page(self, step: int) -> None:
        self.cursor += step * max(1, self.size.height - 2)

    def action_first(self) -> None:
        self.cursor = 0

    def action_last(self) -> None:
        self.cursor = len(self.shown) - 1

    def action_select(self) -> None:
        if (job_id := self.selected_key()) is not None:
            self.post_message(self.Selected(job_id))

    def on_click(self, event: events.Click) -> None:
        if event.y == 0:
            x = 0
            for key, _, width in self._columns:
                x += width + 2
                if event.x < x:
                    self._sort_by(COLUMN_SORT.get(key))
                    return
            return
        self.cursor = int(self.scroll_offset.y) + event.y - 1
        if event.chain > 1:
            self.action_select()

    # -- what the operator does ----------------------------------------------------------------

    def set_filter(self, text: str) -> None:
        if text.strip() != self.row_filter.text:
            self.row_filter = RowFilter(text)
            self._fill()

    def action_tag(self) -> None:
        job_id = self.selected_key()
        if job_id is None:
            return
        self.tagged.symmetric_difference_update({job_id})
        self._refresh_row(job_id)
        self.cursor += 1
        self.post_message(self.ViewChanged())

    def action_cycle_sort(self) -> None:
        self.set_sort(SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)])

    def action_reverse_sort(self) -> None:
        self.set_sort(self.sort, not self.reverse)

    def set_sort(self, sort: str, reverse: bool = False) -> None:
        self.sort, self.reverse = sort, reverse
        self._fill()

    def _sort_by(self, sort: str | None) -> None:
        """A header click: that column, or the same column reversed."""
        if sort is not None:
            self.set_sort(sort, not self.reverse if self.sort == sort else False)

    def targets(self) -> list[dict[str, Any]]:
        """The tagged jobs, or else the one under the cursor."""
        if self.tagged:
            return [self.jobs[job_id] for job_id in sorted(self.tagged, key=lambda j: self._row_of.get(j, -1))]
        job_id = self.selected_key()
        return [self.jobs[job_id]] if job_id in self.jobs else []

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATE_MARK, 0)
        for job in self.jobs.values():
            counts[job.get("state", "")] = counts.get(job.get("state", ""), 0) + 1
        return counts

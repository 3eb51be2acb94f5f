"""Audit: the live tail of the log, its latest checkpoint, and the result of `v` (audit.verify).

The pane holds the latest entries only; a filter searches the whole log, page by page from the
newest entry back, in a worker (as `sai audit tail --action` does on the daemon's side), and the
border says how far the search has got."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.message import Message
from textual.widgets import Static

from console.formatting import clock_time, parse_time
from console.rowfilter import RowFilter
from console.widgets.pane import Pane, console_of
from console.widgets.table import Table

KEEP = 1000
PAGE = 200
CHECKPOINT_REFRESH = 10.0
"""Seconds between reads of the log's latest checkpoint (the daemon signs one a minute by default)."""
SEARCH_PAGE = 1000


def entry_fields(entry: dict[str, Any]) -> dict[str, str]:
    actor = entry.get("actor") or {}
    return {"seq": str(entry.get("seq", "")), "action": str(entry.get("action", "")).lower(),
            "actor": str(actor.get("user", "")).lower(), "user": str(actor.get("user", "")).lower(),
            "subject": str(entry.get("subject", "")).lower()}


def checkpoint_summary(note: str) -> str:
    """`size N, root …` from a C2SP signed note (origin, size, base64 root, blank, signatures)."""
    lines = note.splitlines()
    if len(lines) < 3:
        return note.strip() or "-"
    signers = [line.split()[1] for line in lines[4:] if line.startswith("— ") and len(line.split()) > 2]
    return f"size {lines[1]}, root {lines[2][:16]}…" + (f", signed by {', '.join(signers)}" if signers else "")


class AuditTable(Table):
    COMPONENT_CLASSES: ClassVar[set[str]] = {"audit-table--action"}

    entries: list[dict[str, Any]] = []

    def on_resize(self) -> None:
        self.show(self.entries, follow=False)

    def show(self, entries: list[dict[str, Any]], follow: bool) -> None:
        at_end = follow or not self.row_count or self.cursor_row >= self.row_count - 1
        self.entries = entries
        spec: list[tuple[str, str, int | None]] = [("seq", "seq", 5), ("time", "time", 8), ("actor", "actor", 8),
                                                   ("action", "action", 14), ("subject", "subject", None)]
        self.reset_columns(spec if self.size.width >= 70 else [c for c in spec if c[0] != "actor"])
        style = self.get_component_rich_style("audit-table--action", partial=True)
        for entry in entries:
            self.add_row(*self._cells(entry, style), key=str(entry.get("seq")))
        if at_end and entries:
            self.move_cursor(row=len(entries) - 1, animate=False)

    def _cells(self, entry: dict[str, Any], style: Any) -> list[Any]:
        cells = {"seq": str(entry.get("seq", "")), "time": clock_time(parse_time(entry.get("time"))),
                 "actor": Text(str((entry.get("actor") or {}).get("user", "")), no_wrap=True, overflow="ellipsis"),
                 "action": Text(str(entry.get("action", "")), style=style),
                 "subject": Text(str(entry.get("subject", "")), no_wrap=True, overflow="ellipsis")}
        return [cells[str(column.key.value)] for column in self.ordered_columns]

    def append(self, entry: dict[str, Any]) -> None:
        self.entries = (self.entries + [entry])[-KEEP:]
        follow = not self.row_count or self.cursor_row >= self.row_count - 1
        style = self.get_component_rich_style("audit-table--action", partial=True)
        self.add_row(*self._cells(entry, style), key=str(entry.get("seq")))
        while self.row_count > KEEP:
            self.remove_row(self.coordinate_to_cell_key((0, 0)).row_key)  # type: ignore[arg-type]
        if follow:
            self.move_cursor(row=self.row_count - 1, animate=False)


class AuditPane(Pane):
    number = 4
    title = "Audit"

    class Head(Message):
        """The log's head moved (size and latest leaf hash), for the header."""

        def __init__(self, head: dict[str, Any]) -> None:
            super().__init__()
            self.head = head

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(id="audit", **kwargs)
        self.entries: list[dict[str, Any]] = []
        self.row_filter = RowFilter()
        self.checkpoint = ""
        self.verify_result = ""
        self.looking_back = False
        self.log_size = 0
        self.matches: list[dict[str, Any]] | None = None
        """The filter's matches in the whole log, once searched (None: the filter covers `entries` only)."""
        self.search_note = ""

    def on_mount(self) -> None:
        self.set_interval(CHECKPOINT_REFRESH, self._refresh_checkpoint)

    @work(group="audit-checkpoint", exclusive=True, exit_on_error=False)
    async def _refresh_checkpoint(self) -> None:
        """The checkpoint line follows the log: a new signed checkpoint shows within CHECKPOINT_REFRESH."""
        if not self.checkpoint:  # not loaded yet, or the daemon is away: reload() reads it
            return
        try:
            note = (await console_of(self).rpc("audit.checkpoint", fresh=False)).get("checkpoint", "")
        except Exception:
            return  # the connection's own handling says the daemon is away
        if note:
            self.show_checkpoint(checkpoint_summary(note))

    def compose(self) -> Any:
        yield Static("waiting for the daemon…", id="audit-note", classes="note")
        yield AuditTable(id="audit-table")

    def focus_target(self) -> Any:
        return self.query_one(AuditTable)

    def _note(self) -> None:
        lines = [f"checkpoint: {self.checkpoint}" if self.checkpoint else ""]
        if self.verify_result:
            lines.append(self.verify_result)
        self.query_one("#audit-note", Static).update("\n".join(line for line in lines if line))

    def _head(self) -> None:
        last = self.entries[-1] if self.entries else {}
        self.post_message(self.Head({"size": self.log_size, "leaf_hash": last.get("leaf_hash")}))

    async def reload(self) -> None:
        app = console_of(self)
        self.looking_back = False
        if self.row_filter:
            self.matches = None
            self._search(self.row_filter)
        try:
            result = await app.rpc("audit.tail", limit=PAGE)
        except Exception as exc:
            self.checkpoint, self.entries = "", []
            self.query_one("#audit-note", Static).update(f"audit.tail: {exc}")
            self.post_message(self.Head({"error": "unavailable"}))
            return
        self.load(result)
        try:
            self.show_checkpoint(checkpoint_summary((await app.rpc("audit.checkpoint", fresh=False))
                                                    .get("checkpoint", "")))
        except Exception as exc:
            self.show_checkpoint(f"unavailable ({exc})")

    def load(self, result: dict[str, Any]) -> None:
        """Show audit.tail's answer (the newest entries and the log's size), following its end;
        the header hears of the new head."""
        self.entries = list(result.get("entries", []))
        self.log_size = int(result.get("size", len(self.entries)))
        self._redraw(follow=True)
        self._head()

    def show_checkpoint(self, summary: str) -> None:
        """The note's checkpoint line: `checkpoint_summary` of the latest one, or why there is none."""
        self.checkpoint = summary
        self._note()

    def apply(self, entry: dict[str, Any]) -> None:
        """A new entry from the audit events. One the last audit.tail answer already held is skipped:
        the console subscribes before it loads, so an entry appended in between comes both ways (it
        was added twice, and the table's duplicate row key stopped the console)."""
        seq = int(entry.get("seq", -1))
        loaded = seq < self.log_size
        self.log_size = max(self.log_size, seq + 1)
        self._head()
        if loaded or self.looking_back:
            return
        self.entries.append(entry)
        del self.entries[:-KEEP]
        if not self.row_filter or self.row_filter.matches(entry_fields(entry)):
            if self.matches is not None:
                self.matches = (self.matches + [entry])[-KEEP:]
            self.query_one(AuditTable).append(entry)
        self._info()

    def set_filter(self, text: str) -> None:
        self.row_filter = RowFilter(text)
        self.matches, self.search_note = None, ""
        self._redraw(follow=True)
        if self.row_filter and not self.looking_back:
            self._search(self.row_filter)
        else:
            self.workers.cancel_group(self, "audit-search")

    @work(group="audit-search", exclusive=True, exit_on_error=False)
    async def _search(self, row_filter: RowFilter) -> None:
        """Every entry of the log through `row_filter`, newest page first; the newest KEEP matches."""
        app = console_of(self)
        found: list[dict[str, Any]] = []
        scanned, before = 0, None
        total = self.log_size
        while len(found) < KEEP:
            self.search_note = f"searching the whole log: {scanned} of {total} entries read…"
            self._info()
            try:
                page = await app.rpc("audit.tail", limit=SEARCH_PAGE,
                                     **({} if before is None else {"before_seq": before}))
            except Exception as exc:
                self.search_note = (f"matches among the last {len(self.entries)} entries only: searching the "
                                    f"whole log failed ({exc}); r reloads, then filter again")
                self._info()
                return
            entries = list(page.get("entries") or [])
            total = max(total, int(page.get("size", total)))
            scanned += len(entries)
            found[:0] = [e for e in entries if row_filter.matches(entry_fields(e))]
            if not entries or int(entries[0].get("seq", 0)) <= 0:
                break
            before = int(entries[0]["seq"])
        if row_filter is not self.row_filter:
            return
        newest = {int(e.get("seq", -1)) for e in found}
        later = [e for e in self.entries if int(e.get("seq", -1)) > max(newest, default=-1)
                 and row_filter.matches(entry_fields(e))]  # written while the search ran
        self.matches = (found + later)[-KEEP:]
        whole = "the whole log" if len(found) < KEEP else f"the log back to #{found[0].get('seq')}"
        self.search_note = (f"{len(self.matches)} match(es) in {whole}" +
                            (f" (the newest {KEEP} shown)" if len(found) >= KEEP else ""))
        self._redraw(follow=True)

    def _redraw(self, follow: bool) -> None:
        if self.row_filter and self.matches is not None:
            shown = self.matches
        else:
            shown = [e for e in self.entries if not self.row_filter or self.row_filter.matches(entry_fields(e))]
        self.query_one(AuditTable).show(shown, follow)
        self._info()

    def _info(self) -> None:
        parts = [f"{self.log_size} entries"]
        if self.row_filter:
            parts.append(f"filter {self.row_filter.text!r}")
            if self.search_note:
                parts.append(self.search_note)
            elif self.looking_back:
                parts.append(f"among the {len(self.entries)} entries loaded")
        if self.looking_back and self.entries:
            parts.append(f"up to #{self.entries[-1].get('seq')}")
        self.set_info(" · ".join(parts))

    async def verify(self) -> dict[str, Any]:
        result = await console_of(self).rpc("audit.verify")
        if result.get("ok"):
            self.verify_result = f"verify: OK, {result.get('size')} entries, every hash and signature checks"
        else:
            self.verify_result = (f"verify: FAILED at entry {result.get('first_bad')}: {result.get('reason')}")
        self._note()
        return dict(result)

    async def show_at(self, moment: float) -> None:
        """Look back: the entries written up to `moment`, found by bisecting on sequence numbers."""
        app = console_of(self)
        low, high = 0, self.log_size
        while low < high:
            middle = (low + high) // 2
            page = await app.rpc("audit.tail", limit=1, before_seq=middle + 1)
            entries = page.get("entries") or []
            stamp = parse_time(entries[-1].get("time")) if entries else None
            if stamp is not None and stamp <= moment:
                low = middle + 1
            else:
                high = middle
        self.looking_back = True
        self.matches, self.search_note = None, ""
        self.workers.cancel_group(self, "audit-search")
        page = await app.rpc("audit.tail", limit=PAGE, before_seq=low) if low else {"entries": []}
        self.entries = list(page.get("entries", []))
        self._redraw(follow=True)

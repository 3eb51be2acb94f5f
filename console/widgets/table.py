"""A row-cursor DataTable with the vi keys that htop, k9s and lazygit users expect."""

from __future__ import annotations

from typing import Any, ClassVar

from textual.binding import Binding, BindingType
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist, RowDoesNotExist


class Table(DataTable[Any]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("g,home", "scroll_top", "First row", show=False),
        Binding("G,end", "scroll_bottom", "Last row", show=False),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kwargs)

    def reset_columns(self, spec: list[tuple[str, str, int | None]]) -> None:
        """New columns (key, label, width); the one without a width takes the room left. Clears the rows."""
        fixed = sum(width or 0 for _, _, width in spec) + 2 * self.cell_padding * len(spec) + 1
        self.clear(columns=True)
        for key, label, width in spec:
            self.add_column(label, key=key, width=width or max(8, self.size.width - fixed))

    def selected_key(self) -> str | None:
        if not self.row_count:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except CellDoesNotExist:
            return None

    def select_key(self, key: str | None) -> None:
        if key is None:
            return
        try:
            self.move_cursor(row=self.get_row_index(key), animate=False, scroll=True)
        except RowDoesNotExist:
            pass

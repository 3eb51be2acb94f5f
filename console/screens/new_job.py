"""The new-job form. The daemon validates; its -32602 answers (data.field, data.reason) show under the field."""

from __future__ import annotations

from typing import Any, ClassVar

from textual import on, work
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from console.widgets.pane import console_of
from daemon.protocol import INVALID_PARAMS, PRIORITIES, RpcError

SIZES: list[tuple[str, str]] = [
    ("daemon default", ""), ("512 × 512", "512x512"), ("768 × 768", "768x768"), ("1024 × 1024", "1024x1024"),
    ("512 × 768 portrait", "512x768"), ("768 × 512 landscape", "768x512"), ("256 × 256", "256x256"),
    ("64 × 64 (test)", "64x64"),
]
FIELDS = ("model", "prompt", "negative_prompt", "size", "steps", "seed", "priority", "count")
DEFAULT_MODEL: list[tuple[str, str]] = [("daemon default", "")]
"""What the model list offers until the daemon's model.list answers (or when it cannot)."""
FIELD_OF_PARAM = {"width": "size", "height": "size"}
NEGATIVE_PLACEHOLDER = "what to avoid (optional)"


class FormSelect(Select[str]):
    """A Select whose ↑ and ↓ move between the form's fields, as they do on the inputs; enter or
    space opens the list (Select's own ↑ and ↓ open it, which traps a person walking the form)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "app.focus_previous", "Previous field", show=False),
        Binding("down", "app.focus_next", "Next field", show=False),
    ]


def number(text: str) -> int | str | None:
    """An integer when the text is one; the text itself otherwise, so that the daemon says what is wrong."""
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        return text


def model_label(model: dict[str, Any]) -> str:
    """`name (family, default, loaded)` for the model list."""
    notes = [str(model.get("family") or "?")]
    if model.get("default"):
        notes.append("default")
    if model.get("loaded"):
        notes.append("loaded")
    return f"{model['name']} ({', '.join(notes)})"


class NewJobScreen(ModalScreen[str | None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "submit", "Submit", priority=True),
        Binding("escape", "close", "Close form"),
        Binding("down", "app.focus_next", "Next field", show=False),
        Binding("up", "app.focus_previous", "Previous field", show=False),
    ]

    def compose(self) -> Any:
        with Vertical(id="form-box"):
            yield Label("New job — enter or ctrl+s submits, esc closes", id="form-title")
            yield from self._row("model", "Model", FormSelect(DEFAULT_MODEL, value="", allow_blank=False, id="model",
                                                                compact=True))
            yield from self._row("prompt", "Prompt", Input(placeholder="what to draw", id="prompt", compact=True))
            yield from self._row("negative_prompt", "Negative", Input(placeholder=NEGATIVE_PLACEHOLDER,
                                                                     id="negative_prompt", compact=True))
            yield from self._row("size", "Size", FormSelect(SIZES, value="", allow_blank=False, id="size",
                                                                      compact=True))
            yield from self._row("steps", "Steps", Input(placeholder="daemon default", id="steps", compact=True))
            yield from self._row("seed", "Seed", Input(placeholder="random", id="seed", compact=True))
            yield from self._row("priority", "Priority", FormSelect([(p, p) for p in PRIORITIES], value="normal",
                                                                   allow_blank=False, id="priority", compact=True))
            yield from self._row("count", "Images", Input(placeholder="1", id="count", compact=True))
            yield Static("", id="error-form", classes="form-error")
            with Horizontal(id="form-buttons"):
                yield Button("Submit", id="submit", variant="primary", compact=True)
                yield Button("Close", id="close", compact=True)

    @staticmethod
    def _row(field: str, label: str, widget: Any) -> Any:
        with Horizontal(classes="form-row"):
            yield Label(label, classes="form-label")
            yield widget
        yield Static("", id=f"error-{field}", classes="form-error")

    def on_mount(self) -> None:
        self.models: dict[str, dict[str, Any]] = {}
        """The daemon's model.list entries by name, once it answered."""
        self._clear_errors()
        self.query_one("#prompt", Input).focus()
        self._load_models()

    @work(exclusive=True, group="models")
    async def _load_models(self) -> None:
        """Offer the daemon's configured models (model.list), the default one chosen."""
        try:
            reply = await console_of(self).rpc("model.list")
        except Exception:  # no daemon yet, or an older one: "daemon default" stays, and submit says the rest
            return
        models = [m for m in reply.get("models") or [] if isinstance(m, dict) and m.get("name")]
        if not models:
            return
        self.models = {str(m["name"]): m for m in models}
        options = [(model_label(m), str(m["name"])) for m in models]
        chosen = next((str(m["name"]) for m in models if m.get("default")), options[0][1])
        select = self.query_one("#model", Select)
        select.set_options(options)
        select.value = chosen

    def params(self) -> dict[str, Any]:
        values: dict[str, Any] = {"prompt": self.query_one("#prompt", Input).value}
        model = self.query_one("#model", Select).value
        if isinstance(model, str) and model:
            values["model"] = model
        negative = self.query_one("#negative_prompt", Input).value
        if negative:
            values["negative_prompt"] = negative
        size = self.query_one("#size", Select).value
        if isinstance(size, str) and size:
            width, height = size.split("x")
            values["width"], values["height"] = int(width), int(height)
        for field in ("steps", "seed", "count"):
            value = number(self.query_one(f"#{field}", Input).value)
            if value is not None:
                values[field] = value
        values["priority"] = self.query_one("#priority", Select).value
        return values

    def _clear_errors(self) -> None:
        for error in self.query(".form-error"):
            error.update("")  # type: ignore[attr-defined]
            error.display = False

    def _show_error(self, field: str, text: str) -> None:
        widget = self.query_one(f"#error-{field}", Static)
        widget.update(text)
        widget.display = True

    def show_rpc_error(self, exc: BaseException) -> None:
        if isinstance(exc, RpcError) and exc.code == INVALID_PARAMS and isinstance(exc.data, dict):
            param = str(exc.data.get("field", ""))
            field = FIELD_OF_PARAM.get(param, param)
            if field in FIELDS:
                reason = str(exc.data.get("reason") or exc.message)
                self._show_error(field, f"{param}: {reason}" if param != field else reason)
                self.query_one(f"#{field}").focus()
                return
        self._show_error("form", str(exc))

    @on(Input.Changed)
    @on(Select.Changed)
    def _edited(self, event: Input.Changed | Select.Changed) -> None:
        """A field's error goes once its value changes: it spoke of the value that was refused."""
        field = event.control.id or ""
        if field in FIELDS:
            self._hide_error(field)
        if field == "model":
            self._fit_to_model(str(event.control.value))

    def _fit_to_model(self, name: str) -> None:
        """The negative prompt field off for a model whose family takes none (Flux), saying why."""
        model = self.models.get(name) or {}
        negative = self.query_one("#negative_prompt", Input)
        takes_none = model.get("negative_prompt") is False
        negative.disabled = takes_none
        negative.placeholder = f"{model.get('family')} models take no negative prompt" if takes_none \
            else NEGATIVE_PLACEHOLDER
        if takes_none:
            negative.value = ""

    def _hide_error(self, field: str) -> None:
        widget = self.query_one(f"#error-{field}", Static)
        if widget.display:
            widget.update("")
            widget.display = False

    @on(Input.Submitted)
    def _enter(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_submit()

    @on(Button.Pressed, "#submit")
    def _submit_pressed(self) -> None:
        self.action_submit()

    @on(Button.Pressed, "#close")
    def action_close(self) -> None:
        self.dismiss(None)

    @work(exclusive=True, group="submit")
    async def action_submit(self) -> None:
        self._clear_errors()
        try:
            result = await console_of(self).rpc("job.submit", **self.params())
        except Exception as exc:
            self.show_rpc_error(exc)
            return
        warnings = result.get("warnings") or []
        position = result.get("position")
        self.notify(f"Submitted {result['job_id']}" + (f", position {position}" if position is not None else "")
                    + ("; " + "; ".join(warnings) if warnings else ""), title="New job",
                    severity="warning" if warnings else "information")
        self.dismiss(str(result["job_id"]))

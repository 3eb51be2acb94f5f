"""GPU & memory: per-GPU used/total bars with a history graph, host memory, worker RSS, torch reserved.

Figures come from metrics.snapshot and the `metrics` topic. A daemon without them gets a plain
note, plus what daemon.status already reports about the worker (as of its last batch).
"""

from __future__ import annotations

from collections import deque
from typing import Any, ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import Static

from console.formatting import bar, bytes_of, clock_time, human_bytes, level, parse_time
from console.widgets.pane import Pane, console_of

SPARKS = "▁▂▃▄▅▆▇█"
HISTORY = 600
LABEL = 7
MARKS = {"ok": " ", "warning": "!", "critical": "‼"}


def spark(values: list[float], width: int) -> str:
    """Fractions 0–1 as a one-line graph, newest on the right."""
    values = values[-width:]
    return "".join(SPARKS[min(len(SPARKS) - 1, int(max(0.0, v) * len(SPARKS)))] for v in values).rjust(width)


def number(value: Any) -> float | None:
    """A figure, or None for absent and "n/a" ones."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _used_total(data: dict[str, Any], prefix: str = "memory") -> tuple[float | None, float | None]:
    nested = data.get(prefix)
    if isinstance(nested, dict):
        return number(nested.get("used")), number(nested.get("total"))
    return number(data.get(f"{prefix}_used")), number(data.get(f"{prefix}_total"))


def history_fractions(history: dict[str, Any]) -> dict[str, list[float]]:
    """metrics.snapshot's ring as columns ({"series": {"host.memory.used": [...], ...}}) as used/total
    fractions by graph key (host, gpu0, gpu1, ...)."""
    series = history.get("series") or {}
    out: dict[str, list[float]] = {}
    for name, used in series.items():
        if not name.endswith("memory.used"):
            continue
        prefix = name[: -len("memory.used")]
        totals = series.get(prefix + "memory.total") or []
        if prefix == "host.":
            key = "host"
        elif prefix.startswith("gpus."):
            key = "gpu" + prefix.split(".")[1]
        else:
            continue
        out[key] = [u / t for u, t in zip(used, totals) if number(u) is not None and number(t)]
    return out


class MemoryView(VerticalScroll):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "scroll_down", "Down", show=False),
        Binding("k", "scroll_up", "Up", show=False),
        Binding("g", "scroll_home", "Top", show=False),
        Binding("G", "scroll_end", "Bottom", show=False),
    ]


class MemoryPane(Pane):
    number = 2
    title = "GPU & memory"
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "memory-pane--ok", "memory-pane--warning", "memory-pane--critical", "memory-pane--note",
        "memory-pane--label",
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(id="memory", **kwargs)
        self.sample: dict[str, Any] | None = None
        self.loaded = False
        """Whether the pane holds a sample from the daemon (until then, and while it cannot, a note)."""
        self.note = "waiting for the daemon…"
        self.history_note = ""
        self.worker_status: dict[str, Any] = {}
        self.history: dict[str, deque[float]] = {}

    def compose(self) -> Any:
        with MemoryView(id="memory-view"):
            yield Static(id="memory-body")

    def focus_target(self) -> Any:
        return self.query_one(MemoryView)

    def _style(self, name: str) -> Any:
        return self.get_component_rich_style(f"memory-pane--{name}", partial=True)

    async def reload(self) -> None:
        try:
            sample = await console_of(self).rpc("metrics.snapshot", history_seconds=HISTORY)
        except Exception as exc:
            self.note = f"metrics.snapshot: {exc}"
            self.redraw()
            return
        self.load(sample)

    def load(self, sample: dict[str, Any]) -> None:
        """Show metrics.snapshot's answer: the latest sample and, under `history`, the graphs."""
        self.loaded = True
        self.note = ""
        self.history = {key: deque(values, maxlen=HISTORY)
                        for key, values in history_fractions(sample.get("history") or {}).items()}
        self.sample = sample
        self.redraw()

    def set_worker(self, worker: dict[str, Any]) -> None:
        self.worker_status = worker
        if not self.loaded:
            self.redraw()

    def add_sample(self, sample: dict[str, Any]) -> None:
        self.loaded, self.sample = True, sample
        self.note = ""
        for key, fraction in self._fractions(sample).items():
            self.history.setdefault(key, deque(maxlen=HISTORY)).append(fraction)
        self.redraw()

    def show_history(self, samples: list[dict[str, Any]] | None, note: str) -> None:
        """Look-back: replace the graphs with the daemon's history (or say why there is none)."""
        self.history_note = note
        if samples:
            self.history = {}
            for sample in samples:
                for key, fraction in self._fractions(sample).items():
                    self.history.setdefault(key, deque(maxlen=HISTORY)).append(fraction)
            self.sample = samples[-1]
        self.redraw()

    @staticmethod
    def _fractions(sample: dict[str, Any]) -> dict[str, float]:
        out: dict[str, float] = {}
        for index, gpu in enumerate(sample.get("gpus") or []):
            used, total = _used_total(gpu)
            if used is not None and total:
                out[f"gpu{gpu.get('index', index)}"] = used / total
        used, total = _used_total(sample.get("host") or {})
        if used is not None and total:
            out["host"] = used / total
        return out

    def _meter(self, text: Text, label: str, used: float | None, total: float | None, key: str,
               extra: str = "") -> None:
        """`label  ████░░ 90%‼`, then the figures, then the history graph on the line below."""
        width = max(10, self.size.width - 6 - LABEL - 6)
        text.append(f"{label:<{LABEL}}", style=self._style("label"))
        if used is None or not total:
            text.append("no figures\n", style=self._style("note"))
            return
        fraction = used / total
        state = level(fraction)
        text.append(bar(fraction, width), style=self._style(state))
        text.append(f" {fraction:4.0%}{MARKS[state]}\n", style=self._style(state) if state != "ok" else "")
        text.append(" " * LABEL + f"{bytes_of(used, total)}{extra}\n")
        history = list(self.history.get(key, ()))
        if len(history) > 1:
            text.append(" " * LABEL)
            text.append(spark(history, width) + "\n", style=self._style(state))

    @staticmethod
    def _process_lines(sample: dict[str, Any]) -> list[tuple[str, str]]:
        """The worker and daemon processes: one line per worker (named, with its device) when the
        daemon runs several, else the one worker's RSS and torch lines as before."""
        workers = sample.get("workers") or []
        daemon = sample.get("daemon") or {}
        if len(workers) > 1:
            lines = [(str(w.get("name")), f"{w.get('device')} · RSS {human_bytes(number(w.get('rss')))}"
                      + (f" · torch reserved {human_bytes(number(w.get('torch_reserved')))}"
                         if number(w.get("torch_reserved")) is not None else "")) for w in workers]
        else:
            worker = sample.get("worker") or {}
            lines = [("worker", f"RSS {human_bytes(number(worker.get('rss')))}"),
                     ("torch", f"reserved {human_bytes(number(worker.get('torch_reserved')))} · "
                               f"allocated {human_bytes(number(worker.get('torch_allocated')))}")]
        return [*lines, ("daemon", f"RSS {human_bytes(number(daemon.get('rss')))}")]

    def redraw(self) -> None:
        text = Text()
        if self.history_note:
            text.append(self.history_note + "\n\n", style=self._style("note"))
        sample = self.sample if self.loaded else None
        if sample is None:
            text.append(self.note + "\n\n", style=self._style("note"))
            memory = self.worker_status.get("memory") or {}
            text.append("From daemon.status (worker, after its last batch):\n", style=self._style("label"))
            text.append(f"  worker RSS      {human_bytes(memory.get('rss'))}\n")
            text.append(f"  torch reserved  {human_bytes(memory.get('torch_reserved'))}"
                        f"   allocated {human_bytes(memory.get('torch_allocated'))}"
                        f"   peak {human_bytes(memory.get('torch_peak'))}\n")
        else:
            stamp = parse_time(sample.get("time"))
            if stamp is not None:
                span = max((len(h) for h in self.history.values()), default=0)
                text.append(f"sample at {clock_time(stamp)}" + (f"; graphs: last {span} samples" if span else "")
                            + "\n", style=self._style("note"))
            gpus = sample.get("gpus") or []
            if not gpus:
                text.append(f"no GPU: {sample.get('gpu_error') or 'NVML reports none'}\n", style=self._style("note"))
            for index, gpu in enumerate(gpus):
                used, total = _used_total(gpu)
                figures = [f"{number(gpu[k]):.0f}{unit}" for k, unit in (("utilization", "% util"),
                                                                         ("temperature", "°C"), ("power_w", " W"))
                           if number(gpu.get(k)) is not None]
                self._meter(text, f"GPU{gpu.get('index', index)}", used, total, f"gpu{gpu.get('index', index)}",
                            "".join(f" · {f}" for f in figures))
                if gpu.get("name"):
                    text.append(" " * LABEL + str(gpu["name"]) + "\n", style=self._style("note"))
            used, total = _used_total(sample.get("host") or {})
            self._meter(text, "host", used, total, "host")
            for label, figure in self._process_lines(sample):
                text.append(f"{label:<{LABEL}}", style=self._style("label"))
                text.append(figure + "\n")
        self.query_one("#memory-body", Static).update(text)

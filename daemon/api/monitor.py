"""metrics.snapshot, metrics.history, metrics.prometheus, alerts.list, alerts.ack.

Times in results are RFC 3339 (with `ts` epoch seconds beside them on samples); `since` and
`until` accept either epoch seconds or RFC 3339 text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from daemon.api.registry import CallContext, Role, int64_param, method, time_param
from daemon.protocol import NOT_FOUND, RpcError, echo, invalid_params

if TYPE_CHECKING:
    from daemon.monitor.service import Monitor

MAX_ALERTS = 1000
AlertState = Literal["open", "active", "acked", "cleared", "all"]


def _monitor(ctx: CallContext) -> Monitor:
    return ctx.daemon.monitor


def _time(name: str, value: float | str | None) -> float | None:
    return None if value is None else time_param(name, value)


@method("metrics.snapshot", role=Role.VIEWER)
async def snapshot(ctx: CallContext, history_seconds: float | None = None) -> dict[str, Any]:
    """The latest sample (its fields at the top level), open alert counts, and the ring buffer as
    columns under `history` (`history_seconds`: how far back; 0 leaves it out; default all of it)."""
    if history_seconds is not None and history_seconds < 0:
        raise invalid_params("history_seconds", "must be 0 or more")
    return await _monitor(ctx).snapshot(history_seconds)


@method("metrics.history", role=Role.VIEWER)
async def history(ctx: CallContext, since: float | str | None = None, until: float | str | None = None,
                  step: int = 60) -> dict[str, Any]:
    """Aggregates per `step` seconds (a multiple of 60; default 60) between `since` (default: an hour
    before `until`) and `until` (default: now): {"since", "until", "step", "samples": [point, ...]},
    each point shaped like a sample (averages) plus "min", "max" by dotted name and "n"."""
    if step < 60 or step % 60:
        raise invalid_params("step", f"must be a multiple of 60 seconds, at least 60 (got {step})")
    since_ts, until_ts = _time("since", since), _time("until", until)
    if since_ts is not None and until_ts is not None and until_ts < since_ts:
        raise invalid_params("until", "is before since")
    try:
        return await _monitor(ctx).history(since_ts, until_ts, step)
    except ValueError as exc:
        raise invalid_params("step", str(exc)) from None


@method("metrics.prometheus", role=Role.VIEWER)
async def prometheus(ctx: CallContext) -> dict[str, Any]:
    """The latest sample in the Prometheus text exposition format: {"text"}."""
    return {"text": _monitor(ctx).prometheus_text()}


@method("alerts.list", role=Role.VIEWER)
async def list_alerts(ctx: CallContext, state: AlertState = "open", limit: int = 100,
                      until: float | str | None = None) -> dict[str, Any]:
    """Alerts, newest last seen first. state: open (active or acked; the default), active, acked,
    cleared or all. `until`: those open at that moment (the console's look-back)."""
    if not 1 <= limit <= MAX_ALERTS:
        raise invalid_params("limit", f"{limit} is out of range; allowed 1 to {MAX_ALERTS}")
    monitor = _monitor(ctx)
    return {"alerts": await monitor.alerts.list(state, limit, _time("until", until)),
            "counts": dict(monitor.alerts.counts)}


@method("alerts.ack", role=Role.OPERATOR)
async def ack(ctx: CallContext, alert_id: int | str) -> dict[str, Any]:
    """Acknowledge an alert; who did it is recorded, audited and streamed on the `alert` topic."""
    from daemon.monitor.alerts import AlertNotFound

    if isinstance(alert_id, str):
        if not alert_id.strip().isdigit():
            raise invalid_params("alert_id", f"{echo(alert_id)!r} is not an alert id (a number)")
        alert_id = int64_param("alert_id", int(alert_id))
    try:
        return {"alert": await _monitor(ctx).alerts.ack(alert_id, ctx.peer.actor())}
    except AlertNotFound:
        raise RpcError(NOT_FOUND, f"no alert {alert_id}", {"alert_id": alert_id}) from None

"""Observer callbacks as log records: JSON lines for machines, one-liners for people.

A record is ``{"t": time.time(), "user": ..., "event": callback name, "args": [...]}`` with
enums written as their names, :class:`~callclient.types.RoomId` as its value and other
dataclasses as objects.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from callclient.observer import CallEvent, EventRecorder
from callclient.types import RoomId

__all__ = ["CallbackObserver", "event_record", "format_human", "format_json", "jsonable"]


def jsonable(value: Any) -> Any:
    """``value`` with enums as names and dataclasses as dicts, ready for ``json.dumps``."""
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, RoomId):
        return value.value
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return str(value)


def event_record(user: str, event: str, args: tuple[Any, ...] | list[Any]) -> dict[str, Any]:
    """The log record of one event happening now."""
    return {"t": round(time.time(), 6), "user": user, "event": event, "args": jsonable(args)}


def format_json(record: dict[str, Any]) -> str:
    """One JSON line (no newline)."""
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


def format_human(record: dict[str, Any], since: float | None = None) -> str:
    """``HH:MM:SS.mmm user event(arg, ...)``, or ``+S.SSSs`` relative to ``since``."""
    t = float(record.get("t", time.time()))
    if since is None:
        stamp = time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"
    else:
        stamp = f"+{t - since:6.3f}s"
    args = ", ".join(json.dumps(a, ensure_ascii=False) for a in record.get("args", []))
    names = record.get("names") or {}
    known = f"  [{', '.join(f'{u}={n}' for u, n in names.items())}]" if names else ""
    return f"{stamp} {record.get('user', '')}: {record.get('event', '')}({args}){known}"


class CallbackObserver(EventRecorder):
    """An observer that hands every callback to ``handler(name, args)`` as it happens."""

    def __init__(self, handler: Callable[[str, tuple[Any, ...]], None]) -> None:
        self._handler = handler

    def record(self, event: CallEvent) -> None:
        """Pass the callback on to the handler."""
        self._handler(event.name, event.args)

"""The child side of :class:`~tests.helpers.jsonchild.JsonChild`: JSON lines on stdout.

Used by the processes the network-namespace tests run (impairment, NAT, constrained path).
"""

from __future__ import annotations

import enum
import json
import time
from typing import Any

from callclient.types import NetworkQualityInfo

__all__ = ["emit", "plain"]


def emit(ev: str, **fields: Any) -> None:
    """One JSON line on stdout: ``{"ev": ev, "t": <monotonic>, **fields}``."""
    print(json.dumps({"ev": ev, "t": time.monotonic(), **fields}), flush=True)


def plain(value: Any) -> Any:
    """``value`` as JSON-friendly data (quality lists as ``{user: level}``, enums by value)."""
    if isinstance(value, list) and value and isinstance(value[0], NetworkQualityInfo):
        return {info.user_id: int(info.quality) for info in value}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)

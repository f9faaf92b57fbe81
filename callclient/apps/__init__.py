"""Programs built on :class:`~callclient.engine.CallEngine`: a headless bot with recording,
a one-command loopback measurement, and the demo."""

from __future__ import annotations

__all__: list[str] = []

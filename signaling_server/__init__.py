"""signaling_server: the websocket server carrying the call event protocol."""

from __future__ import annotations

from callwire.version import __version__

__all__ = ["__version__"]

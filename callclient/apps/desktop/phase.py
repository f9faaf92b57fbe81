"""The app's call phase, read from the engine's current call; pure.

The controller keeps no phase of its own: :func:`phase_of` maps the status and role of
``engine.current_call`` to what the status bar shows. The one thing the engine cannot know
is a ``calls`` request still on its way; it counts as "calling" too.
"""

from __future__ import annotations

import enum
from typing import Protocol

from callclient.types import CallMediaType, CallRole, CallStatus

__all__ = ["CallLike", "Phase", "phase_of"]


class Phase(enum.StrEnum):
    """Where the app's call is, as the status bar names it."""

    IDLE = "idle"
    CALLING = "calling"
    """An outgoing call rings (or its ``calls`` request is on its way)."""
    INCOMING = "incoming"
    CONNECTED = "connected"


class CallLike(Protocol):
    """The part of the engine's current call (``CallInfo``) the app reads."""

    @property
    def status(self) -> CallStatus: ...

    @property
    def role(self) -> CallRole: ...

    @property
    def media_type(self) -> CallMediaType: ...

    @property
    def caller(self) -> str: ...

    @property
    def begin_time(self) -> float | None:
        """When the call connected (``time.time()``), None while it rings."""


def phase_of(call: CallLike | None, *, dialing: bool = False) -> Phase:
    """The phase for the engine's current call; ``dialing``: a ``calls`` request is pending."""
    if call is None or call.status is CallStatus.NONE:
        return Phase.CALLING if dialing else Phase.IDLE
    if call.status is CallStatus.ACCEPT:
        return Phase.CONNECTED
    return Phase.CALLING if call.role is CallRole.CALLER else Phase.INCOMING

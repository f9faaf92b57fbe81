"""The enums whose integer values travel on the wire, exactly as the reference defines them.

Both halves read and write these values (``mediaType``, ``role``, ``scene``, ``result``,
``quality`` fields); :mod:`callclient.types` re-exports them with the rest of the SDK's types.
"""

from __future__ import annotations

import enum

__all__ = ["CallMediaType", "CallResultType", "CallRole", "CallScene", "NetworkQuality"]


class CallMediaType(enum.IntEnum):
    """TUICallMediaType."""

    NONE = 0
    AUDIO = 1
    VIDEO = 2


class CallRole(enum.IntEnum):
    """TUICallRole."""

    NONE = 0
    CALLER = 1
    CALLED = 2


class CallScene(enum.IntEnum):
    """TUICallScene."""

    GROUP_CALL = 0
    MULTI_CALL = 1
    SINGLE_CALL = 2


class NetworkQuality(enum.IntEnum):
    """TUINetworkQuality: UNKNOWN until there is data, DOWN when nothing arrives."""

    UNKNOWN = 0
    EXCELLENT = 1
    GOOD = 2
    POOR = 3
    BAD = 4
    VBAD = 5
    DOWN = 6


class CallResultType(enum.IntEnum):
    """TUICallResultType: the kind of a call record for one user."""

    UNKNOWN = 0
    MISSED = 1
    INCOMING = 2
    OUTGOING = 3

"""Call records as the core produces them and the store keeps them: plain data, no I/O.

The core (:mod:`signaling_server.core`) builds a :class:`StoredCall` for every change of a call
and hands it out as an output; the store (:mod:`signaling_server.store`) persists it. Neither
needs the other: this module is where they meet.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

__all__ = ["ParticipantOutcome", "StoredCall", "snapshot"]


@dataclass
class ParticipantOutcome:
    """One user's part in a call: CallRole and CallResultType values."""

    role: int
    result_type: int


@dataclass
class StoredCall:
    """One call as stored; ``result`` is ``""`` while the call is in progress."""

    call_id: str
    sdk_app_id: int
    caller: str
    callees: list[str]
    scene: int
    media_type: int
    room_id: int | str
    group_id: str
    start_ts: float
    accept_ts: float | None
    end_ts: float | None
    result: str
    participants: dict[str, ParticipantOutcome] = field(default_factory=dict)
    user_data: str = ""


def snapshot(call: StoredCall) -> StoredCall:
    """A copy of ``call`` that shares no mutable list or dict with it."""
    return dataclasses.replace(
        call,
        callees=list(call.callees),
        participants={
            user: ParticipantOutcome(p.role, p.result_type) for user, p in call.participants.items()
        },
    )

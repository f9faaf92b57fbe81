"""Call records as the core produces them and the store keeps them: plain data, no I/O.

The core (:mod:`signaling_server.core`) builds a :class:`StoredCall` for every change of a call
and hands it out as an output; the store (:mod:`signaling_server.store`) persists it. Neither
needs the other: this module is where they meet.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from callwire.enums import CallResultType

__all__ = [
    "OutboxRow",
    "ParticipantOutcome",
    "ProfileUpdate",
    "StoredCall",
    "snapshot",
    "users_in_call",
]


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
    total_users: int = 0
    """Users in the call (see :func:`users_in_call`) when the record was made; 0 in records
    of a database older than schema version 3."""


def users_in_call(call: StoredCall) -> int:
    """The webhooks' ``TotalNum`` and the REST API's ``totalUserNumber``, one definition.

    The caller, every invitee who answered at some point, and every invitee still ringing;
    not those who rejected, did not answer, were busy or ignored the call, nor those still
    ringing when it ended. Both reference samples agree: a 1v1 ``start_call`` has 2 (the callee
    rings), a finished call where one of two invitees answered has 2. A finished call's count
    is the caller plus the invitees who answered.
    """
    if call.total_users > 0:
        return call.total_users
    answered = sum(
        1 for user, outcome in call.participants.items()
        if user != call.caller and outcome.result_type == CallResultType.INCOMING
    )
    return 1 + answered


def snapshot(call: StoredCall) -> StoredCall:
    """A copy of ``call`` that shares no mutable list or dict with it."""
    return dataclasses.replace(
        call,
        callees=list(call.callees),
        participants={
            user: ParticipantOutcome(p.role, p.result_type) for user, p in call.participants.items()
        },
    )


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One outbox row to store: a webhook notice or an offline push, already encoded.

    Written in the same transaction as the record it belongs to (the outbox pattern); the
    sender (:mod:`signaling_server.webhooks`) only ever sends rows that are committed.
    """

    sdk_app_id: int
    call_id: str
    command: str
    query: str
    """JSON object: the request's query parameters."""
    body: str
    """JSON object: the request's body."""
    created_at: float
    kind: str = "callback"
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class ProfileUpdate:
    """A user's nickname and/or avatar to store; a field that is None keeps the stored value."""

    sdk_app_id: int
    user_id: str
    nickname: str | None
    avatar: str | None
    updated_ts: float

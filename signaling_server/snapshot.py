"""Calls as JSON-able snapshots, and back: how a cluster's new leader adopts the calls of a
dead one (docs: ``CallCore.take_changed_calls`` / ``export_calls`` / ``restore_calls``).

Pure functions, no I/O. A snapshot is a dict of JSON types: the :class:`~.callmodel.Call`'s
fields by name plus ``"version"``, its members as a list in invitation order (each a dict of the
:class:`~.callmodel.Member`'s fields; ``role`` and the call's ``scene`` as their integer
codes), and its SFU room (:class:`~.sfu.SfuRoom`'s fields, or None). Reading checks every
field's type and the call's consistency and raises :class:`SnapshotError` (never anything
else) for a snapshot it cannot adopt.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from callwire.enums import CallRole, CallScene
from signaling_server.callmodel import MEMBER_STATES, Call, Member
from signaling_server.sfu import SfuRoom

__all__ = [
    "SNAPSHOT_VERSION",
    "SnapshotError",
    "call_from_snapshot",
    "call_to_snapshot",
    "member_from_snapshot",
    "member_to_snapshot",
    "room_from_snapshot",
    "room_to_snapshot",
]

SNAPSHOT_VERSION: Final = 1
"""The ``"version"`` of the snapshots written here; others are refused."""


class SnapshotError(ValueError):
    """A snapshot that cannot be adopted: wrong version, a field missing or mistyped."""


# --------------------------------------------------------------------------- writing


def member_to_snapshot(member: Member) -> dict[str, Any]:
    """One member as a JSON-able dict."""
    return {
        "user_id": member.user_id,
        "role": int(member.role),
        "state": member.state,
        "deadline": member.deadline,
        "conn": member.conn,
        "ever_joined": member.ever_joined,
        "camera": member.camera,
        "microphone": member.microphone,
        "user_data": member.user_data,
    }


def room_to_snapshot(room: SfuRoom) -> dict[str, Any]:
    """An SFU room as a JSON-able dict (its secret, pin and tokens included)."""
    return {
        "instance": room.instance,
        "room": room.room,
        "secret": room.secret,
        "pin": room.pin,
        "epoch": room.epoch,
        "tokens": dict(room.tokens),
        "ready": room.ready,
    }


def call_to_snapshot(call: Call) -> dict[str, Any]:
    """A call as a JSON-able dict (``json.dumps`` takes it as it is)."""
    return {
        "version": SNAPSHOT_VERSION,
        "call_id": call.call_id,
        "sdk_app_id": call.sdk_app_id,
        "caller": call.caller,
        "media_type": call.media_type,
        "room_id": call.room_id,
        "group_id": call.group_id,
        "user_data": call.user_data,
        "scene": int(call.scene),
        "start_ts": call.start_ts,
        "members": [member_to_snapshot(m) for m in call.members.values()],
        "accept_ts": call.accept_ts,
        "canceled": call.canceled,
        "interrupted": call.interrupted,
        "group_verified": call.group_verified,
        "sfu": room_to_snapshot(call.sfu) if call.sfu is not None else None,
    }


# --------------------------------------------------------------------------- reading


def _field(data: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise SnapshotError(f"{where}: field {key!r} is missing")
    return data[key]


def _str(data: Mapping[str, Any], key: str, where: str, *, empty: bool = True) -> str:
    value = _field(data, key, where)
    if not isinstance(value, str) or (not empty and not value):
        raise SnapshotError(f"{where}: {key!r} must be a{'' if empty else ' non-empty'} string, "
                            f"not {value!r}")
    return value


def _int(data: Mapping[str, Any], key: str, where: str) -> int:
    value = _field(data, key, where)
    if not isinstance(value, int) or isinstance(value, bool):
        raise SnapshotError(f"{where}: {key!r} must be an integer, not {value!r}")
    return value


def _float(data: Mapping[str, Any], key: str, where: str) -> float:
    value = _field(data, key, where)
    if (not isinstance(value, int | float) or isinstance(value, bool)
            or not math.isfinite(value)):
        raise SnapshotError(f"{where}: {key!r} must be a finite number, not {value!r}")
    return float(value)


def _bool(data: Mapping[str, Any], key: str, where: str) -> bool:
    value = _field(data, key, where)
    if not isinstance(value, bool):
        raise SnapshotError(f"{where}: {key!r} must be true or false, not {value!r}")
    return value


def _optional_bool(data: Mapping[str, Any], key: str, where: str) -> bool | None:
    return None if _field(data, key, where) is None else _bool(data, key, where)


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SnapshotError(f"{where}: must be an object, not {type(value).__name__}")
    return value


def member_from_snapshot(data: Any, where: str = "member") -> Member:
    """A member from :func:`member_to_snapshot`'s dict; :class:`SnapshotError` if malformed."""
    data = _mapping(data, where)
    user_id = _str(data, "user_id", where, empty=False)
    where = f"{where} {user_id!r}"
    try:
        role = CallRole(_int(data, "role", where))
    except ValueError as exc:
        raise SnapshotError(f"{where}: unknown role {data['role']!r}") from exc
    state = _str(data, "state", where)
    if state not in MEMBER_STATES:
        raise SnapshotError(f"{where}: unknown state {state!r}")
    conn = None if _field(data, "conn", where) is None else _int(data, "conn", where)
    return Member(
        user_id=user_id,
        role=role,
        state=state,
        deadline=_float(data, "deadline", where),
        conn=conn,
        ever_joined=_bool(data, "ever_joined", where),
        camera=_optional_bool(data, "camera", where),
        microphone=_optional_bool(data, "microphone", where),
        user_data=_str(data, "user_data", where),
    )


def room_from_snapshot(data: Any, where: str = "sfu room") -> SfuRoom:
    """An SFU room from :func:`room_to_snapshot`'s dict; :class:`SnapshotError` if malformed."""
    data = _mapping(data, where)
    instance = None if _field(data, "instance", where) is None else _str(
        data, "instance", where, empty=False)
    tokens = _mapping(_field(data, "tokens", where), f"{where}: tokens")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in tokens.items()):
        raise SnapshotError(f"{where}: tokens must map user ids to strings")
    return SfuRoom(
        instance=instance,
        room=_int(data, "room", where),
        secret=_str(data, "secret", where),
        pin=_str(data, "pin", where),
        epoch=_int(data, "epoch", where),
        tokens=dict(tokens),
        ready=_bool(data, "ready", where),
    )


def call_from_snapshot(data: Any) -> Call:
    """A call from :func:`call_to_snapshot`'s dict (not watched by anything yet).

    Raises :class:`SnapshotError` for another version, a missing or mistyped field, a member
    listed twice, or a caller who is not a member.
    """
    data = _mapping(data, "call snapshot")
    version = data.get("version")
    if version != SNAPSHOT_VERSION:
        raise SnapshotError(f"call snapshot: version {version!r} is not {SNAPSHOT_VERSION}")
    call_id = _str(data, "call_id", "call snapshot", empty=False)
    where = f"call {call_id!r}"
    room_id = _field(data, "room_id", where)
    if not isinstance(room_id, int | str) or isinstance(room_id, bool):
        raise SnapshotError(f"{where}: 'room_id' must be an integer or a string")
    try:
        scene = CallScene(_int(data, "scene", where))
    except ValueError as exc:
        raise SnapshotError(f"{where}: unknown scene {data['scene']!r}") from exc
    listed = _field(data, "members", where)
    if not isinstance(listed, list):
        raise SnapshotError(f"{where}: 'members' must be a list")
    members: dict[str, Member] = {}
    for index, item in enumerate(listed):
        member = member_from_snapshot(item, f"{where}: member {index}")
        if member.user_id in members:
            raise SnapshotError(f"{where}: member {member.user_id!r} is listed twice")
        members[member.user_id] = member
    caller = _str(data, "caller", where, empty=False)
    # (The caller's member may be CALLED: a caller who left and was invited back.)
    if caller not in members:
        raise SnapshotError(f"{where}: the caller {caller!r} is not one of its members")
    accept_ts = None if _field(data, "accept_ts", where) is None else _float(
        data, "accept_ts", where)
    sfu = _field(data, "sfu", where)
    return Call(
        call_id=call_id,
        sdk_app_id=_int(data, "sdk_app_id", where),
        caller=caller,
        media_type=_int(data, "media_type", where),
        room_id=room_id,
        group_id=_str(data, "group_id", where),
        user_data=_str(data, "user_data", where),
        scene=scene,
        start_ts=_float(data, "start_ts", where),
        members=members,
        accept_ts=accept_ts,
        canceled=_bool(data, "canceled", where),
        interrupted=_bool(data, "interrupted", where),
        group_verified=_bool(data, "group_verified", where),
        sfu=None if sfu is None else room_from_snapshot(sfu, f"{where}: sfu room"),
    )

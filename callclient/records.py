"""Call records over signaling: the ``query_recent_calls`` request and its reply as values.

The server keeps the records (``docs/protocol.md``, "Call records"); this module turns a
:class:`~callclient.types.RecentCallsFilter` into request data and the reply into
:class:`~callclient.types.CallRecord` values. A malformed record is a :class:`ProtocolError`
naming the field, never a ``KeyError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from callclient.errors import ProtocolError
from callclient.types import (
    CallMediaType,
    CallRecord,
    CallResultType,
    CallRole,
    CallScene,
    RecentCallsFilter,
)

__all__ = ["parse_records", "recent_calls_request"]


def recent_calls_request(filter: RecentCallsFilter) -> dict[str, Any]:
    """The ``query_recent_calls`` request data for ``filter``."""
    data: dict[str, Any] = {}
    if filter.begin is not None:
        data["begin"] = filter.begin
    if filter.end is not None:
        data["end"] = filter.end
    if filter.result_type is not None:
        data["resultType"] = int(filter.result_type)
    return data


def _record(item: Any) -> CallRecord:
    if not isinstance(item, Mapping):
        raise ProtocolError(f"call record must be an object, not {item!r:.60}")
    try:
        return CallRecord(
            call_id=str(item["callId"]),
            inviter=str(item["inviter"]),
            invite_list=[str(u) for u in item["inviteList"]],
            scene=CallScene(item["scene"]),
            media_type=CallMediaType(item["mediaType"]),
            group_id=str(item["groupId"]),
            role=CallRole(item["role"]),
            result=CallResultType(item["result"]),
            begin_time=int(item["beginTime"]),
            total_time=int(item["totalTime"]),
            call_result=str(item.get("callResult", "")),
        )
    except KeyError as exc:
        raise ProtocolError(f"call record without {exc.args[0]!r}: {dict(item)!r:.120}") from exc
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"call record with a bad field ({exc}): {dict(item)!r:.120}") from exc


def parse_records(reply: Mapping[str, Any]) -> list[CallRecord]:
    """The records in a ``query_recent_calls`` reply, newest first as the server sends them."""
    records = reply.get("records")
    if not isinstance(records, list):
        raise ProtocolError('query_recent_calls reply needs a "records" list')
    return [_record(item) for item in records]

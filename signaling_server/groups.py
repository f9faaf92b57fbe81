"""Groups: named sets of users whose calls the members can see and join. Pure data, no I/O.

An administrator creates groups and manages their members through the REST API
(:mod:`signaling_server.group_api`, ``docs/rest-api.md`` "Groups"); the records database keeps
them. The server loads every group into a :class:`GroupDirectory` at start and keeps it in step
with each change the REST API commits; the call core (:mod:`signaling_server.core`) reads it to
decide who may start a call in a group, see the group's call in progress, and join it
(``docs/protocol.md`` "Group calls").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

__all__ = ["MAX_GROUP_MEMBERS", "MAX_GROUP_NAME", "Group", "GroupDirectory"]

MAX_GROUP_MEMBERS: Final = 1000
"""A group holds at most this many members (the REST API refuses more with 10014)."""

MAX_GROUP_NAME: Final = 128


@dataclass
class Group:
    """One group: its name and its members, in the order they were added."""

    group_id: str
    name: str
    created_ts: float
    members: dict[str, float] = field(default_factory=dict)
    """Member user id -> when they were added (Unix seconds), in insertion order."""


class GroupDirectory:
    """Every group of one sdkappid, in memory; the REST API changes it after each commit."""

    def __init__(self, groups: Iterable[Group] = ()) -> None:
        self._groups: dict[str, Group] = {group.group_id: group for group in groups}

    def __len__(self) -> int:
        return len(self._groups)

    def get(self, group_id: str) -> Group | None:
        """The group, or None."""
        return self._groups.get(group_id)

    def exists(self, group_id: str) -> bool:
        """Whether the group exists."""
        return group_id in self._groups

    def is_member(self, group_id: str, user_id: str) -> bool:
        """Whether ``user_id`` belongs to the group (False when the group does not exist)."""
        group = self._groups.get(group_id)
        return group is not None and user_id in group.members

    def non_members(self, group_id: str, user_ids: Iterable[str]) -> list[str]:
        """The users of ``user_ids`` who do not belong to the group, in order."""
        group = self._groups.get(group_id)
        members = group.members if group is not None else {}
        return [user for user in user_ids if user not in members]

    def put(self, group: Group) -> None:
        """Add or replace a group (after the database committed it)."""
        self._groups[group.group_id] = group

    def remove(self, group_id: str) -> None:
        """Forget a group (after the database deleted it)."""
        self._groups.pop(group_id, None)

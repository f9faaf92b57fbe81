"""Groups in the records database and their administrator REST API (``/v1/group/...``).

:class:`GroupService` keeps the ``call_groups`` / ``call_group_members`` tables and the
server's in-memory :class:`~signaling_server.groups.GroupDirectory` (read by the call core) in
step: each change is checked against the directory, committed on the record writer's thread,
and only then applied to the directory, one change at a time. :func:`group_commands` are the
REST commands (``docs/rest-api.md`` "Groups"); their error codes are the REST API's
(70001 invalid parameters) and, for group states, those of the Chat service's group API
(10010 no such group, 10014 group full, 10021 group id already used).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, ParamSpec, TypeVar

from callwire.codes import ErrorCode
from callwire.protocol import check_user_id
from signaling_server.groups import MAX_GROUP_MEMBERS, MAX_GROUP_NAME, Group, GroupDirectory
from signaling_server.http_api import Body, RestError, RestHandler, invalid
from signaling_server.store import CallStore, RecordWriter

__all__ = ["GroupService", "group_commands", "load_groups"]

P = ParamSpec("P")
T = TypeVar("T")

MAX_MEMBERS_PER_REQUEST: Final = 500
"""User ids one add or delete request may name."""
MAX_PAGE: Final = 1000


# ---------------------------------------------------------------------- database


def load_groups(store: CallStore, sdk_app_id: int) -> list[Group]:
    """Every group of ``sdk_app_id`` with its members, as stored."""
    with store.locked() as conn:
        groups = {
            row["group_id"]: Group(row["group_id"], row["name"], row["created_ts"])
            for row in conn.execute(
                "SELECT * FROM call_groups WHERE sdk_app_id = ? ORDER BY created_ts, group_id",
                (sdk_app_id,),
            )
        }
        for row in conn.execute(
            "SELECT group_id, user_id, added_ts FROM call_group_members WHERE sdk_app_id = ? "
            "ORDER BY added_ts, rowid",
            (sdk_app_id,),
        ):
            group = groups.get(row["group_id"])
            if group is not None:
                group.members[row["user_id"]] = row["added_ts"]
    return list(groups.values())


def _insert_group(store: CallStore, sdk_app_id: int, group: Group) -> None:
    with store.transaction() as conn:
        conn.execute(
            "INSERT INTO call_groups (sdk_app_id, group_id, name, created_ts) VALUES (?, ?, ?, ?)",
            (sdk_app_id, group.group_id, group.name, group.created_ts),
        )
        conn.executemany(
            "INSERT INTO call_group_members (sdk_app_id, group_id, user_id, added_ts) "
            "VALUES (?, ?, ?, ?)",
            [(sdk_app_id, group.group_id, user, at) for user, at in group.members.items()],
        )


def _delete_group(store: CallStore, sdk_app_id: int, group_id: str) -> None:
    with store.transaction() as conn:
        conn.execute(
            "DELETE FROM call_groups WHERE sdk_app_id = ? AND group_id = ?", (sdk_app_id, group_id)
        )


def _add_members(
    store: CallStore, sdk_app_id: int, group_id: str, users: Sequence[str], now: float
) -> None:
    with store.transaction() as conn:
        conn.executemany(
            "INSERT OR IGNORE INTO call_group_members (sdk_app_id, group_id, user_id, added_ts) "
            "VALUES (?, ?, ?, ?)",
            [(sdk_app_id, group_id, user, now) for user in users],
        )


def _remove_members(store: CallStore, sdk_app_id: int, group_id: str, users: Sequence[str]) -> None:
    with store.transaction() as conn:
        conn.executemany(
            "DELETE FROM call_group_members WHERE sdk_app_id = ? AND group_id = ? AND user_id = ?",
            [(sdk_app_id, group_id, user) for user in users],
        )


# ---------------------------------------------------------------------- the service


def _no_group(group_id: str) -> RestError:
    return RestError(ErrorCode.GROUP_NOT_FOUND, f"group {group_id!r} does not exist")


def _check_users(users: Any, field: str, *, allow_empty: bool) -> list[str]:
    if not isinstance(users, list) or (not users and not allow_empty):
        raise invalid(f"body field {field!r} must be a non-empty list of user ids")
    if len(users) > MAX_MEMBERS_PER_REQUEST:
        raise invalid(f"body field {field!r} holds at most {MAX_MEMBERS_PER_REQUEST} user ids")
    for user in users:
        reason = check_user_id(user)
        if reason:
            raise invalid(f"body field {field!r} holds {user!r:.70}, which {reason}")
    return list(dict.fromkeys(users))


class GroupService:
    """Group changes for the REST API: checked, committed, then applied to the directory."""

    def __init__(
        self,
        store: CallStore,
        sdk_app_id: int,
        directory: GroupDirectory,
        *,
        writer: RecordWriter | None = None,
        on_change: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.store = store
        self.sdk_app_id = sdk_app_id
        self.directory = directory
        self._writer = writer
        self._on_change = on_change
        """Told the ids of groups once changed (a cluster node tells the other nodes)."""
        self._lock = asyncio.Lock()  # one change at a time: the directory follows commits

    async def _run_db(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._writer is not None:
            return await self._writer.run_query(fn, *args, **kwargs)
        return await asyncio.to_thread(fn, *args, **kwargs)

    def _existing(self, group_id: str) -> Group:
        group = self.directory.get(group_id)
        if group is None:
            raise _no_group(group_id)
        return group

    async def create(self, group_id: str, name: str, members: list[str]) -> Group:
        """A new group; 10021 when the id is used, 10014 when ``members`` are too many."""
        async with self._lock:
            if self.directory.exists(group_id):
                raise RestError(
                    ErrorCode.GROUP_ID_USED, f"group id {group_id!r} is already used"
                )
            if len(members) > MAX_GROUP_MEMBERS:
                raise RestError(
                    ErrorCode.GROUP_FULL,
                    f"a group holds at most {MAX_GROUP_MEMBERS} members, not {len(members)}",
                )
            now = time.time()
            group = Group(group_id, name, now, dict.fromkeys(members, now))
            await self._run_db(_insert_group, self.store, self.sdk_app_id, group)
            self.directory.put(group)
            self._changed(group_id)
            return group

    async def destroy(self, group_id: str) -> None:
        """Delete a group and its members; 10010 when there is none."""
        async with self._lock:
            self._existing(group_id)
            await self._run_db(_delete_group, self.store, self.sdk_app_id, group_id)
            self.directory.remove(group_id)
            self._changed(group_id)

    async def add(self, group_id: str, users: list[str]) -> tuple[list[str], list[str]]:
        """Add members; ``(added, already members)``. 10010, or 10014 past the cap."""
        async with self._lock:
            group = self._existing(group_id)
            added = [u for u in users if u not in group.members]
            if len(group.members) + len(added) > MAX_GROUP_MEMBERS:
                raise RestError(
                    ErrorCode.GROUP_FULL,
                    f"group {group_id!r} has {len(group.members)} members; adding "
                    f"{len(added)} would exceed {MAX_GROUP_MEMBERS}",
                )
            now = time.time()
            if added:
                await self._run_db(_add_members, self.store, self.sdk_app_id, group_id, added, now)
            members = {**group.members, **dict.fromkeys(added, now)}
            self.directory.put(Group(group.group_id, group.name, group.created_ts, members))
            self._changed(group_id)
            return added, [u for u in users if u not in added]

    async def remove(self, group_id: str, users: list[str]) -> tuple[list[str], list[str]]:
        """Remove members; ``(removed, not members)``. 10010 when there is no such group."""
        async with self._lock:
            group = self._existing(group_id)
            removed = [u for u in users if u in group.members]
            if removed:
                await self._run_db(_remove_members, self.store, self.sdk_app_id, group_id, removed)
            members = {u: at for u, at in group.members.items() if u not in removed}
            self.directory.put(Group(group.group_id, group.name, group.created_ts, members))
            self._changed(group_id)
            return removed, [u for u in users if u not in removed]

    def _changed(self, group_id: str) -> None:
        if self._on_change is not None:
            self._on_change([group_id])

    def get(self, group_id: str) -> Group:
        """The group as it is now; 10010 when there is none."""
        return self._existing(group_id)


# ---------------------------------------------------------------------- REST commands


def _group_id(body: Body) -> str:
    group_id = body.string("groupId", required=True)
    assert group_id is not None
    return group_id


def group_commands(service: GroupService) -> dict[str, RestHandler]:
    """The ``group/...`` REST commands over ``service``."""

    async def create_group(data: dict[str, Any]) -> dict[str, Any]:
        body = Body(data, ("groupId", "name", "memberList"))
        group_id = _group_id(body)
        name = data.get("name", "")
        if not isinstance(name, str) or len(name) > MAX_GROUP_NAME:
            raise invalid(f"body field 'name' must be a string of at most {MAX_GROUP_NAME} "
                          "characters")
        members = _check_users(data.get("memberList", []), "memberList", allow_empty=True)
        group = await service.create(group_id, name, members)
        return {"groupId": group.group_id, "name": group.name,
                "createdTs": int(group.created_ts), "memberNum": len(group.members)}

    async def destroy_group(data: dict[str, Any]) -> dict[str, Any]:
        group_id = _group_id(Body(data, ("groupId",)))
        await service.destroy(group_id)
        return {"groupId": group_id}

    async def change_members(
        data: dict[str, Any],
        change: Callable[[str, list[str]], Awaitable[tuple[list[str], list[str]]]],
        done: str,
        unchanged: str,
    ) -> dict[str, Any]:
        group_id = _group_id(Body(data, ("groupId", "memberList")))
        users = _check_users(data.get("memberList"), "memberList", allow_empty=False)
        changed, same = await change(group_id, users)
        return {"groupId": group_id, done: changed, unchanged: same,
                "memberNum": len(service.get(group_id).members)}

    async def add_group_member(data: dict[str, Any]) -> dict[str, Any]:
        return await change_members(data, service.add, "added", "alreadyMembers")

    async def delete_group_member(data: dict[str, Any]) -> dict[str, Any]:
        return await change_members(data, service.remove, "removed", "notMembers")

    async def get_group_member_info(data: dict[str, Any]) -> dict[str, Any]:
        body = Body(data, ("groupId", "limit", "offset"))
        group_id = _group_id(body)
        limit = body.integer("limit", 1, MAX_PAGE) or 100
        offset = body.integer("offset", 0, MAX_GROUP_MEMBERS) or 0
        group = service.get(group_id)
        members = list(group.members.items())
        page = members[offset : offset + limit]
        return {
            "groupId": group.group_id,
            "name": group.name,
            "createdTs": int(group.created_ts),
            "memberNum": len(members),
            "memberList": [{"userId": user, "addedTs": int(at)} for user, at in page],
            "nextOffset": offset + len(page) if offset + len(page) < len(members) else 0,
        }

    return {
        "group/create_group": create_group,
        "group/destroy_group": destroy_group,
        "group/add_group_member": add_group_member,
        "group/delete_group_member": delete_group_member,
        "group/get_group_member_info": get_group_member_info,
    }

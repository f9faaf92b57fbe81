"""User profiles (nickname, avatar) in the records database: what ``self_info`` and a login set.

The call core keeps the profile of every connected user in memory and hands out
:class:`~signaling_server.core.SaveProfile` / :class:`~signaling_server.core.LoadProfile`
outputs; the server stores a profile change with the records of the same step
(:meth:`~signaling_server.store.RecordWriter.submit_unit`) and runs these queries on the
writer's reader thread. A profile outlives the
session, as an IM profile does: a user who logs in without a nickname is shown with the one
stored, and ``get_user_info`` answers for users who are offline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from signaling_server.store import CallStore

__all__ = ["load_profiles", "user_info_reply"]

_CHUNK = 500


def load_profiles(
    store: CallStore, sdk_app_id: int, user_ids: Sequence[str]
) -> dict[str, tuple[str, str]]:
    """``user_id -> (nickname, avatar)`` for the users with a stored profile."""
    found: dict[str, tuple[str, str]] = {}
    with store.locked() as conn:
        for start in range(0, len(user_ids), _CHUNK):
            chunk = list(user_ids[start : start + _CHUNK])
            marks = ", ".join("?" * len(chunk))
            rows = conn.execute(
                "SELECT user_id, nickname, avatar FROM user_profiles "
                f"WHERE sdk_app_id = ? AND user_id IN ({marks})",
                [sdk_app_id, *chunk],
            )
            for row in rows:
                found[row["user_id"]] = (row["nickname"], row["avatar"])
    return found


def user_info_reply(
    store: CallStore,
    sdk_app_id: int,
    user_ids: Sequence[str],
    known: Mapping[str, Mapping[str, str]],
) -> dict[str, list[dict[str, str]]]:
    """The ``get_user_info`` reply data: every user asked for, in order; ``known`` (the
    core's profiles of connected users) wins over the store; ``""`` for a user never seen."""
    stored = load_profiles(store, sdk_app_id, [u for u in user_ids if u not in known])
    users = []
    for user_id in user_ids:
        if user_id in known:
            nickname, avatar = known[user_id]["nickname"], known[user_id]["avatar"]
        else:
            nickname, avatar = stored.get(user_id, ("", ""))
        users.append({"userID": user_id, "nickname": nickname, "avatar": avatar})
    return {"users": users}

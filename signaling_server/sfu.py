"""Which group calls use a Selective Forwarding Unit, on which instance, with which credentials.

No I/O: the call core (:mod:`signaling_server.core`) keeps one :class:`SfuRoom` per call that
goes through the SFU and emits :class:`CreateRoom`, :class:`AllowTokens` and
:class:`DestroyRoom` outputs; :mod:`signaling_server.janus` carries them out against Janus
VideoRoom and hands the results back (``CallCore.sfu_room_failed``, ``sfu_instance_down`` /
``sfu_instance_up``). :class:`SfuPool` knows the configured instances, which are up, and picks
the least loaded one (fewest members in rooms) for a new or moved room.

Access to a room: a random numeric room id, a room ``secret`` (only the server edits or
destroys the room), a room ``pin`` every member is given, and one token per joined member in
the room's ``allowed`` list (Janus refuses a publisher without one); the rooms require a
publisher's ``private_id`` from every subscriber, so nobody outside the call can publish or
subscribe. A member who leaves loses their token.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, ClassVar

from signaling_server.callmodel import Watched, WatchedDict, Watcher

__all__ = ["AllowTokens", "CreateRoom", "DestroyRoom", "SfuPool", "SfuRoom"]


@dataclass(frozen=True, slots=True)
class CreateRoom:
    """Create VideoRoom ``room`` on ``instance`` for ``call_id`` (attempt ``epoch``)."""

    instance: str
    call_id: str
    epoch: int
    room: int
    secret: str
    pin: str
    tokens: tuple[str, ...]
    publishers: int


@dataclass(frozen=True, slots=True)
class AllowTokens:
    """Add or remove member tokens of a room's ``allowed`` list."""

    instance: str
    room: int
    secret: str
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DestroyRoom:
    """Destroy a room (the call ended or moved away from ``instance``)."""

    instance: str
    room: int
    secret: str


@dataclass
class SfuRoom(Watched):
    """The SFU room of one call: where it is now and each joined member's token.

    Watched (:class:`~signaling_server.callmodel.Watched`): its call reports every change.
    """

    instance: str | None
    """None while no instance is up (the room is created when one comes back)."""
    room: int
    secret: str
    pin: str
    epoch: int = 0
    """Bumped each time the room is (re)created; clients replace their transport on a new one."""
    tokens: dict[str, str] = field(default_factory=dict)
    """Stored as a :class:`~signaling_server.callmodel.WatchedDict`."""
    ready: bool = False
    """The current attempt's room exists (``CallCore.sfu_room_ready``)."""

    _ADOPTED: ClassVar[frozenset[str]] = frozenset({"tokens"})

    def _adopt(self, name: str, value: Any) -> Any:
        if name == "tokens" and not (isinstance(value, WatchedDict) and value._owner is self):
            return WatchedDict(self, value)
        return value

    def _watch_parts(self, watcher: Watcher | None) -> None:
        pass  # the tokens are strings; the dict reports through this room

    def token_for(self, user_id: str) -> str:
        """The member's token, made on first use."""
        token = self.tokens.get(user_id)
        if token is None:
            token = self.tokens[user_id] = secrets.token_urlsafe(18)
        return token


def _room_id() -> int:
    # Janus room ids are unsigned 64-bit; stay within JSON's exact integer range.
    return secrets.randbelow(2**52 - 1) + 1


class SfuPool:
    """The configured SFU instances: which are up and how loaded each is."""

    def __init__(self, instances: tuple[str, ...]) -> None:
        self.instances = instances
        self.down: set[str] = set()

    @property
    def configured(self) -> bool:
        """Whether any SFU is configured (else every call is peer to peer)."""
        return bool(self.instances)

    def pick(self, rooms: list[SfuRoom], avoid: str | None = None) -> str | None:
        """The up instance with the fewest members in rooms, ``avoid`` only as last resort."""
        load = {i: 0 for i in self.instances if i not in self.down}
        for room in rooms:
            if room.instance in load:
                load[room.instance] += max(1, len(room.tokens))
        if not load:
            return None
        candidates = [i for i in load if i != avoid] or list(load)
        return min(candidates, key=lambda i: (load[i], self.instances.index(i)))

    @staticmethod
    def new_room() -> SfuRoom:
        """A room with fresh id, secret and pin, not placed yet."""
        return SfuRoom(None, _room_id(), secrets.token_urlsafe(18), secrets.token_urlsafe(9))

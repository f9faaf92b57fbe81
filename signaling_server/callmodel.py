"""The state of a call the core keeps (:class:`Call`, its :class:`Member` s), and change watching.

No I/O. Every :class:`Watched` object calls its watcher after each assignment that changes one
of its attributes, and a :class:`WatchedDict` after each insertion or removal; a :class:`Call`
hands its watcher on to its members and its SFU room. :class:`signaling_server.core.CallCore`
watches every active call so it knows, at no cost for the steps that change nothing (a relay
frame), which calls to snapshot for the cluster's failover
(:meth:`~signaling_server.core.CallCore.take_changed_calls`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar, overload

from callwire.enums import CallRole, CallScene

if TYPE_CHECKING:
    from signaling_server.sfu import SfuRoom

__all__ = [
    "BUSY",
    "CANCELED",
    "IGNORED",
    "JOINED",
    "LEFT",
    "MEMBER_STATES",
    "REJECTED",
    "RINGING",
    "TIMEOUT",
    "Call",
    "Member",
    "Watched",
    "WatchedDict",
    "Watcher",
]

RINGING: Final = "ringing"
JOINED: Final = "joined"
LEFT: Final = "left"
REJECTED: Final = "rejected"
TIMEOUT: Final = "timeout"
BUSY: Final = "busy"
IGNORED: Final = "ignored"
CANCELED: Final = "canceled"
MEMBER_STATES: Final = frozenset({RINGING, JOINED, LEFT, REJECTED, TIMEOUT, BUSY, IGNORED,
                                  CANCELED})

Watcher = Callable[[], None]
"""Called after a watched object changed."""

_UNSET: Final = object()
K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")


class Watched:
    """Calls its watcher after every attribute assignment that changes the value.

    The watcher is not a dataclass field (equality, ``repr`` and snapshots ignore it).
    Subclasses hand it on to the watched objects they hold (:meth:`_watch_parts`).
    """

    _watcher: Watcher | None = None
    _ADOPTED: ClassVar[frozenset[str]] = frozenset()
    """The attributes :meth:`_adopt` wraps or watches (the others are stored as given)."""

    def watch(self, watcher: Watcher | None) -> None:
        """Report changes to ``watcher`` from now on (None: stop reporting)."""
        object.__setattr__(self, "_watcher", watcher)
        self._watch_parts(watcher)

    def _watch_parts(self, watcher: Watcher | None) -> None:
        """Hand ``watcher`` on to the watched objects this one holds."""

    def _adopt(self, name: str, value: Any) -> Any:
        """The value to store for attribute ``name`` (a subclass wraps or watches it)."""
        return value

    def _changed(self) -> None:
        watcher = self._watcher
        if watcher is not None:
            watcher()

    def __setattr__(self, name: str, value: Any) -> None:
        # Kept lean: every field assignment (construction included) comes through here.
        if name in self._ADOPTED:
            value = self._adopt(name, value)
        attributes = self.__dict__
        watcher = self._watcher
        if watcher is None:
            attributes[name] = value
            return
        old = attributes.get(name, _UNSET)
        attributes[name] = value
        if old is not value and old != value:
            watcher()


class WatchedDict(dict[K, V]):
    """A dict that reports insertions and removals to its owner (and watches what it holds)."""

    def __init__(self, owner: Watched, items: Mapping[K, V] | None = None) -> None:
        super().__init__(items or {})  # not reported: storing the dict itself is
        self._owner = owner
        self.watch_values(self.values())

    def _watch_value(self, value: V) -> None:
        if isinstance(value, Watched):
            value.watch(self._owner._watcher)

    def __setitem__(self, key: K, value: V) -> None:
        self._watch_value(value)
        super().__setitem__(key, value)
        self._owner._changed()

    def __delitem__(self, key: K) -> None:
        super().__delitem__(key)
        self._owner._changed()

    @overload
    def pop(self, key: K, /) -> V: ...

    @overload
    def pop(self, key: K, default: V, /) -> V: ...

    @overload
    def pop(self, key: K, default: T, /) -> V | T: ...

    def pop(self, key: K, *default: Any) -> Any:
        """As :meth:`dict.pop`; a removal is reported."""
        if key in self:
            value = super().pop(key)
            self._owner._changed()
            return value
        return super().pop(key, *default)

    def popitem(self) -> tuple[K, V]:
        """As :meth:`dict.popitem`; the removal is reported."""
        item = super().popitem()
        self._owner._changed()
        return item

    def clear(self) -> None:
        """As :meth:`dict.clear`; reported when something was removed."""
        if self:
            super().clear()
            self._owner._changed()

    def setdefault(self, key: K, default: V, /) -> V:
        """As :meth:`dict.setdefault`; an insertion is reported."""
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args: Any, **kwargs: V) -> None:
        """As :meth:`dict.update`, one reported insertion per item."""
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __ior__(self, other: Any) -> WatchedDict[K, V]:  # type: ignore[override,misc]
        self.update(other)
        return self

    def watch_values(self, values: Iterable[V]) -> None:
        """Hand the owner's current watcher on to ``values`` (held by this dict)."""
        for value in values:
            self._watch_value(value)


@dataclass
class Member(Watched):
    """One user of a call: their role, state, deadline and media state."""

    user_id: str
    role: CallRole
    state: str
    deadline: float = 0.0  # ring deadline while ringing, grace deadline while detached
    conn: int | None = None  # the connection bound to this call once joined
    ever_joined: bool = False
    camera: bool | None = None
    microphone: bool | None = None
    user_data: str = ""
    """The ``userData`` of this member's invitation."""


@dataclass
class Call(Watched):
    """A call in progress: who is in it (in invitation order) and how it stands."""

    call_id: str
    sdk_app_id: int
    caller: str
    media_type: int
    room_id: int | str
    group_id: str
    user_data: str
    scene: CallScene
    start_ts: float
    members: dict[str, Member] = field(default_factory=dict)
    """Stored as a :class:`WatchedDict`: adding a member is a change of the call."""
    accept_ts: float | None = None
    canceled: bool = False
    interrupted: bool = False
    group_verified: bool = False
    """``group_id`` names a group the caller belongs to: the group's call in progress."""
    sfu: SfuRoom | None = None
    """The call's SFU room when its media goes through the SFU (decided at its start)."""

    _ADOPTED: ClassVar[frozenset[str]] = frozenset({"members", "sfu"})

    def _adopt(self, name: str, value: Any) -> Any:
        if name == "members" and not (isinstance(value, WatchedDict) and value._owner is self):
            return WatchedDict(self, value)
        if name == "sfu" and isinstance(value, Watched):
            value.watch(self._watcher)
        return value

    def _watch_parts(self, watcher: Watcher | None) -> None:
        members = self.__dict__.get("members")
        if isinstance(members, WatchedDict):
            members.watch_values(members.values())
        if self.sfu is not None:
            self.sfu.watch(watcher)

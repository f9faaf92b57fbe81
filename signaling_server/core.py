"""The call state machine: frames and clock ticks in, outputs out. No I/O.

The websocket layer (:mod:`signaling_server.server`) feeds :class:`CallCore` with what each
connection sends (:meth:`CallCore.receive`), connection openings and closings, and the clock
(:meth:`CallCore.tick` whenever :meth:`CallCore.next_deadline` passes). The core answers with a
list of outputs: frames to send, connections to close, call records to persist, record queries
to run, and webhook notices. Tests drive it the same way, with no sockets and a fake clock.

For a cluster's failover the core hands out JSON snapshots of the calls that changed in each
step (:meth:`CallCore.take_changed_calls`; the calls are :mod:`signaling_server.callmodel`
objects that report every change) and adopts another core's calls
(:meth:`CallCore.restore_calls`; the format is :mod:`signaling_server.snapshot`).
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import logging
import secrets
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from callwire import protocol
from callwire.codes import CloseCode, ErrorCode
from callwire.enums import CallResultType, CallRole, CallScene
from callwire.protocol import ProtocolViolation, Request
from callwire.turn import DEFAULT_TTL_S, TurnUrl, ice_servers
from callwire.version import __version__
from signaling_server import snapshot
from signaling_server.callmodel import (
    BUSY,
    CANCELED,
    IGNORED,
    JOINED,
    LEFT,
    REJECTED,
    RINGING,
    TIMEOUT,
    Call,
    Member,
)
from signaling_server.groups import GroupDirectory
from signaling_server.records import ParticipantOutcome, StoredCall
from signaling_server.sfu import AllowTokens, CreateRoom, DestroyRoom, SfuPool, SfuRoom

__all__ = [
    "AllowTokens",
    "CallCore",
    "Close",
    "CoreConfig",
    "CreateRoom",
    "DestroyRoom",
    "LoadProfile",
    "Notice",
    "OfflinePush",
    "Output",
    "SaveCall",
    "SaveProfile",
    "Send",
    "SigVerifier",
    "StoreRequest",
]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- outputs


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``text`` on connection ``conn``."""

    conn: int
    text: str


@dataclass(frozen=True, slots=True)
class Close:
    """Close connection ``conn`` with a websocket close code and reason."""

    conn: int
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class SaveCall:
    """Persist the current state of a call record."""

    call: StoredCall


@dataclass(frozen=True, slots=True)
class StoreRequest:
    """Run a record query for a user and send the reply to ``request_id`` on ``conn``."""

    conn: int
    request_id: int | str
    sdk_app_id: int
    user_id: str
    op: str  # "recent_calls" | "delete_calls" | "user_info"
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Notice:
    """A call event for the business backend (webhook), in the reference's vocabulary."""

    event: str  # start_call, call_accepted, receive_call, ...
    user_id: str
    role: str  # "caller" | "called"
    call: StoredCall
    event_time: float
    client_ip: str
    platform: str


@dataclass(frozen=True, slots=True)
class SaveProfile:
    """Persist a user's nickname and/or avatar; a field that is None keeps the stored value."""

    sdk_app_id: int
    user_id: str
    nickname: str | None
    avatar: str | None


@dataclass(frozen=True, slots=True)
class LoadProfile:
    """Read a user's stored profile and hand it back with :meth:`CallCore.profile_loaded`."""

    sdk_app_id: int
    user_id: str


@dataclass(frozen=True, slots=True)
class OfflinePush:
    """An invitation to a user with no connection, for the offline push endpoint."""

    user_id: str
    call: StoredCall
    invitation: dict[str, Any]
    """The ``ON_CALL_RECEIVED`` data the user gets when they log in while it rings."""
    push_info: dict[str, Any]
    """The invitation's ``offlinePushInfo`` as the inviter gave it (``{}`` when absent)."""
    event_time: float
    expires_at: float
    """When the invitation stops ringing; a push not delivered by then is dropped."""


Output = (
    Send | Close | SaveCall | StoreRequest | Notice | SaveProfile | LoadProfile | OfflinePush
    | CreateRoom | AllowTokens | DestroyRoom
)

SigVerifier = Callable[[str, str, float], float]
"""``verify(user_sig, user_id, now) -> expires_at``; raises an exception with ``code`` and
``message`` attributes (see :mod:`callwire.usersig`) when the userSig is refused."""



@dataclass(frozen=True)
class CoreConfig:
    """Tunables of the call state machine."""

    default_timeout_s: int = 30
    reconnect_grace_s: float = 3.0
    """How long a joined member whose connection dropped stays in the call."""
    rate_per_s: float = 200.0
    rate_burst: float = 400.0
    """Token bucket per connection; a connection that runs it dry is closed."""
    max_invalid_frames: int = 100
    """Consecutive malformed frames before the connection is closed."""
    invite_rate_per_s: float = 0.5
    invite_burst: float = 32.0
    """Token bucket of each user's ``invite`` requests, one token per invitee: a user may add
    32 people to calls at once, then one every 2 s. (``calls`` is not counted: its invitees
    go away with the call.)"""
    login_timeout_s: float | None = 10.0
    """A connection not logged in this long after it opened (or after its logout) is closed
    with 4010; None keeps such connections."""
    max_connections: int = 20_000
    """Connections held at once; one more is closed at once with 4029."""
    max_connections_per_ip: int = 256
    """Connections held at once from one client address; one more is closed with 4029."""
    per_ip_exempt: frozenset[str] = frozenset({"127.0.0.1", "::1"})
    """Addresses the per-address cap does not apply to: a reverse proxy on this machine makes
    every client loopback (and load tests run there); the total cap still applies."""
    turn_urls: tuple[TurnUrl, ...] = ()
    """TURN servers handed to clients (``iceServers``); none: no ``iceServers`` at all."""
    turn_secret: str = ""
    """coturn's ``static-auth-secret``: signs the time-limited TURN credentials."""
    turn_ttl_s: int = DEFAULT_TTL_S
    """Validity of the TURN credentials; fresh ones are pushed (``ICE_SERVERS``) when a
    quarter of it is left."""
    sfu: tuple[str, ...] = ()
    """Janus HTTP API URLs (``--sfu``); empty: every call is peer to peer."""
    sfu_min_users: int = 2
    """A group call with at least this many users at its start goes through the SFU (2: every
    group call). One-to-one calls stay peer to peer."""
    sfu_wait_s: float = 10.0
    """How long a call whose SFU died waits for an instance to come back before it ends."""


# --------------------------------------------------------------------------- state

@dataclass
class Session:
    conn: int
    client_ip: str
    tokens: float
    last_refill: float
    user_id: str | None = None
    sig_expires_at: float = 0.0
    platform: str = ""
    invalid_frames: int = 0
    sig_timer: int = 0
    """Sequence number of this session's userSig-expiry timer in the heap; 0: none."""
    login_timer: int = 0
    """Sequence number of the login-deadline timer while not logged in; 0: none."""
    ice_timer: int = 0
    """Sequence number of the TURN-credential refresh timer; 0: none."""


@dataclass
class Presence:
    user_id: str
    conns: list[int] = field(default_factory=list)
    multi_device: bool = False
    nickname: str | None = None
    avatar: str | None = None
    """None until known: given at login or by ``self_info``, or read from the store."""
    call_id: str | None = None
    invite_tokens: float = -1.0
    """The ``invite`` bucket (see :attr:`CoreConfig.invite_burst`); -1 until first used."""
    invite_refill: float = 0.0

    @property
    def info(self) -> dict[str, str]:
        """``{"nickname", "avatar"}`` as others see them (``""`` while unknown)."""
        return {"nickname": self.nickname or "", "avatar": self.avatar or ""}


# ON_CALL_CANCELED "reason" for the caller when a call ends unanswered, by record result.
_CANCEL_REASON: Final = {
    "not_answer": "timeout",
    "reject": "reject",
    "call_busy": "busy",
    "cancel": "cancel",
    "interrupt": "interrupted",
}


def _call_role_name(role: CallRole) -> str:
    return "caller" if role is CallRole.CALLER else "called"


class _Refused(Exception):
    """A request refused with an error code; becomes an error reply.

    ``keep`` holds outputs that still go out after the reply (a refused call's
    ``call_failed`` notice); everything else the handler queued is dropped.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = int(code)
        self.message = message
        self.keep: list[Output] = []


# --------------------------------------------------------------------------- the core


class CallCore:
    """Every call of one sdkappid: presence, invitations, the call state, relay, records."""

    def __init__(
        self,
        sdk_app_id: int,
        verify_sig: SigVerifier,
        config: CoreConfig | None = None,
        groups: GroupDirectory | None = None,
    ) -> None:
        self.sdk_app_id = sdk_app_id
        self.config = config or CoreConfig()
        self.groups = groups if groups is not None else GroupDirectory()
        """The groups whose members may see and join their calls (shared with the REST API)."""
        self._verify_sig = verify_sig
        self._sessions: dict[int, Session] = {}
        self._users: dict[str, Presence] = {}
        self._calls: dict[str, Call] = {}
        self._group_calls: dict[str, str] = {}  # group id -> its call in progress
        self._per_ip: dict[str, int] = {}  # client address -> open connections
        self.sfu = SfuPool(self.config.sfu)
        """The SFU instances and which of them are up."""
        self._timers: list[tuple[float, int, str, str]] = []  # (when, seq, kind, key)
        self._timer_seq = 0
        # userSig timers last as long as the userSig (often months) but most sessions end
        # first: their entries stay in the heap, counted here, until a rebuild drops them.
        self._stale_timers = 0
        self._out: list[Output] = []
        # Failover snapshots: calls changed since the last take_changed_calls (their watchers
        # add to this very set), calls ended since, and calls started since (never reported).
        self._changed: set[str] = set()
        self._ended: list[str] = []
        self._unreported: set[str] = set()
        self.store_unavailable: Callable[[], bool] | None = None
        """When set and true, ``calls`` is refused with STORE_UNAVAILABLE (4506): the server's
        record database is unreachable (its records wait in a local spool). Calls already in
        progress go on: accept, join, invite, hangup and the rest are not refused."""
        self._handlers: dict[str, Callable[[Session, Request, float], dict[str, Any] | None]] = {
            "login": self._login,
            "logout": self._logout,
            "ping": self._ping,
            "calls": self._calls_request,
            "accept": self._accept,
            "reject": self._reject,
            "ignore": self._ignore,
            "hangup": self._hangup,
            "invite": self._invite,
            "join": self._join,
            "join_in_group_call": self._join_in_group_call,
            "get_group_call": self._get_group_call,
            "switch_media_type": self._switch_media_type,
            "media_state": self._media_state,
            "network_quality": self._network_quality,
            "self_info": self._self_info,
            "get_user_info": self._get_user_info,
            "multi_device": self._multi_device,
            "relay": self._relay,
            "query_recent_calls": self._query_recent_calls,
            "delete_record_calls": self._delete_record_calls,
        }

    # ------------------------------------------------------------------ inspection

    @property
    def connection_count(self) -> int:
        """Open connections."""
        return len(self._sessions)

    @property
    def active_calls(self) -> Mapping[str, Call]:
        """Calls in progress (ringing or connected), by call id. Read-only use."""
        return self._calls

    def user_call(self, user_id: str) -> str | None:
        """The call a user is in (ringing or joined), if any."""
        presence = self._users.get(user_id)
        return presence.call_id if presence else None

    @property
    def timer_count(self) -> int:
        """Entries in the timer heap, stale ones included (bounded: see ``_cancel_timers``)."""
        return len(self._timers)

    # ------------------------------------------------------------------ failover snapshots

    def take_changed_calls(self) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """(snapshots of active calls changed since the last take, ids of calls that ended
        since then). Every change to a Call or its Members is seen.

        A call that started and ended between two takes is in neither. Costs nothing when
        nothing changed (each call reports its changes as they happen: :mod:`.callmodel`).
        """
        if not self._changed and not self._ended:
            return {}, []
        calls = self._calls
        changed = {
            call_id: snapshot.call_to_snapshot(calls[call_id])
            for call_id in self._changed
            if call_id in calls
        }
        ended, self._ended = self._ended, []
        self._changed.clear()  # cleared in place: the calls' watchers add to this set
        self._unreported.clear()
        return changed, ended

    def export_calls(self) -> dict[str, dict[str, Any]]:
        """Snapshots of every active call (JSON-able dicts, :mod:`.snapshot`)."""
        return {call_id: snapshot.call_to_snapshot(call) for call_id, call in self._calls.items()}

    def restore_calls(
        self, snapshots: Iterable[Mapping[str, Any]], now: float
    ) -> list[Output]:
        """Adopt another core's calls (failover), into a core that has no connections yet.

        Every member who was joined (bound to a connection or already detached) is detached
        in a reconnect grace that starts ``now`` (every client is being reconnected);
        ringing members keep their ring deadlines (one already past fires at the next
        :meth:`tick`). The users in each call are marked busy with it, so logging in again
        resumes the call or redelivers the invitation as after a dropped connection. An SFU
        room whose creation was still in flight is created again (``DestroyRoom`` then
        ``CreateRoom``, new epoch), one waiting for an instance is placed, and a ready room
        gets its members' tokens allowed again (``AllowTokens``, in case the dead core's last
        token change never reached the SFU). A snapshot that is malformed, of another
        sdkappid, or that clashes with a call already here is skipped with a logged error.
        Returns the outputs: a ``LoadProfile`` per user in a call (what the others are shown
        of them until they log in again) and the SFU room requests.
        """
        for data in snapshots:
            try:
                call = snapshot.call_from_snapshot(data)
                self._check_restorable(call)
            except snapshot.SnapshotError as exc:
                logger.error("call snapshot skipped: %s", exc)
                continue
            except Exception:
                logger.exception("call snapshot skipped: it could not be read")
                continue
            self._adopt_call(call, now)
        return self._flush()

    def _check_restorable(self, call: Call) -> None:
        if call.sdk_app_id != self.sdk_app_id:
            raise snapshot.SnapshotError(
                f"call {call.call_id!r} is of sdkappid {call.sdk_app_id}, not {self.sdk_app_id}")
        if call.call_id in self._calls:
            raise snapshot.SnapshotError(f"call {call.call_id!r} is already in progress here")
        for member in call.members.values():
            presence = self._users.get(member.user_id)
            if member.state in (RINGING, JOINED) and presence is not None and (
                presence.call_id is not None
            ):
                raise snapshot.SnapshotError(
                    f"call {call.call_id!r}: {member.user_id!r} is already in call "
                    f"{presence.call_id!r}")
        if call.group_verified and call.group_id in self._group_calls:
            raise snapshot.SnapshotError(
                f"call {call.call_id!r}: group {call.group_id!r} already has call "
                f"{self._group_calls[call.group_id]!r}")

    def _adopt_call(self, call: Call, now: float) -> None:
        self._add_call(call, reported=True)
        if call.group_verified:
            self._group_calls[call.group_id] = call.call_id
        for member in call.members.values():
            key = f"{call.call_id}\0{member.user_id}"
            if member.state == JOINED:
                member.conn = None
                member.deadline = now + self.config.reconnect_grace_s
                self._schedule(member.deadline, "grace", key)
            elif member.state == RINGING:
                member.conn = None
                self._schedule(member.deadline, "ring", key)
            else:
                continue
            presence = self._users.get(member.user_id)
            if presence is None:
                presence = self._users[member.user_id] = Presence(member.user_id)
                # What others are shown of them (invitations, USER_ENTER) before they log in.
                self._out.append(LoadProfile(self.sdk_app_id, member.user_id))
            presence.call_id = call.call_id
        room = call.sfu
        if room is None:
            return
        if room.instance is not None and room.ready and room.instance in self.sfu.instances:
            if room.tokens:
                self._out.append(AllowTokens(room.instance, room.room, room.secret,
                                             add=tuple(room.tokens.values())))
            return
        if room.instance is not None:
            # Its creation was in flight when the other core died: start it over.
            self._out.append(DestroyRoom(room.instance, room.room, room.secret))
            room.instance = None
        self._place_room(call, now)

    def _add_call(self, call: Call, reported: bool = False) -> None:
        """A call becomes active; its changes are watched from now on."""
        self._calls[call.call_id] = call
        call.watch(functools.partial(self._changed.add, call.call_id))
        self._changed.add(call.call_id)
        if not reported:
            self._unreported.add(call.call_id)

    def is_online(self, user_id: str) -> bool:
        """Whether the user has at least one logged-in connection."""
        presence = self._users.get(user_id)
        return bool(presence and presence.conns)

    # ------------------------------------------------------------------ inputs

    def open(self, conn: int, now: float, client_ip: str = "") -> list[Output]:
        """A new connection; it must log in before anything but ``ping``, within
        :attr:`CoreConfig.login_timeout_s`. Beyond the connection caps it is closed at once."""
        cfg = self.config
        held = self._per_ip.get(client_ip, 0)
        if len(self._sessions) >= cfg.max_connections:
            return [Close(conn, CloseCode.TOO_MANY_CONNECTIONS,
                          f"server full: {cfg.max_connections} connections; retry later")]
        if held >= cfg.max_connections_per_ip and client_ip not in cfg.per_ip_exempt:
            return [Close(conn, CloseCode.TOO_MANY_CONNECTIONS,
                          f"too many connections from your address "
                          f"({cfg.max_connections_per_ip}); close some first")]
        self._per_ip[client_ip] = held + 1
        session = Session(conn, client_ip, tokens=cfg.rate_burst, last_refill=now)
        self._sessions[conn] = session
        self._arm_login_deadline(session, now)
        return []

    def receive(self, conn: int, raw: str | bytes, now: float) -> list[Output]:
        """One frame from a connection."""
        session = self._sessions.get(conn)
        if session is None:
            return []
        if not self._take_token(session, now):
            self._send_error_event(
                conn, ErrorCode.TOO_MANY_MESSAGES, "too many messages: connection closed"
            )
            self._out.append(Close(conn, CloseCode.RATE_LIMITED, "rate limit exceeded"))
            self._drop_session(session, now, graceful=False)
            return self._flush()
        try:
            if isinstance(raw, bytes | bytearray):
                raise ProtocolViolation(
                    ErrorCode.MALFORMED_FRAME, "binary frames are refused; send text frames"
                )
            request = protocol.parse_request(raw)
        except ProtocolViolation as exc:
            session.invalid_frames += 1
            self._send(conn, protocol.encode_reply_error(exc.request_id, exc.code, exc.message))
            if session.invalid_frames > self.config.max_invalid_frames:
                self._out.append(Close(conn, CloseCode.POLICY_VIOLATION, "too many invalid frames"))
                self._drop_session(session, now, graceful=False)
            return self._flush()
        session.invalid_frames = 0
        if request.type not in ("login", "ping") and session.user_id is None:
            self._send(
                conn,
                protocol.encode_reply_error(
                    request.id,
                    ErrorCode.INIT_FAIL,
                    f"{request.type}: not logged in; send a login request first",
                ),
            )
            return self._flush()
        handler = self._handlers[request.type]
        # The reply must precede the events the request causes, so events produced by the
        # handler are queued after it.
        mark = len(self._out)
        try:
            data = handler(session, request, now)
        except _Refused as exc:
            del self._out[mark:]
            self._send(conn, protocol.encode_reply_error(request.id, exc.code, exc.message))
            self._out.extend(exc.keep)
            return self._flush()
        except Exception:
            # A bug must not cost the client its reply or its connection. What the handler
            # already did stays (its events describe state that did change).
            logger.exception("internal error handling %s from connection %d", request.type, conn)
            self._out.insert(
                mark,
                Send(conn, protocol.encode_reply_error(
                    request.id, ErrorCode.INTERNAL, f"{request.type}: internal server error"
                )),
            )
            return self._flush()
        if data is not None:
            self._out.insert(mark, Send(conn, protocol.encode_reply_ok(request.id, data)))
        return self._flush()

    def closed(self, conn: int, now: float) -> list[Output]:
        """The connection is gone (closed by either side)."""
        session = self._sessions.get(conn)
        if session is not None:
            self._drop_session(session, now, graceful=False)
        return self._flush()

    def profile_loaded(
        self, user_id: str, nickname: str, avatar: str, now: float
    ) -> list[Output]:
        """The stored profile of a user who logged in without giving all of it.

        Fields this session set meanwhile are kept; if the user is in a call, the others get
        ``USER_INFO_CHANGED`` when what they were shown changes.
        """
        presence = self._users.get(user_id)
        if presence is None:
            return []
        before = presence.info
        if presence.nickname is None:
            presence.nickname = nickname
        if presence.avatar is None:
            presence.avatar = avatar
        if presence.info != before:
            self._announce_info(presence)
        return self._flush()

    # ------------------------------------------------------------------ SFU results

    def sfu_room_ready(self, call_id: str, epoch: int, now: float) -> list[Output]:
        """The call's room (attempt ``epoch``) exists on its instance."""
        call = self._calls.get(call_id)
        if call is not None and call.sfu is not None and call.sfu.epoch == epoch:
            call.sfu.ready = True
        return self._flush()

    def sfu_room_failed(self, call_id: str, epoch: int, now: float) -> list[Output]:
        """Creating the call's room failed: its instance counts as down; try another.

        A call whose room never existed and that has no other instance ends at once with
        ``SFU_UNAVAILABLE``; one that had a room waits for an instance (``sfu_wait_s``).
        """
        call = self._calls.get(call_id)
        if call is None or call.sfu is None or call.sfu.epoch != epoch:
            return self._flush()
        failed = call.sfu.instance
        if failed is not None:
            self.sfu.down.add(failed)
        if not call.sfu.ready and self.sfu.pick(self._rooms(), avoid=failed) is None:
            self._sfu_unavailable(call, now)
        else:
            self._place_room(call, now)
        return self._flush()

    def sfu_instance_down(self, instance: str, now: float) -> list[Output]:
        """An SFU instance stopped answering: its calls move to another one (or wait)."""
        self.sfu.down.add(instance)
        for call in list(self._calls.values()):
            if call.sfu is not None and call.sfu.instance == instance:
                call.sfu.instance = None  # its rooms died with it: nothing to destroy
                self._place_room(call, now)
        return self._flush()

    def sfu_instance_up(self, instance: str, now: float) -> list[Output]:
        """An SFU instance answers again: calls waiting for one get their room there."""
        self.sfu.down.discard(instance)
        for call in list(self._calls.values()):
            if call.sfu is not None and call.sfu.instance is None:
                self._place_room(call, now)
        return self._flush()

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has work, or None."""
        return self._timers[0][0] if self._timers else None

    def tick(self, now: float) -> list[Output]:
        """Advance the clock: ring timeouts, reconnect grace, userSig expiry, TURN
        credential refresh."""
        due: dict[str, list[str]] = {}
        while self._timers and self._timers[0][0] <= now:
            when, seq, kind, key = heapq.heappop(self._timers)
            if kind == "ring":
                call_id, user_id = key.split("\0", 1)
                due.setdefault(call_id, []).append(user_id)
            elif kind == "grace":
                call_id, user_id = key.split("\0", 1)
                self._grace_expired(call_id, user_id, now)
            elif not self._timer_live((when, seq, kind, key)):
                self._stale_timers -= 1  # a login, sig or ice timer cancelled earlier
            elif kind == "login":
                session = self._sessions[int(key)]
                session.login_timer = 0
                self._login_expired(session, now)
            elif kind == "sig":
                session = self._sessions[int(key)]
                session.sig_timer = 0
                self._check_sig(session, now)
            elif kind == "ice":
                session = self._sessions[int(key)]
                session.ice_timer = 0
                self._refresh_ice(session, now)
            elif kind == "sfu":
                self._sfu_wait_over(key, now)
        for call_id, user_ids in due.items():
            self._ring_timeouts(call_id, user_ids, now)
        return self._flush()

    def shutdown(self, now: float) -> list[Output]:
        """Server stopping: every call in progress ends as interrupted; connections close."""
        for call in list(self._calls.values()):
            call.interrupted = True
            for member in call.members.values():
                if member.state in (RINGING, JOINED):
                    self._notice(call, member, "call_interrupted", now)
            self._finish(call, now, notify=False)
        for conn in list(self._sessions):
            self._send_error_event(
                conn, ErrorCode.SERVER_SHUTTING_DOWN, "server is shutting down; reconnect later"
            )
            self._out.append(Close(conn, CloseCode.GOING_AWAY, "server shutting down"))
        self._sessions.clear()
        self._per_ip.clear()
        self._users.clear()
        self._timers.clear()  # every call has ended and every session is gone
        self._stale_timers = 0
        return self._flush()

    # ------------------------------------------------------------------ plumbing

    def _flush(self) -> list[Output]:
        out, self._out = self._out, []
        return out

    def _send(self, conn: int, text: str) -> None:
        self._out.append(Send(conn, text))

    def _send_error_event(self, conn: int, code: int, message: str) -> None:
        self._send(conn, protocol.encode_event("ERROR", {"code": int(code), "msg": message}))

    def _take_token(self, session: Session, now: float) -> bool:
        cfg = self.config
        elapsed = max(0.0, now - session.last_refill)
        session.tokens = min(cfg.rate_burst, session.tokens + elapsed * cfg.rate_per_s)
        session.last_refill = now
        if session.tokens < 1.0:
            return False
        session.tokens -= 1.0
        return True

    def _schedule(self, when: float, kind: str, key: str) -> int:
        self._timer_seq += 1
        heapq.heappush(self._timers, (when, self._timer_seq, kind, key))
        return self._timer_seq

    def _cancel_timers(self, session: Session, login_only: bool = False) -> None:
        """Forget the session's login-deadline, userSig and TURN-refresh timers (login, logout,
        close, kick).

        The entries stay in the heap, marked stale by ``session.login_timer`` /
        ``session.sig_timer`` no longer naming them; once stale entries are more than half the
        heap it is rebuilt without them (amortised O(1) per cancel), so login/logout churn
        leaves the heap at most about twice the live timers.
        """
        if session.login_timer:
            session.login_timer = 0
            self._stale_timers += 1
        if session.sig_timer and not login_only:
            session.sig_timer = 0
            self._stale_timers += 1
        if not login_only:
            self._cancel_ice_timer(session)
        if self._stale_timers > 64 and 2 * self._stale_timers > len(self._timers):
            self._timers = [entry for entry in self._timers if self._timer_live(entry)]
            heapq.heapify(self._timers)
            self._stale_timers = 0

    def _cancel_ice_timer(self, session: Session) -> None:
        if session.ice_timer:
            session.ice_timer = 0
            self._stale_timers += 1

    def _timer_live(self, entry: tuple[float, int, str, str]) -> bool:
        """Whether a heap entry still counts (ring and grace timers always do: they are
        checked against the call when due, and last at most a ring timeout)."""
        kind = entry[2]
        if kind not in ("sig", "login", "ice"):
            return True
        session = self._sessions.get(int(entry[3]))
        if session is None:
            return False
        live = {"sig": session.sig_timer, "login": session.login_timer, "ice": session.ice_timer}
        return live[kind] == entry[1]

    def _arm_login_deadline(self, session: Session, now: float) -> None:
        timeout = self.config.login_timeout_s
        if timeout is not None:
            session.login_timer = self._schedule(now + timeout, "login", str(session.conn))

    def _login_expired(self, session: Session, now: float) -> None:
        timeout = self.config.login_timeout_s or 0.0
        self._send_error_event(
            session.conn, ErrorCode.INIT_FAIL,
            f"not logged in within {timeout:g} s of connecting; connection closed",
        )
        self._out.append(Close(session.conn, CloseCode.LOGIN_TIMEOUT, "login deadline passed"))
        self._drop_session(session, now, graceful=False)

    def _user(self, session: Session) -> Presence:
        assert session.user_id is not None
        return self._users[session.user_id]

    def _conns_for(self, call: Call, member: Member) -> list[int]:
        if member.conn is not None:
            return [member.conn]
        if member.state == JOINED:
            return []  # detached: waiting for the user to reconnect
        presence = self._users.get(member.user_id)
        return list(presence.conns) if presence else []

    def _emit(self, call: Call, member: Member, name: str, data: dict[str, Any]) -> None:
        conns = self._conns_for(call, member)
        if not conns:
            return
        payload = {"callId": call.call_id, **data}
        text = protocol.encode_event(name, payload)
        for conn in conns:
            self._send(conn, text)

    def _emit_many(
        self, call: Call, members: Iterable[Member], name: str, data: dict[str, Any]
    ) -> None:
        text = protocol.encode_event(name, {"callId": call.call_id, **data})
        for member in members:
            for conn in self._conns_for(call, member):
                self._send(conn, text)

    def _others(self, call: Call, user_id: str, states: tuple[str, ...]) -> list[Member]:
        return [m for m in call.members.values() if m.user_id != user_id and m.state in states]

    def _call_info(self, call: Call, member: Member) -> dict[str, Any]:
        return {
            "roomID": call.room_id,
            "callMediaType": call.media_type,
            "callRole": _call_role_name(member.role),
        }

    def _find_call(self, session: Session, call_id: str) -> tuple[Call, Member]:
        call = self._calls.get(call_id)
        user_id = session.user_id
        assert user_id is not None
        if call is None:
            raise _Refused(
                ErrorCode.CALL_NOT_FOUND, f"call {call_id!r} does not exist or has ended"
            )
        member = call.members.get(user_id)
        if member is None:
            raise _Refused(
                ErrorCode.PERMISSION_DENIED, f"you are not a participant of call {call_id!r}"
            )
        return call, member

    @staticmethod
    def _require_state(member: Member, action: str, *states: str) -> None:
        if member.state not in states:
            raise _Refused(
                ErrorCode.REQUEST_REFUSED,
                f'cannot {action}: your state in this call is "{member.state}"',
            )

    def _snapshot(self, call: Call) -> StoredCall:
        participants: dict[str, ParticipantOutcome] = {}
        for member in call.members.values():
            # The caller stays the caller in the record even if re-invited after leaving.
            if member.user_id == call.caller:
                role, result = CallRole.CALLER, CallResultType.OUTGOING
            elif member.ever_joined:
                role, result = CallRole.CALLED, CallResultType.INCOMING
            else:
                role, result = CallRole.CALLED, CallResultType.MISSED
            participants[member.user_id] = ParticipantOutcome(int(role), int(result))
        return StoredCall(
            call_id=call.call_id,
            sdk_app_id=call.sdk_app_id,
            caller=call.caller,
            callees=[u for u in call.members if u != call.caller],
            scene=int(call.scene),
            media_type=call.media_type,
            room_id=call.room_id,
            group_id=call.group_id,
            start_ts=call.start_ts,
            accept_ts=call.accept_ts,
            end_ts=None,
            result="",
            participants=participants,
            user_data=call.user_data,
            total_users=sum(
                1 for m in call.members.values()
                if m.user_id == call.caller or m.ever_joined or m.state == RINGING
            ),
        )

    def _save(self, call: Call) -> None:
        self._out.append(SaveCall(self._snapshot(call)))

    def _notice(
        self,
        call: Call,
        member: Member,
        event: str,
        now: float,
        record: StoredCall | None = None,
    ) -> None:
        presence = self._users.get(member.user_id)
        conn = member.conn if member.conn is not None else (
            presence.conns[0] if presence and presence.conns else None
        )
        session = self._sessions.get(conn) if conn is not None else None
        self._out.append(
            Notice(
                event=event,
                user_id=member.user_id,
                role=_call_role_name(member.role),
                call=record or self._snapshot(call),
                event_time=now,
                client_ip=session.client_ip if session else "",
                platform=session.platform if session else "",
            )
        )

    # ------------------------------------------------------------------ session requests

    def _login(self, session: Session, request: Request, now: float) -> dict[str, Any]:
        data = request.data
        if session.user_id is not None:
            raise _Refused(
                ErrorCode.REQUEST_REPEATED,
                f"this connection is already logged in as {session.user_id!r}",
            )
        if not protocol.is_compatible_version(data["protocolVersion"]):
            raise _Refused(
                ErrorCode.UNSUPPORTED_VERSION,
                f"protocol version {data['protocolVersion']} is not supported; "
                f"this server speaks {protocol.PROTOCOL_VERSION}",
            )
        if data["sdkAppId"] != self.sdk_app_id:
            raise _Refused(
                ErrorCode.USER_SIG_INVALID,
                f"sdkAppId {data['sdkAppId']} is not served here; this server serves "
                f"{self.sdk_app_id}",
            )
        user_id: str = data["userID"]
        try:
            expires_at = self._verify_sig(data["userSig"], user_id, now)
        except Exception as exc:
            code = getattr(exc, "code", None)
            if code is None:
                raise
            raise _Refused(int(code), str(getattr(exc, "message", exc))) from exc
        if expires_at <= now:
            raise _Refused(ErrorCode.USER_SIG_EXPIRED, "userSig has expired; make a new one")

        presence = self._users.setdefault(user_id, Presence(user_id))
        # A second login kicks the older connections unless the user enabled multi-device.
        if presence.conns and not (presence.multi_device or data.get("multiDevice", False)):
            for old in list(presence.conns):
                old_session = self._sessions.get(old)
                self._send(
                    old,
                    protocol.encode_event(
                        "KICKED_OUT",
                        {"userID": user_id, "reason": "logged in from another connection"},
                    ),
                )
                self._out.append(Close(old, CloseCode.KICKED, "logged in elsewhere"))
                if old_session is not None:
                    self._detach(old_session, now, kicked=True)
                    self._cancel_timers(old_session)
                    self._forget(old_session)
            # Detaching the last old connection of an idle user released the presence.
            self._users.setdefault(user_id, presence)
        self._cancel_timers(session, login_only=True)
        session.user_id = user_id
        session.sig_expires_at = expires_at
        session.platform = data.get("platform", "")
        presence.conns.append(session.conn)
        if "multiDevice" in data:
            presence.multi_device = data["multiDevice"]
        self._login_profile(presence, data.get("nickname"), data.get("avatar"))
        session.sig_timer = self._schedule(expires_at, "sig", str(session.conn))

        reply: dict[str, Any] = {
            "userID": user_id,
            "protocolVersion": protocol.PROTOCOL_VERSION,
            "serverVersion": __version__,
            "serverTime": now,
            "userSigExpiresAt": expires_at,
        }
        reply.update(self._ice_servers(session, now))
        active = self._resume(presence, session, now)
        if active is not None:
            reply["activeCall"] = active
        self._out.append(
            Send(
                session.conn,
                protocol.encode_event("SDK_READY", {"userID": user_id, "serverTime": now}),
            )
        )
        self._redeliver_invitation(presence, session)
        if active is not None:
            call = self._calls[active["callId"]]
            self._announce_sfu(call, [call.members[user_id]])
        return reply

    def _resume(self, presence: Presence, session: Session, now: float) -> dict[str, Any] | None:
        """Rebind a joined member whose connection dropped to this new login."""
        if presence.call_id is None:
            return None
        call = self._calls.get(presence.call_id)
        if call is None:
            return None
        member = call.members[presence.user_id]
        if member.state != JOINED:
            return None
        if member.conn is not None and member.conn in self._sessions:
            return None  # still bound to another live device (multi-device)
        member.conn = session.conn
        member.deadline = 0.0
        return {
            "callId": call.call_id,
            "roomID": call.room_id,
            "callMediaType": call.media_type,
            "callRole": _call_role_name(member.role),
            "userIDList": [m.user_id for m in call.members.values() if m.state == JOINED],
            "startTime": call.accept_ts or call.start_ts,
        }

    def _redeliver_invitation(self, presence: Presence, session: Session) -> None:
        if presence.call_id is None:
            return
        call = self._calls.get(presence.call_id)
        if call is None:
            return
        member = call.members[presence.user_id]
        if member.state == RINGING:
            self._send(session.conn, self._invitation_text(call, member))

    def _logout(self, session: Session, request: Request, now: float) -> dict[str, Any]:
        user_id = session.user_id
        self._detach(session, now, kicked=False, leave=True)
        self._cancel_timers(session)
        session.user_id = None
        self._arm_login_deadline(session, now)
        return {"userID": user_id}

    def _ping(self, session: Session, request: Request, now: float) -> dict[str, Any]:
        return {"serverTime": now}

    def _multi_device(self, session: Session, request: Request, now: float) -> dict[str, Any]:
        self._user(session).multi_device = request.data["enable"]
        return {"enabled": request.data["enable"]}

    def _login_profile(
        self, presence: Presence, nickname: str | None, avatar: str | None
    ) -> None:
        """Apply what a login gives of the profile; store it, read the rest from the store."""
        if nickname is not None:
            presence.nickname = nickname
        if avatar is not None:
            presence.avatar = avatar
        if nickname is not None or avatar is not None:
            self._out.append(SaveProfile(self.sdk_app_id, presence.user_id, nickname, avatar))
        if presence.nickname is None or presence.avatar is None:
            self._out.append(LoadProfile(self.sdk_app_id, presence.user_id))

    def _self_info(self, session: Session, request: Request, now: float) -> dict[str, Any]:
        presence = self._user(session)
        before = presence.info
        presence.nickname = request.data["nickname"]
        avatar = request.data.get("avatar")  # absent: the avatar stays as it is
        if avatar is not None:
            presence.avatar = avatar
        self._out.append(
            SaveProfile(self.sdk_app_id, presence.user_id, presence.nickname, avatar)
        )
        if presence.info != before:
            self._announce_info(presence)
        return presence.info

    def _announce_info(self, presence: Presence) -> None:
        """``USER_INFO_CHANGED`` to the others in the user's call, if any."""
        call = self._calls.get(presence.call_id) if presence.call_id is not None else None
        if call is not None:
            self._emit_many(
                call,
                self._others(call, presence.user_id, (RINGING, JOINED)),
                "USER_INFO_CHANGED",
                {"userID": presence.user_id, **presence.info},
            )

    def _get_user_info(self, session: Session, request: Request, now: float) -> None:
        # Users whose profile is known here are answered from memory (fresher than the store
        # while a save is on its way); the server reads the others from the store.
        assert session.user_id is not None
        known: dict[str, dict[str, str]] = {}
        for user_id in request.data["userIDList"]:
            presence = self._users.get(user_id)
            if presence is not None and presence.nickname is not None and (
                presence.avatar is not None
            ):
                known[user_id] = presence.info
        self._out.append(
            StoreRequest(
                session.conn, request.id, self.sdk_app_id, session.user_id, "user_info",
                {"userIDList": list(request.data["userIDList"]), "known": known},
            )
        )
        return None

    def _drop_session(self, session: Session, now: float, graceful: bool) -> None:
        self._detach(session, now, kicked=False, leave=graceful)
        self._cancel_timers(session)
        self._forget(session)

    def _forget(self, session: Session) -> None:
        """Remove a session and its count in the per-address cap."""
        if self._sessions.pop(session.conn, None) is None:
            return
        left = self._per_ip.get(session.client_ip, 1) - 1
        if left > 0:
            self._per_ip[session.client_ip] = left
        else:
            self._per_ip.pop(session.client_ip, None)

    def _detach(self, session: Session, now: float, kicked: bool, leave: bool = False) -> None:
        """Unbind a connection from its user; a joined call gets a reconnect grace period."""
        user_id = session.user_id
        if user_id is None:
            return
        presence = self._users.get(user_id)
        if presence is None:
            return
        if session.conn in presence.conns:
            presence.conns.remove(session.conn)
        call = self._calls.get(presence.call_id) if presence.call_id else None
        if call is not None:
            member = call.members[user_id]
            if member.conn == session.conn:
                if member.state == JOINED and leave:
                    # As hangup: the leaving connection still gets its CALLING_END.
                    self._hang_up_member(call, member, now)
                    member.conn = None
                else:
                    member.conn = None
                    if member.state == JOINED and not kicked:
                        member.deadline = now + self.config.reconnect_grace_s
                        self._schedule(member.deadline, "grace", f"{call.call_id}\0{user_id}")
        # Leaving the call may already have released the presence.
        self._release_if_idle(user_id)

    def _ice_servers(self, session: Session, now: float) -> dict[str, Any]:
        """``{"iceServers", "iceServersExpireAt"}`` for ``session``'s user (nothing without
        TURN servers), and the timer that sends fresh ones before these expire."""
        config = self.config
        if not config.turn_urls or session.user_id is None:
            return {}
        expires_at = int(now) + config.turn_ttl_s
        self._cancel_ice_timer(session)
        refresh_at = max(now + 1.0, expires_at - config.turn_ttl_s / 4)
        session.ice_timer = self._schedule(refresh_at, "ice", str(session.conn))
        return {
            "iceServers": ice_servers(
                config.turn_urls, config.turn_secret, session.user_id, expires_at
            ),
            "iceServersExpireAt": expires_at,
        }

    def _refresh_ice(self, session: Session, now: float) -> None:
        if session.user_id is None:
            return  # logged out since (logout cancels the timer; this is a guard)
        self._send(
            session.conn, protocol.encode_event("ICE_SERVERS", self._ice_servers(session, now))
        )

    def _check_sig(self, session: Session, now: float) -> None:
        conn = session.conn
        if session.user_id is None or session.sig_expires_at > now:
            return
        self._send(
            conn,
            protocol.encode_event(
                "USER_SIG_EXPIRED",
                {"userID": session.user_id, "msg": "userSig expired; log in with a new one"},
            ),
        )
        self._out.append(Close(conn, CloseCode.SIG_EXPIRED, "userSig expired"))
        self._drop_session(session, now, graceful=False)

    # ------------------------------------------------------------------ call requests

    def _invitees(self, call: Call) -> list[str]:
        return [
            m.user_id
            for m in call.members.values()
            if m.role is CallRole.CALLED and m.state in (RINGING, JOINED)
        ]

    def _invitation(self, call: Call, member: Member) -> dict[str, Any]:
        """The ``ON_CALL_RECEIVED`` data of ``member``'s invitation."""
        presence = self._users.get(call.caller)
        sponsor = presence.info if presence else {"nickname": "", "avatar": ""}
        return {
            "callId": call.call_id,
            "inviteID": call.call_id,
            "sponsor": call.caller,
            "userIDList": self._invitees(call),
            "isFromGroup": call.scene is CallScene.GROUP_CALL,
            "groupID": call.group_id,
            "userData": member.user_data,
            "inviteData": {"callType": call.media_type, "roomID": call.room_id},
            "timeout": max(0, round(member.deadline - call.start_ts)),
            "sponsorNickname": sponsor["nickname"],
            "sponsorAvatar": sponsor["avatar"],
            **self._call_info(call, member),
        }

    def _invitation_text(self, call: Call, member: Member) -> str:
        return protocol.encode_event("ON_CALL_RECEIVED", self._invitation(call, member))

    def _ring(
        self,
        call: Call,
        user_ids: list[str],
        timeout: int,
        now: float,
        user_data: str = "",
        push_info: dict[str, Any] | None = None,
    ) -> list[str]:
        """Add invitees; busy ones get LINE_BUSY. Returns the users now ringing.

        An invitee with no connection is also pushed (:class:`OfflinePush`) unless the
        inviter's ``offlinePushInfo`` disables it.
        """
        ringing: list[str] = []
        busy: list[str] = []
        for user_id in user_ids:
            # A re-invited former member keeps their place in the invite list and whether
            # they ever answered (their record outcome).
            earlier = call.members.get(user_id)
            answered = earlier.ever_joined if earlier is not None else False
            presence = self._users.get(user_id)
            if presence is not None and presence.call_id not in (None, call.call_id):
                call.members[user_id] = Member(
                    user_id, CallRole.CALLED, BUSY, ever_joined=answered
                )
                busy.append(user_id)
                continue
            member = Member(
                user_id, CallRole.CALLED, RINGING, deadline=now + timeout, ever_joined=answered,
                user_data=user_data,
            )
            call.members[user_id] = member
            presence = self._users.setdefault(user_id, Presence(user_id))
            presence.call_id = call.call_id
            self._schedule(member.deadline, "ring", f"{call.call_id}\0{user_id}")
            ringing.append(user_id)
        push = push_info or {}
        for user_id in ringing:
            member = call.members[user_id]
            invitation = self._invitation(call, member)
            text = protocol.encode_event("ON_CALL_RECEIVED", invitation)
            conns = self._conns_for(call, member)
            for conn in conns:
                self._send(conn, text)
            self._notice(call, member, "receive_call", now)
            if not conns and not push.get("isDisablePush", False):
                self._out.append(OfflinePush(
                    user_id, self._snapshot(call), invitation, dict(push), now, member.deadline
                ))
        for user_id in busy:
            self._emit_many(
                call,
                self._others(call, user_id, (RINGING, JOINED)),
                "LINE_BUSY",
                {"userID": user_id},
            )
            self._notice(call, call.members[call.caller], "call_busy", now)
        return ringing

    def _calls_request(self, session: Session, request: Request, now: float) -> dict[str, Any]:
        if self.store_unavailable is not None and self.store_unavailable():
            raise _Refused(ErrorCode.STORE_UNAVAILABLE, "calls: the record store is "
                           "unreachable; new calls are refused until it returns: retry later")
        call = self._new_call(session, request.data, now)
        try:
            self._check_new_call(call, request.data["userIDList"])
        except _Refused as exc:
            # A call that cannot start is still reported to the business backend.
            record = self._snapshot(call)
            record.end_ts = now
            mark = len(self._out)
            self._notice(call, call.members[call.caller], "call_failed", now, record)
            exc.keep = self._out[mark:]
            raise
        return self._start_call(session, call, request.data, now)

    def _new_call(self, session: Session, data: dict[str, Any], now: float) -> Call:
        """The call a ``calls`` request asks for, not started yet (only the caller in it)."""
        user_id = self._user(session).user_id
        invitees: list[str] = data["userIDList"]
        room = data.get("roomId") or {}
        room_id: int | str = room.get("intRoomId") or room.get("strRoomId") or (
            secrets.randbelow(2**31 - 2) + 1
        )
        group_id: str = data.get("groupId", "")
        scene = (
            CallScene.SINGLE_CALL
            if len(invitees) == 1 and not group_id
            else CallScene.GROUP_CALL
        )
        return Call(
            call_id=str(uuid.uuid4()),
            sdk_app_id=self.sdk_app_id,
            caller=user_id,
            media_type=data["mediaType"],
            room_id=room_id,
            group_id=group_id,
            user_data=data.get("userData", ""),
            scene=scene,
            start_ts=now,
            members={
                user_id: Member(
                    user_id, CallRole.CALLER, JOINED, conn=session.conn, ever_joined=True
                )
            },
            group_verified=self.groups.exists(group_id),
        )

    def _check_new_call(self, call: Call, invitees: list[str]) -> None:
        """Refuse a call that cannot start: the caller busy, calling itself, group rules."""
        presence = self._users[call.caller]
        if presence.call_id is not None:
            raise _Refused(
                ErrorCode.REQUEST_REFUSED,
                f"cannot call: you are already in call {presence.call_id!r}",
            )
        if call.caller in invitees:
            raise _Refused(ErrorCode.PARAM_INVALID, "calls: you cannot call yourself")
        if not call.group_verified:
            return  # no such group: the group id only labels the call
        self._require_group_members(call.group_id, [call.caller, *invitees], "call")
        running = self._group_calls.get(call.group_id)
        if running is not None:
            raise _Refused(
                ErrorCode.REQUEST_REFUSED,
                f"cannot call: group {call.group_id!r} already has call {running!r} in "
                "progress; join it with join_in_group_call",
            )

    def _require_group_members(self, group_id: str, user_ids: list[str], action: str) -> None:
        strangers = self.groups.non_members(group_id, user_ids)
        if strangers:
            raise _Refused(
                ErrorCode.PERMISSION_DENIED,
                f"cannot {action}: {', '.join(strangers)} "
                f"{'is' if len(strangers) == 1 else 'are'} not a member of group {group_id!r}",
            )

    def _start_call(
        self, session: Session, call: Call, data: dict[str, Any], now: float
    ) -> dict[str, Any]:
        invitees: list[str] = data["userIDList"]
        self._add_call(call)
        if call.group_verified:
            self._group_calls[call.group_id] = call.call_id
        self._users[call.caller].call_id = call.call_id
        mark = len(self._out)
        self._notice(call, call.members[call.caller], "start_call", now)
        timeout = data.get("timeout", self.config.default_timeout_s)
        self._ring(call, invitees, timeout, now, call.user_data, data.get("offlinePushInfo"))
        # The start_call notice describes the call with its invitees (webhook TotalNum).
        start_notice = self._out[mark]
        assert isinstance(start_notice, Notice)
        self._out[mark] = dataclasses.replace(start_notice, call=self._snapshot(call))
        self._save(call)
        if self._wants_sfu(call, invitees):
            call.sfu = SfuPool.new_room()
            self._place_room(call, now)
        self._settle(call, now)
        return {
            "callId": call.call_id,
            "roomID": call.room_id,
            "userIDList": invitees,
            "busyUserIDList": [u for u in invitees if call.members[u].state == BUSY],
        }

    def _enter(self, call: Call, member: Member, session: Session, now: float) -> None:
        """Member becomes joined on this connection: events for the call beginning."""
        first = call.accept_ts is None and member.role is not CallRole.CALLER
        member.state = JOINED
        member.ever_joined = True
        member.conn = session.conn
        member.deadline = 0.0
        if first:
            call.accept_ts = now
        presence = self._users[member.user_id]
        presence.call_id = call.call_id
        for other_conn in presence.conns:
            if other_conn != session.conn:
                self._send(
                    other_conn,
                    protocol.encode_event(
                        "ON_CALL_CANCELED",
                        {
                            "callId": call.call_id,
                            "userID": member.user_id,
                            "sponsor": call.caller,
                            "reason": "answered_elsewhere",
                            **self._call_info(call, member),
                        },
                    ),
                )
        joined_others = self._others(call, member.user_id, (JOINED,))
        enter = {"userID": member.user_id, **presence.info}
        for other in joined_others:
            if first and other.role is CallRole.CALLER:
                self._emit(call, other, "ON_CALL_BEGIN", self._call_info(call, other))
            self._emit(call, other, "USER_ENTER", enter)
        if call.sfu is not None:
            # Before any USER_ENTER: the member's client must know media goes through the SFU.
            token = call.sfu.token_for(member.user_id)
            if call.sfu.instance is not None:
                self._out.append(AllowTokens(call.sfu.instance, call.sfu.room, call.sfu.secret,
                                             add=(token,)))
            self._announce_sfu(call, [member])
        self._emit(call, member, "ON_CALL_BEGIN", self._call_info(call, member))
        for other in joined_others:
            other_presence = self._users.get(other.user_id)
            other_info = other_presence.info if other_presence else {"nickname": "", "avatar": ""}
            self._emit(call, member, "USER_ENTER", {"userID": other.user_id, **other_info})
            if other.camera is not None:
                self._emit(
                    call,
                    member,
                    "USER_VIDEO_AVAILABLE",
                    {"userID": other.user_id, "isVideoAvailable": other.camera},
                )
            if other.microphone is not None:
                self._emit(
                    call,
                    member,
                    "USER_AUDIO_AVAILABLE",
                    {"userID": other.user_id, "isAudioAvailable": other.microphone},
                )

    def _accept(self, session: Session, request: Request, now: float) -> dict[str, Any]:
        call, member = self._find_call(session, request.data["callId"])
        if member.state == JOINED:
            raise _Refused(ErrorCode.REQUEST_REPEATED, "cannot accept: you already joined")
        self._require_state(member, "accept", RINGING)
        return self._accept_member(session, call, member, now)

    def _accept_member(
        self, session: Session, call: Call, member: Member, now: float
    ) -> dict[str, Any]:
        self._emit_many(
            call,
            self._others(call, member.user_id, (RINGING, JOINED)),
            "USER_ACCEPT",
            {"userID": member.user_id},
        )
        first = call.accept_ts is None
        self._enter(call, member, session, now)
        self._notice(call, member, "accept_call", now)
        if first:
            self._notice(call, call.members[call.caller], "call_accepted", now)
        self._save(call)
        return self._join_reply(call, member)

    def _join_reply(self, call: Call, member: Member) -> dict[str, Any]:
        return {
            "callId": call.call_id,
            "roomID": call.room_id,
            "callMediaType": call.media_type,
            "userIDList": [m.user_id for m in call.members.values() if m.state == JOINED],
            "sponsor": call.caller,
            "groupID": call.group_id,
            "inviteeIDList": self._invitees(call),
            "userData": member.user_data,
        }

    def _decline(
        self, session: Session, request: Request, now: float, how: str
    ) -> dict[str, Any]:
        call, member = self._find_call(session, request.data["callId"])
        self._require_state(member, how, RINGING)
        member.state = REJECTED if how == "reject" else IGNORED
        member.deadline = 0.0
        self._users[member.user_id].call_id = None
        others = self._others(call, member.user_id, (RINGING, JOINED))
        self._emit_many(
            call, others, "REJECT" if how == "reject" else "LINE_BUSY", {"userID": member.user_id}
        )
        self._emit(
            call,
            member,
            "ON_CALL_CANCELED",
            {
                "userID": member.user_id,
                "sponsor": call.caller,
                "reason": how,
                **self._call_info(call, member),
            },
        )
        self._notice(call, member, "reject_call" if how == "reject" else "ignore_call", now)
        self._notice(
            call,
            call.members[call.caller],
            "call_rejected" if how == "reject" else "call_busy",
            now,
        )
        self._settle(call, now)
        if call.call_id in self._calls:
            self._save(call)
        self._release_if_idle(member.user_id)
        return {"callId": call.call_id}

    def _reject(self, session: Session, request: Request, now: float) -> dict[str, Any]:
        return self._decline(session, request, now, "reject")

    def _ignore(self, session: Session, request: Request, now: float) -> dict[str, Any]:
        return self._decline(session, request, now, "ignore")

    def _hangup(self, session: Session, request: Request, now: float) -> dict[str, Any]:
        call, member = self._find_call(session, request.data["callId"])
        if member.state == RINGING:
            return self._decline(session, request, now, "reject")
        self._require_state(member, "hang up", JOINED)
        self._hang_up_member(call, member, now)
        return {"callId": call.call_id}

    def _hang_up_member(self, call: Call, member: Member, now: float) -> None:
        """A joined member ends their part: the caller before any answer cancels the call."""
        if member.role is CallRole.CALLER and call.accept_ts is None:
            self._cancel(call, now, reason="cancel")
        else:
            self._leave(call, member, now, reason="hangup")

    def _invite(self, session: Session, request: Request, now: float) -> dict[str, Any]:
        call, member = self._find_call(session, request.data["callId"])
        self._require_state(member, "invite", JOINED)
        wanted: list[str] = request.data["userIDList"]
        repeated = [
            u for u in wanted if u in call.members and call.members[u].state in (RINGING, JOINED)
        ]
        if repeated:
            raise _Refused(
                ErrorCode.REQUEST_REPEATED,
                f"invite: {', '.join(repeated)} already in the call or ringing",
            )
        self._require_room(call, len(wanted), "invite")
        new = [u for u in wanted if u not in call.members]
        if len(call.members) + len(new) > protocol.MAX_CALL_MEMBERS:
            raise _Refused(
                ErrorCode.CALL_MEMBER_LIMIT,
                f"invite: a call may have at most {protocol.MAX_CALL_MEMBERS} different users "
                f"over its life and this one has had {len(call.members)}; re-invite earlier "
                "members or start a new call",
            )
        if call.group_verified:
            self._require_group_members(call.group_id, wanted, "invite")
        self._take_invite_tokens(self._user(session), len(wanted), now)
        call.scene = CallScene.GROUP_CALL
        timeout = request.data.get("timeout", self.config.default_timeout_s)
        existing = self._others(call, "", (RINGING, JOINED))
        # The inviter is the operating user of invite_user; each invitee's receive_call follows.
        self._notice(call, member, "invite_user", now)
        ringing = self._ring(
            call, wanted, timeout, now, request.data.get("userData", call.user_data),
            request.data.get("offlinePushInfo"),
        )
        self._emit_many(
            call,
            [m for m in existing if m.user_id not in ringing],
            "GROUP_CALL_INVITEE_LIST_UPDATE",
            {"userIDList": self._invitees(call)},
        )
        self._save(call)
        self._settle(call, now)
        return {
            "callId": call.call_id,
            "userIDList": ringing,
            "busyUserIDList": [u for u in wanted if u not in ringing],
        }

    def _join(self, session: Session, request: Request, now: float) -> dict[str, Any]:
        call_id = request.data["callId"]
        self._require_free_for(session, call_id, "join")
        call, member = self._find_call(session, call_id)
        return self._join_member(session, call, member, now)

    def _require_free_for(self, session: Session, call_id: str, action: str) -> None:
        presence = self._user(session)
        if presence.call_id not in (None, call_id):
            raise _Refused(
                ErrorCode.REQUEST_REFUSED,
                f"cannot {action}: you are already in call {presence.call_id!r}",
            )

    def _join_member(
        self, session: Session, call: Call, member: Member, now: float
    ) -> dict[str, Any]:
        """A member who is not joined joins (a ringing one accepts)."""
        if member.state == JOINED:
            raise _Refused(ErrorCode.REQUEST_REPEATED, "cannot join: you already joined")
        if member.state == RINGING:
            return self._accept_member(session, call, member, now)
        self._require_room(call, 1, "cannot join")
        first = call.accept_ts is None
        self._enter(call, member, session, now)
        self._notice(call, member, "join_in_group_call", now)
        if first:
            self._notice(call, call.members[call.caller], "call_accepted", now)
        self._save(call)
        return self._join_reply(call, member)

    def _take_invite_tokens(self, presence: Presence, count: int, now: float) -> None:
        cfg = self.config
        if presence.invite_tokens < 0:
            presence.invite_tokens, presence.invite_refill = cfg.invite_burst, now
        elapsed = max(0.0, now - presence.invite_refill)
        presence.invite_tokens = min(
            cfg.invite_burst, presence.invite_tokens + elapsed * cfg.invite_rate_per_s
        )
        presence.invite_refill = now
        if presence.invite_tokens < count:
            wait = (count - presence.invite_tokens) / cfg.invite_rate_per_s
            raise _Refused(
                ErrorCode.INVITE_RATE_LIMITED,
                f"invite: you invited too many users too fast (at most "
                f"{cfg.invite_burst:g} at once, then {cfg.invite_rate_per_s:g}/s); "
                f"retry in {wait:.0f} s",
            )
        presence.invite_tokens -= count

    def _require_room(self, call: Call, more: int, action: str) -> None:
        active = sum(1 for m in call.members.values() if m.state in (RINGING, JOINED))
        if active + more > protocol.MAX_PARTICIPANTS:
            raise _Refused(
                ErrorCode.CALL_FULL,
                f"{action}: a call holds at most {protocol.MAX_PARTICIPANTS} users; "
                f"{active} are in it or ringing",
            )

    def _group_call(self, session: Session, group_id: str, action: str) -> Call | None:
        """The group's call in progress, for a member of the group (else -1101)."""
        assert session.user_id is not None
        if not self.groups.is_member(group_id, session.user_id):
            raise _Refused(
                ErrorCode.PERMISSION_DENIED,
                f"{action}: you are not a member of group {group_id!r} (or it does not exist)",
            )
        call_id = self._group_calls.get(group_id)
        return self._calls.get(call_id) if call_id is not None else None

    def _get_group_call(self, session: Session, request: Request, now: float) -> dict[str, Any]:
        group_id = request.data["groupId"]
        call = self._group_call(session, group_id, "get_group_call")
        if call is None:
            return {"groupId": group_id, "call": None}
        return {
            "groupId": group_id,
            "call": {
                "callId": call.call_id,
                "roomID": call.room_id,
                "callMediaType": call.media_type,
                "sponsor": call.caller,
                "userIDList": [m.user_id for m in call.members.values() if m.state == JOINED],
                "startTime": call.start_ts,
            },
        }

    def _join_in_group_call(
        self, session: Session, request: Request, now: float
    ) -> dict[str, Any]:
        data = request.data
        group_id = data["groupId"]
        call = self._group_call(session, group_id, "join_in_group_call")
        if call is None:
            raise _Refused(
                ErrorCode.CALL_NOT_FOUND, f"group {group_id!r} has no call in progress"
            )
        room = data.get("roomId") or {}
        wanted = room.get("intRoomId") or room.get("strRoomId")
        if wanted and wanted != call.room_id:
            raise _Refused(
                ErrorCode.CALL_NOT_FOUND,
                f"group {group_id!r} has no call in room {wanted!r} (its call is in room "
                f"{call.room_id!r})",
            )
        self._require_free_for(session, call.call_id, "join_in_group_call")
        assert session.user_id is not None
        member = call.members.get(session.user_id)
        if member is None:
            # A group member who was never invited: joins as an invitee who answered.
            self._require_room(call, 1, "cannot join")
            member = Member(session.user_id, CallRole.CALLED, LEFT)
            call.members[session.user_id] = member
        return self._join_member(session, call, member, now)

    def _switch_media_type(self, session: Session, request: Request, now: float) -> dict[str, Any]:
        call, member = self._find_call(session, request.data["callId"])
        self._require_state(member, "switch media type", JOINED)
        new = request.data["mediaType"]
        old = call.media_type
        if new == old:
            raise _Refused(
                ErrorCode.REQUEST_REPEATED, f"switch media type: the call is already type {new}"
            )
        call.media_type = new
        self._emit_many(
            call,
            self._others(call, "", (RINGING, JOINED)),
            "CALL_TYPE_CHANGED",
            {"oldCallType": old, "newCallType": new, "userID": member.user_id},
        )
        self._save(call)
        return {"callId": call.call_id, "oldCallType": old, "newCallType": new}

    def _media_state(self, session: Session, request: Request, now: float) -> dict[str, Any]:
        call, member = self._find_call(session, request.data["callId"])
        self._require_state(member, "report media state", JOINED)
        others = self._others(call, member.user_id, (JOINED,))
        camera = request.data.get("camera")
        if camera is not None and camera != member.camera:
            member.camera = camera
            self._emit_many(
                call,
                others,
                "USER_VIDEO_AVAILABLE",
                {"userID": member.user_id, "isVideoAvailable": camera},
            )
        microphone = request.data.get("microphone")
        if microphone is not None and microphone != member.microphone:
            member.microphone = microphone
            self._emit_many(
                call,
                others,
                "USER_AUDIO_AVAILABLE",
                {"userID": member.user_id, "isAudioAvailable": microphone},
            )
        return {"callId": call.call_id}

    def _network_quality(self, session: Session, request: Request, now: float) -> dict[str, Any]:
        call, member = self._find_call(session, request.data["callId"])
        self._require_state(member, "report network quality", JOINED)
        self._emit_many(
            call,
            self._others(call, member.user_id, (JOINED,)),
            "ON_USER_NETWORK_QUALITY_CHANGED",
            {"networkQualityList": [{"userID": member.user_id,
                                     "quality": request.data["quality"]}]},
        )
        return {"callId": call.call_id}

    def _relay(self, session: Session, request: Request, now: float) -> dict[str, Any]:
        data = request.data
        call, member = self._find_call(session, data["callId"])
        self._require_state(member, "relay", JOINED)
        target = call.members.get(data["to"])
        if target is None or target.state != JOINED or target.user_id == member.user_id:
            raise _Refused(
                ErrorCode.PERMISSION_DENIED,
                f"relay: {data['to']!r} is not another joined participant of this call",
            )
        if target.conn is None:
            raise _Refused(
                ErrorCode.USER_OFFLINE,
                f"relay: {data['to']!r} is reconnecting; retry shortly",
            )
        self._send(
            target.conn,
            protocol.encode_relay(call.call_id, member.user_id, data["kind"], data["payload"]),
        )
        return {}

    def _query_recent_calls(self, session: Session, request: Request, now: float) -> None:
        assert session.user_id is not None
        self._out.append(
            StoreRequest(
                session.conn, request.id, self.sdk_app_id, session.user_id, "recent_calls",
                dict(request.data),
            )
        )
        return None

    def _delete_record_calls(self, session: Session, request: Request, now: float) -> None:
        assert session.user_id is not None
        self._out.append(
            StoreRequest(
                session.conn, request.id, self.sdk_app_id, session.user_id, "delete_calls",
                dict(request.data),
            )
        )
        return None

    # ------------------------------------------------------------------ transitions

    def _ring_timeouts(self, call_id: str, user_ids: list[str], now: float) -> None:
        call = self._calls.get(call_id)
        if call is None:
            return
        timed_out = []
        for user_id in user_ids:
            member = call.members.get(user_id)
            if member is None or member.state != RINGING or member.deadline > now:
                continue
            member.state = TIMEOUT
            member.deadline = 0.0
            timed_out.append(member)
        if not timed_out:
            return
        ids = [m.user_id for m in timed_out]
        self._emit_many(
            call,
            [m for m in call.members.values() if m.state in (RINGING, JOINED)],
            "NO_RESP",
            {"sponsor": call.caller, "userIDList": ids},
        )
        for member in timed_out:
            self._emit(
                call,
                member,
                "ON_CALL_CANCELED",
                {
                    "userID": member.user_id,
                    "sponsor": call.caller,
                    "reason": "timeout",
                    **self._call_info(call, member),
                },
            )
            self._users[member.user_id].call_id = None
            self._notice(call, member, "not_answer_call", now)
            self._notice(call, call.members[call.caller], "call_missed", now)
        self._settle(call, now)
        if call.call_id in self._calls:
            self._save(call)
        for member in timed_out:
            self._release_if_idle(member.user_id)

    def _grace_expired(self, call_id: str, user_id: str, now: float) -> None:
        call = self._calls.get(call_id)
        if call is None:
            return
        member = call.members.get(user_id)
        if member is None or member.state != JOINED or member.conn is not None:
            return
        if member.deadline > now:
            return
        if member.role is CallRole.CALLER and call.accept_ts is None:
            call.interrupted = True
            self._cancel(call, now, reason="interrupted")
        else:
            self._leave(call, member, now, reason="offline")

    def _cancel(self, call: Call, now: float, reason: str) -> None:
        """The caller gives up before anyone answered: every invitation is withdrawn."""
        call.canceled = reason == "cancel"
        caller = call.members[call.caller]
        for member in self._others(call, call.caller, (RINGING,)):
            member.state = CANCELED
            member.deadline = 0.0
            self._emit(
                call,
                member,
                "ON_CALL_CANCELED",
                {
                    "userID": member.user_id,
                    "sponsor": call.caller,
                    "reason": reason,
                    **self._call_info(call, member),
                },
            )
            self._notice(call, member, "call_canceled", now)
        self._notice(
            call, caller, "cancel_call" if reason == "cancel" else "call_interrupted", now
        )
        self._emit(
            call,
            caller,
            "ON_CALL_CANCELED",
            {"userID": call.caller, "sponsor": call.caller, "reason": reason,
             **self._call_info(call, caller)},
        )
        caller.state = LEFT
        self._finish(call, now, notify=False)

    def _leave(self, call: Call, member: Member, now: float, reason: str) -> None:
        """A joined member leaves; the call ends when fewer than two could still talk."""
        member.state = LEFT
        member.deadline = 0.0
        if reason == "offline":
            call.interrupted = True
        self._emit_many(
            call,
            self._others(call, member.user_id, (JOINED,)),
            "USER_LEAVE",
            {"userID": member.user_id, "reason": reason},
        )
        self._emit(call, member, "CALLING_END", self._end_data(call, member, member, now, reason))
        self._notice(call, member, "call_end" if reason != "offline" else "call_interrupted", now)
        member.conn = None
        self._users[member.user_id].call_id = None
        self._revoke_sfu(call, member.user_id)
        self._settle(call, now, ended_by=member)
        self._release_if_idle(member.user_id)

    def _end_data(
        self, call: Call, member: Member, ended_by: Member, now: float, reason: str
    ) -> dict[str, Any]:
        # Seconds since the call connected, to the millisecond.
        total = round(max(0.0, now - call.accept_ts), 3) if call.accept_ts is not None else 0
        return {
            "userID": ended_by.user_id,
            "totalTime": total,
            "callEnd": total,
            "reason": reason,
            **self._call_info(call, member),
        }

    def _settle(self, call: Call, now: float, ended_by: Member | None = None) -> None:
        """End the call if nobody can talk any more."""
        if call.call_id not in self._calls:
            return
        joined = [m for m in call.members.values() if m.state == JOINED]
        ringing = [m for m in call.members.values() if m.state == RINGING]
        if call.accept_ts is None:
            if ringing:
                return
            caller = call.members[call.caller]
            if caller.state == JOINED:
                # Every invitee answered no: the caller's attempt is over.
                self._emit(
                    call,
                    caller,
                    "ON_CALL_CANCELED",
                    {"userID": call.caller, "sponsor": call.caller,
                     "reason": _CANCEL_REASON[self._unanswered_result(call)],
                     **self._call_info(call, caller)},
                )
                caller.state = LEFT
            self._finish(call, now, notify=False)
            return
        if len(joined) >= 2 or (joined and ringing):
            return
        for member in ringing:
            member.state = CANCELED
            self._emit(
                call,
                member,
                "ON_CALL_CANCELED",
                {"userID": member.user_id, "sponsor": call.caller, "reason": "cancel",
                 **self._call_info(call, member)},
            )
            self._notice(call, member, "call_canceled", now)
        reason = "interrupted" if call.interrupted else "hangup"
        for member in joined:
            self._emit(
                call,
                member,
                "CALLING_END",
                self._end_data(call, member, ended_by or member, now, reason),
            )
            self._notice(
                call, member, "call_interrupted" if call.interrupted else "call_end", now
            )
            member.state = LEFT
        self._finish(call, now, notify=False)

    # ------------------------------------------------------------------ SFU

    def _wants_sfu(self, call: Call, invitees: list[str]) -> bool:
        return (self.sfu.configured and call.scene is CallScene.GROUP_CALL
                and 1 + len(invitees) >= self.config.sfu_min_users)

    def _rooms(self) -> list[SfuRoom]:
        return [c.sfu for c in self._calls.values() if c.sfu is not None]

    def _place_room(self, call: Call, now: float) -> None:
        """(Re)create the call's room on the least-loaded instance and tell the members."""
        room = call.sfu
        assert room is not None
        instance = self.sfu.pick([r for r in self._rooms() if r is not room])
        room.instance = instance
        room.ready = False
        if instance is None:
            logger.warning("call %s: no SFU instance up; waiting %.0f s", call.call_id,
                           self.config.sfu_wait_s)
            self._schedule(now + self.config.sfu_wait_s, "sfu", call.call_id)
            return
        room.epoch += 1
        joined = [m for m in call.members.values() if m.state == JOINED]
        tokens = tuple(room.token_for(m.user_id) for m in joined)
        self._out.append(CreateRoom(instance, call.call_id, room.epoch, room.room, room.secret,
                                    room.pin, tokens, protocol.MAX_PARTICIPANTS))
        self._announce_sfu(call, joined)

    def _announce_sfu(self, call: Call, members: Iterable[Member]) -> None:
        """``SFU_ROOM``: where each joined member publishes and subscribes (docs/protocol.md)."""
        room = call.sfu
        if room is None or room.instance is None:
            return
        for member in members:
            if member.state != JOINED:
                continue
            self._emit(call, member, "SFU_ROOM", {
                "url": room.instance, "room": room.room, "pin": room.pin,
                "token": room.token_for(member.user_id), "epoch": room.epoch,
            })

    def _revoke_sfu(self, call: Call, user_id: str) -> None:
        room = call.sfu
        if room is None:
            return
        token = room.tokens.pop(user_id, None)
        if token is not None and room.instance is not None:
            self._out.append(AllowTokens(room.instance, room.room, room.secret, remove=(token,)))

    def _sfu_wait_over(self, call_id: str, now: float) -> None:
        call = self._calls.get(call_id)
        if call is not None and call.sfu is not None and call.sfu.instance is None:
            self._sfu_unavailable(call, now)

    def _sfu_unavailable(self, call: Call, now: float) -> None:
        """No SFU can carry the call: every member gets ``SFU_UNAVAILABLE``; the call ends."""
        assert call.sfu is not None
        call.sfu.instance = None
        message = ("the call's media server (SFU) is unreachable; the call ended. Check that "
                   "the server's --sfu instances are running")
        for member in call.members.values():
            if member.state in (RINGING, JOINED):
                for conn in self._conns_for(call, member):
                    self._send(conn, protocol.encode_event("ERROR", {
                        "code": int(ErrorCode.SFU_UNAVAILABLE), "msg": message,
                        "callId": call.call_id}))
        call.interrupted = True
        if call.accept_ts is None:
            self._cancel(call, now, reason="interrupted")
            return
        for member in call.members.values():
            if member.state == RINGING:
                member.state = CANCELED
                self._emit(call, member, "ON_CALL_CANCELED", {
                    "userID": member.user_id, "sponsor": call.caller, "reason": "interrupted",
                    **self._call_info(call, member)})
            elif member.state == JOINED:
                self._emit(call, member, "CALLING_END",
                           self._end_data(call, member, member, now, "interrupted"))
                self._notice(call, member, "call_interrupted", now)
                member.state = LEFT
        self._finish(call, now, notify=False)

    def _unanswered_result(self, call: Call) -> str:
        if call.interrupted:
            return "interrupt"
        if call.canceled:
            return "cancel"
        outcomes = {m.state for m in call.members.values() if m.role is CallRole.CALLED}
        if TIMEOUT in outcomes:
            return "not_answer"
        if REJECTED in outcomes:
            return "reject"
        return "call_busy"

    def _finish(self, call: Call, now: float, notify: bool) -> None:
        """Remove an ended call and persist its final record."""
        del self._calls[call.call_id]
        call.watch(None)
        self._changed.discard(call.call_id)
        if call.call_id in self._unreported:
            self._unreported.discard(call.call_id)
        else:
            self._ended.append(call.call_id)
        if call.sfu is not None and call.sfu.instance is not None:
            self._out.append(DestroyRoom(call.sfu.instance, call.sfu.room, call.sfu.secret))
        if self._group_calls.get(call.group_id) == call.call_id:
            del self._group_calls[call.group_id]
        record = self._snapshot(call)
        record.end_ts = now
        # Invitees still ringing when the call ended do not count (shutdown leaves them so).
        record.total_users = sum(
            1 for m in call.members.values() if m.user_id == call.caller or m.ever_joined
        )
        if call.accept_ts is not None:
            record.result = "interrupt" if call.interrupted else "normal_end"
        else:
            record.result = self._unanswered_result(call)
        self._out.append(SaveCall(record))
        for user_id in call.members:
            presence = self._users.get(user_id)
            if presence is not None and presence.call_id == call.call_id:
                presence.call_id = None
            self._release_if_idle(user_id)
        # Webhook notices queued for this call carry the final record.
        for index in range(len(self._out) - 1, -1, -1):
            item = self._out[index]
            if isinstance(item, Notice) and item.call.call_id == call.call_id:
                self._out[index] = Notice(
                    item.event, item.user_id, item.role, record, item.event_time,
                    item.client_ip, item.platform,
                )

    def _release_if_idle(self, user_id: str) -> None:
        presence = self._users.get(user_id)
        if presence is not None and not presence.conns and presence.call_id is None:
            del self._users[user_id]

"""Drive :class:`signaling_server.core.CallCore` like the server does, with no sockets.

A :class:`CoreHarness` owns a core (a :class:`CallCore`, or a subclass that checks more), a
fake clock and one inbox of parsed frames per connection. Inputs go through the same entry
points the websocket layer uses (``open``, ``receive``, ``closed``, ``tick`` at every
deadline, ``shutdown``); every output is checked
(frames parse as server frames, nothing is sent to a closed connection) and filed:

* ``Send``: the parsed frame goes to the connection's inbox;
* ``Close``: the connection is marked closed and, as the server would, ``closed`` is fed back;
* ``SaveCall``: appended to :attr:`saves`; :attr:`records` keeps the last one per callId;
* ``Notice``: appended to :attr:`notices`;
* ``StoreRequest``: appended to :attr:`store_requests`;
* ``OfflinePush``: appended to :attr:`pushes`;
* ``CreateRoom`` / ``AllowTokens`` / ``DestroyRoom``: appended to :attr:`sfu`;
* ``SaveProfile`` / ``LoadProfile``: kept in :attr:`profiles` (a stand-in for the store), and a
  load is answered at once with :meth:`CallCore.profile_loaded`, as the server does later.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from callwire import messages, protocol
from signaling_server.core import (
    CallCore,
    Close,
    CoreConfig,
    LoadProfile,
    Notice,
    OfflinePush,
    Output,
    SaveCall,
    SaveProfile,
    Send,
    StoreRequest,
)
from signaling_server.groups import GroupDirectory
from signaling_server.records import StoredCall
from signaling_server.sfu import AllowTokens, CreateRoom, DestroyRoom

APP_ID = 1400000001
START = 1_700_000_000.0
DEFAULT_SIG_LIFETIME = 86_400.0


class FakeSigError(Exception):
    """What the real verifier raises: an exception with ``code`` and ``message``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Frame:
    """One frame a connection received, parsed, with the time it was sent."""

    conn: int
    at: float
    body: dict[str, Any]


Who = str | int
"""A user id (their most recent connection) or a connection number."""


class CoreHarness:
    """A :class:`CallCore` with a fake clock and per-connection inboxes."""

    def __init__(
        self,
        config: CoreConfig | None = None,
        *,
        sdk_app_id: int = APP_ID,
        groups: GroupDirectory | None = None,
        core_class: type[CallCore] = CallCore,
    ) -> None:
        self.now = START
        self.sdk_app_id = sdk_app_id
        self.sig_lifetime: dict[str, float] = {}
        """Per-user userSig lifetime in seconds (default one day)."""
        self.core = core_class(sdk_app_id, self._verify, config, groups)
        self._conn_ids = itertools.count(1)
        self._request_ids = itertools.count(1)
        self.inbox: dict[int, list[Frame]] = {}
        self.open_conns: set[int] = set()
        self.closes: dict[int, Close] = {}
        self.conn_user: dict[int, str] = {}
        self.user_conn: dict[str, int] = {}
        self.conn_owner: dict[int, str] = {}
        """Every connection's logged-in user, never forgotten (for checks after a close)."""
        self.saves: list[StoredCall] = []
        self.notices: list[Notice] = []
        self.store_requests: list[StoreRequest] = []
        self.pushes: list[OfflinePush] = []
        self.profiles: dict[str, tuple[str, str]] = {}
        """The stored (nickname, avatar) per user, as SaveProfile left it."""
        self.sfu: list[CreateRoom | AllowTokens | DestroyRoom] = []
        """The SFU room outputs, in order (a test answers them with ``core.sfu_*``)."""
        self.last_outputs: list[Output] = []
        """Every output of the most recent input (including fed-back closes)."""

    # ------------------------------------------------------------------ the verifier

    def _verify(self, user_sig: str, user_id: str, now: float) -> float:
        if user_sig == "expired":
            raise FakeSigError(70003, "userSig expired")
        if user_sig != f"valid:{user_id}":
            raise FakeSigError(70002, f"userSig does not verify for {user_id!r}")
        return now + self.sig_lifetime.get(user_id, DEFAULT_SIG_LIFETIME)

    # ------------------------------------------------------------------ outputs

    def _process(self, outputs: Iterable[Output]) -> list[Output]:
        handled: list[Output] = []
        pending = list(outputs)
        closed_now: list[int] = []
        loads: list[str] = []
        for out in pending:
            handled.append(out)
            if isinstance(out, Send):
                assert out.conn in self.open_conns, f"frame sent to closed conn {out.conn}: {out}"
                body = json.loads(out.text)
                assert isinstance(body, dict)
                frame = protocol.parse_server_frame(out.text)  # raises if malformed
                if isinstance(frame, protocol.Event):
                    assert frame.name in protocol.EVENT_NAMES, body
                    # Every event is one a client's typed parser accepts (raises if not).
                    assert not isinstance(messages.parse_event(frame), messages.UnknownEvent)
                self.inbox[out.conn].append(Frame(out.conn, self.now, body))
            elif isinstance(out, Close):
                assert out.conn in self.open_conns, f"closing a closed conn: {out}"
                self.open_conns.discard(out.conn)
                self.closes[out.conn] = out
                closed_now.append(out.conn)
                user = self.conn_user.pop(out.conn, None)
                if user is not None and self.user_conn.get(user) == out.conn:
                    del self.user_conn[user]
            elif isinstance(out, SaveCall):
                self.saves.append(out.call)
            elif isinstance(out, Notice):
                self.notices.append(out)
            elif isinstance(out, StoreRequest):
                self.store_requests.append(out)
            elif isinstance(out, OfflinePush):
                self.pushes.append(out)
            elif isinstance(out, SaveProfile):
                nickname, avatar = self.profiles.get(out.user_id, ("", ""))
                self.profiles[out.user_id] = (
                    nickname if out.nickname is None else out.nickname,
                    avatar if out.avatar is None else out.avatar,
                )
            elif isinstance(out, LoadProfile):
                loads.append(out.user_id)
            elif isinstance(out, CreateRoom | AllowTokens | DestroyRoom):
                self.sfu.append(out)
            else:  # pragma: no cover - a new output type
                raise AssertionError(f"unknown output {out!r}")
        # The websocket layer reports every close back to the core.
        for conn in closed_now:
            handled.extend(self._process(self.core.closed(conn, self.now)))
        for user in loads:
            stored = self.profiles.get(user, ("", ""))
            handled.extend(self._process(self.core.profile_loaded(user, *stored, self.now)))
        return handled

    def _feed(self, outputs: list[Output]) -> list[Output]:
        self.last_outputs = self._process(outputs)
        return self.last_outputs

    def feed(self, outputs: list[Output]) -> list[Output]:
        """Process what a direct core input returned (``h.feed(h.core.sfu_...(...))``)."""
        return self._feed(outputs)

    # ------------------------------------------------------------------ inputs

    def open(self, client_ip: str = "203.0.113.7") -> int:
        """Open a new connection and return its number."""
        conn = next(self._conn_ids)
        self.inbox[conn] = []
        self.open_conns.add(conn)
        self._feed(self.core.open(conn, self.now, client_ip))
        return conn

    def conn(self, who: Who) -> int:
        """The connection a user id names (their latest login), or ``who`` itself."""
        if isinstance(who, int):
            return who
        assert who in self.user_conn, f"{who} is not logged in"
        return self.user_conn[who]

    def send_raw(self, who: Who, raw: str | bytes) -> list[Output]:
        """Feed one raw frame; returns the outputs."""
        conn = self.conn(who)
        assert conn in self.open_conns, f"conn {conn} is closed"
        return self._feed(self.core.receive(conn, raw, self.now))

    def request_frame(
        self, who: Who, kind: str, data: dict[str, Any] | None = None, request_id: Any = None
    ) -> dict[str, Any]:
        """Send one request and return its reply frame, checking it is the only reply with
        its id and that it precedes every other frame the request sent to this connection."""
        conn = self.conn(who)
        rid = next(self._request_ids) if request_id is None else request_id
        before = len(self.inbox[conn])
        raw = json.dumps({"type": kind, "id": rid, "data": data or {}})
        self.send_raw(conn, raw)
        new = self.inbox[conn][before:]
        replies = [f for f in new if f.body["type"] == "reply"]
        assert len(replies) == 1, f"{kind}: expected exactly one reply, got {new}"
        assert new[0] is replies[0], f"{kind}: the reply must come first, got {new}"
        assert replies[0].body["id"] == rid
        self.inbox[conn].remove(replies[0])
        return replies[0].body

    def request(
        self, who: Who, kind: str, /, *, expect_error: int | None = None, **data: Any
    ) -> dict[str, Any]:
        """Send a request; return the reply ``data`` (or the ``error`` when ``expect_error``).

        Fails loudly on an error reply unless ``expect_error`` names its code.
        """
        reply = self.request_frame(who, kind, data)
        if expect_error is None:
            assert reply["ok"], f"{kind} {data} failed: {reply['error']}"
            result: dict[str, Any] = reply["data"]
            if kind == "login":
                conn = self.conn(who)
                self.conn_user[conn] = result["userID"]
                self.conn_owner[conn] = result["userID"]
                self.user_conn[result["userID"]] = conn
            elif kind == "logout":
                conn = self.conn(who)
                user = self.conn_user.pop(conn)
                if self.user_conn.get(user) == conn:
                    del self.user_conn[user]
            return result
        assert not reply["ok"], f"{kind} {data}: expected error {expect_error}, got {reply}"
        error: dict[str, Any] = reply["error"]
        assert error["code"] == expect_error, f"{kind} {data}: expected {expect_error}: {error}"
        return error

    def login(
        self,
        user: str,
        *,
        conn: int | None = None,
        drain_ready: bool = True,
        **extra: Any,
    ) -> dict[str, Any]:
        """Log ``user`` in on a new connection (or ``conn``); returns the reply data.

        Checks that ``SDK_READY`` follows the reply and, with ``drain_ready``, removes it
        from the inbox (any later frame, such as a redelivered invitation, stays).
        """
        conn = self.open() if conn is None else conn
        data = {
            "sdkAppId": self.sdk_app_id,
            "userID": user,
            "userSig": f"valid:{user}",
            "protocolVersion": protocol.PROTOCOL_VERSION,
            **extra,
        }
        before = len(self.inbox[conn])
        reply = self.request(conn, "login", **data)
        new = self.inbox[conn][before:]
        assert new and new[0].body.get("event") == "SDK_READY", new
        assert new[0].body["data"] == {"userID": user, "serverTime": self.now}
        if drain_ready:
            self.inbox[conn].remove(new[0])
        return reply

    def disconnect(self, who: Who) -> list[Output]:
        """The client's websocket closes."""
        conn = self.conn(who)
        assert conn in self.open_conns
        self.open_conns.discard(conn)
        user = self.conn_user.pop(conn, None)
        if user is not None and self.user_conn.get(user) == conn:
            del self.user_conn[user]
        return self._feed(self.core.closed(conn, self.now))

    def advance(self, seconds: float) -> list[Output]:
        """Move the clock, calling ``tick`` at every deadline passed, as the server does."""
        target = self.now + seconds
        outputs: list[Output] = []
        while True:
            deadline = self.core.next_deadline()
            if deadline is None or deadline > target:
                break
            self.now = max(self.now, deadline)
            outputs += self._feed(self.core.tick(self.now))
        self.now = target
        outputs += self._feed(self.core.tick(self.now))
        self.last_outputs = outputs
        return outputs

    def shutdown(self) -> list[Output]:
        """The server stops."""
        return self._feed(self.core.shutdown(self.now))

    # ------------------------------------------------------------------ reading

    def frames(self, who: Who) -> list[dict[str, Any]]:
        """Drain and return every frame a connection received."""
        conn = self.conn(who)
        frames, self.inbox[conn] = self.inbox[conn], []
        return [f.body for f in frames]

    def events(self, who: Who) -> list[tuple[str, dict[str, Any]]]:
        """Drain a connection's inbox as ``(event name, data)``; relays are
        ``("relay", data)`` and stray replies ``("reply", frame)``."""
        result: list[tuple[str, dict[str, Any]]] = []
        for body in self.frames(who):
            if body["type"] == "event":
                result.append((body["event"], body["data"]))
            elif body["type"] == "relay":
                result.append(("relay", body["data"]))
            else:
                result.append(("reply", body))
        return result

    def names(self, who: Who) -> list[str]:
        """Drain a connection's inbox and return only the event names, in order."""
        return [name for name, _ in self.events(who)]

    @property
    def records(self) -> dict[str, StoredCall]:
        """The last SaveCall per callId."""
        return {call.call_id: call for call in self.saves}

    def notice_names(self, user: str | None = None, call_id: str | None = None) -> list[str]:
        """Webhook notice event names, in order, optionally for one user and/or call."""
        return [
            n.event
            for n in self.notices
            if (user is None or n.user_id == user)
            and (call_id is None or n.call.call_id == call_id)
        ]

    def clear_notices(self) -> None:
        """Forget the notices seen so far."""
        self.notices.clear()

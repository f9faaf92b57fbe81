"""The client's call core paired with the server's, in memory, under one fake clock.

A :class:`PairedWorld` holds the server's :class:`~signaling_server.core.CallCore` (through
:class:`~tests.helpers.core.CoreHarness`) and one :class:`PairedClient` per user, each a
client :class:`~callclient.callstate.CallState` fed exactly what the server sends that user, in
order, parsed by the same code the engine uses (:func:`callwire.protocol.parse_server_frame`,
:func:`callwire.messages.parse_event`). Client operations follow the engine: check with the
core, send the request, hand the reply to the core before the frames that follow it.

No sockets, no media: a whole call flow runs in milliseconds, and the effects each client's
core asked for are kept in order for the test to read.
"""

from __future__ import annotations

import json
from typing import Any

from callclient.callstate import CallState, Effect, Notify
from callclient.observer import CallEvent
from callclient.types import CallMediaType
from callwire import messages, protocol
from callwire.protocol import Event, Relay
from tests.helpers.core import CoreHarness

__all__ = ["PERIODIC", "PairedClient", "PairedWorld"]

PERIODIC = frozenset({"on_user_voice_volume_changed", "on_user_network_quality_changed"})


class PairedClient:
    """One user's client call core, logged in to the world's server core."""

    def __init__(self, world: PairedWorld, user_id: str) -> None:
        self.world = world
        self.user_id = user_id
        self.state = CallState()
        self.effects: list[Effect] = []
        """Every effect the core returned, in order."""
        self.conn = 0

    # ------------------------------------------------------------------ reading

    def callbacks(self, start: int = 0) -> list[CallEvent]:
        """The observer callbacks among the effects from index ``start``, in order."""
        return [e.notification.as_event() for e in self.effects[start:]
                if isinstance(e, Notify) and e.notification.callback not in PERIODIC]

    def names(self, start: int = 0) -> list[str]:
        """The callback names from effect index ``start``."""
        return [event.name for event in self.callbacks(start)]

    def mark(self) -> int:
        """The index the next effect will have."""
        return len(self.effects)

    # ------------------------------------------------------------------ session

    def login(self, **extra: Any) -> None:
        """Log in on a new connection, as the engine does (``extra``: nickname, avatar...)."""
        reply = self.world.harness.login(self.user_id, drain_ready=False, **extra)
        self.conn = self.world.harness.conn(self.user_id)
        self.state.logged_in(reply["userID"])
        self.world.pump()

    def reconnect(self) -> None:
        """Log in again on a new connection (the signaling client's reconnect)."""
        reply = self.world.harness.login(self.user_id, drain_ready=False)
        self.conn = self.world.harness.conn(self.user_id)
        active = reply.get("activeCall")
        self.effects += self.state.reconnected(
            active.get("callId") if isinstance(active, dict) else None, self.world.harness.now
        )
        self.world.pump()

    # ------------------------------------------------------------------ requests

    def request(self, kind: str, **data: Any) -> dict[str, Any]:
        """Send one request; the reply data (an error reply fails the test)."""
        reply = self.world.harness.request(self.conn, kind, **data)
        return reply

    def calls(self, user_ids: list[str], media: CallMediaType = CallMediaType.VIDEO,
              **extra: Any) -> str:
        """``CallEngine.calls``: check, request, the reply, then what follows."""
        self.state.check_new_call()
        reply = self.request("calls", userIDList=user_ids, mediaType=int(media), **extra)
        created = messages.parse_call_created_reply(reply)
        self.state.call_created(created, media, user_ids, extra.get("groupId", ""))
        self.world.pump()
        return created.call_id

    def answer(self, action: str) -> None:
        """``accept`` / ``reject`` / ``ignore``."""
        call = self.state.check_answer(action)
        self.request(action, callId=call.call_id)
        self.world.pump()

    def hangup(self) -> None:
        """``CallEngine.hangup``."""
        call = self.state.check_hangup()
        self.request("hangup", callId=call.call_id)
        self.world.pump()

    def invite(self, user_ids: list[str], **extra: Any) -> list[str]:
        """``CallEngine.invite_user`` (``extra``: userData, offlinePushInfo...)."""
        call = self.state.check_invite()
        reply = self.request("invite", callId=call.call_id, userIDList=user_ids, **extra)
        invited = self.state.invited(messages.parse_invited_reply(reply))
        self.world.pump()
        return invited

    def join(self, call_id: str) -> None:
        """``CallEngine.join``."""
        self.state.begin_join(call_id)
        reply = self.request("join", callId=call_id)
        self.state.joined(messages.parse_joined_reply(reply))
        self.world.pump()

    def join_in_group_call(self, group_id: str, media: CallMediaType = CallMediaType.VIDEO) -> str:
        """``CallEngine.join_in_group_call``: the reply makes the call before what follows."""
        self.state.check_group_join()
        reply = self.request("join_in_group_call", groupId=group_id, mediaType=int(media))
        call = self.state.group_call_joined(messages.parse_joined_reply(reply))
        self.world.pump()
        return call.call_id

    def set_self_info(self, nickname: str, **avatar: str) -> None:
        """``CallEngine.set_self_info``."""
        reply = self.request("self_info", nickname=nickname, **avatar)
        self.effects += self.state.self_info_set(reply["nickname"], reply["avatar"])
        self.world.pump()

    def logout(self) -> None:
        """``CallEngine.logout``: the call ends here first, then the request goes out."""
        self.effects += self.state.logged_out(self.world.harness.now)
        self.request("logout")
        self.world.harness.inbox[self.conn].clear()  # what follows the logout is not read
        self.world.pump()

    def switch_media_type(self, media: CallMediaType) -> None:
        """``CallEngine.switch_call_media_type``."""
        call, checked = self.state.check_switch_media_type(media)
        self.request("switch_media_type", callId=call.call_id, mediaType=int(checked))
        self.world.pump()

    def media_state(self, **state: bool) -> None:
        """The engine's ``media_state`` report."""
        call = self.state.call
        assert call is not None
        self.request("media_state", callId=call.call_id, **state)
        self.world.pump()

    # ------------------------------------------------------------------ frames

    def _receive(self, raw: str) -> None:
        frame = protocol.parse_server_frame(raw)
        if isinstance(frame, Event):
            event = messages.parse_event(frame)
            self.effects += self.state.receive(event, self.world.harness.now)
        elif isinstance(frame, Relay):
            self.effects += self.state.relay(frame)
        else:
            raise AssertionError(f"{self.user_id}: a reply nobody waits for: {frame}")


class PairedWorld:
    """A server core and the clients logged in to it, sharing one fake clock."""

    def __init__(self, harness: CoreHarness | None = None) -> None:
        self.harness = harness or CoreHarness()
        self.clients: dict[str, PairedClient] = {}

    def client(self, user_id: str, *, login: bool = True) -> PairedClient:
        """A new client (logged in unless ``login=False``)."""
        client = PairedClient(self, user_id)
        self.clients[user_id] = client
        if login:
            client.login()
        return client

    def pump(self) -> None:
        """Deliver every frame waiting for a client, in the order the server sent them."""
        delivered = True
        while delivered:
            delivered = False
            for client in self.clients.values():
                inbox = self.harness.inbox.get(client.conn, [])
                while inbox:
                    frame = inbox.pop(0)
                    client._receive(json.dumps(frame.body))
                    delivered = True

    def advance(self, seconds: float) -> None:
        """Move the clock (timeouts, grace periods fire) and deliver what follows."""
        self.harness.advance(seconds)
        self.pump()

    def drop_connection(self, user_id: str) -> None:
        """The client's websocket dies (the client keeps its state, as the engine does)."""
        client = self.clients[user_id]
        self.harness.disconnect(client.conn)
        self.pump()

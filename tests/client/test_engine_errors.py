"""Refused CallEngine operations raise the documented exception class with its error code."""

from __future__ import annotations

import socket

import pytest

from callclient.engine import CallEngine
from callclient.errors import (
    ConnectionClosedError,
    ErrorCode,
    InvalidParameterError,
    NotLoggedInError,
    RequestRefusedError,
    RequestRepeatedError,
    UserSigError,
    error_for_code,
)
from callclient.media.deviceset import DeviceSet
from callclient.types import CallMediaType
from callwire.protocol import Event
from callwire.usersig import generate_user_sig
from tests.helpers.engine import MakeParty
from tests.helpers.servers import APP, sig


async def test_call_before_login(make_party: MakeParty) -> None:
    """Calling before login raises NotLoggedInError (-1201)."""
    alice = await make_party("alice", login=False)
    with pytest.raises(NotLoggedInError) as info:
        await alice.engine.call("bob", CallMediaType.VIDEO)
    assert info.value.code == -1201
    assert "not logged in" in info.value.message


async def test_accept_without_a_call(make_party: MakeParty) -> None:
    """accept with nothing ringing raises RequestRefusedError (-1203) naming the state."""
    bob = await make_party("bob")
    with pytest.raises(RequestRefusedError) as info:
        await bob.engine.accept()
    assert info.value.code == -1203
    assert '"none"' in info.value.message


async def test_bad_media_type(make_party: MakeParty) -> None:
    """A media type that is not audio or video raises InvalidParameterError (-1202)."""
    alice = await make_party("alice")
    await make_party("bob")
    for bad in (7, CallMediaType.NONE):
        with pytest.raises(InvalidParameterError) as info:
            await alice.engine.call("bob", bad)  # type: ignore[arg-type]
        assert info.value.code == -1202
        assert "media type" in info.value.message
    assert alice.engine.current_call is None


async def test_call_while_in_a_call(make_party: MakeParty) -> None:
    """A second call while one rings raises RequestRefusedError naming the call's state."""
    alice = await make_party("alice")
    bob = await make_party("bob")
    await make_party("carol")
    call_id = await alice.engine.call("bob", CallMediaType.AUDIO)
    await bob.rec.wait_for("on_call_received")
    with pytest.raises(RequestRefusedError) as info:
        await alice.engine.call("carol", CallMediaType.AUDIO)
    assert info.value.code == ErrorCode.REQUEST_REFUSED
    assert '"waiting"' in info.value.message and call_id in info.value.message
    # The invitee cannot place a call either while its phone rings.
    with pytest.raises(RequestRefusedError):
        await bob.engine.call("carol", CallMediaType.AUDIO)


async def test_switch_to_the_same_media_type(make_party: MakeParty) -> None:
    """Switching a connected audio call to audio raises RequestRepeatedError (-1204)."""
    alice, bob = await make_party("alice"), await make_party("bob")
    await alice.engine.call("bob", CallMediaType.AUDIO)
    await bob.rec.wait_for("on_call_received")
    await bob.engine.accept()
    await alice.rec.wait_for("on_call_begin")
    with pytest.raises(RequestRepeatedError) as info:
        await alice.engine.switch_call_media_type(CallMediaType.AUDIO)
    assert info.value.code == ErrorCode.REQUEST_REPEATED


async def test_login_twice(make_party: MakeParty) -> None:
    """A second login on a logged-in engine raises RequestRepeatedError (-1204)."""
    alice = await make_party("alice")
    with pytest.raises(RequestRepeatedError) as info:
        await alice.login()
    assert info.value.code == -1204
    assert alice.engine.logged_in and alice.engine.user_id == "alice"


async def test_wrong_user_sig(make_party: MakeParty) -> None:
    """A userSig made with another key, or for another user, raises UserSigError (70002)."""
    alice = await make_party("alice", login=False)
    for bad in (generate_user_sig(APP, "some-other-secret-key", "alice"), sig("mallory")):
        with pytest.raises(UserSigError) as info:
            await alice.engine.login(APP, "alice", bad)
        assert info.value.code == 70002
        assert not alice.engine.logged_in
    # The refused logins left the engine usable.
    await alice.login()
    assert alice.engine.logged_in


async def test_unreachable_server() -> None:
    """Logging in to a port nobody listens on raises ConnectionClosedError naming the URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"ws://127.0.0.1:{port}"
    async with CallEngine(url, devices=DeviceSet.virtual("alice")) as engine:
        with pytest.raises(ConnectionClosedError) as info:
            await engine.login(APP, "alice", sig("alice"))
        assert "cannot reach the signaling server" in info.value.message
        assert url in info.value.message
        assert not engine.logged_in


async def test_operations_after_close(make_party: MakeParty) -> None:
    """A closed engine refuses to log in or call, with RequestRefusedError."""
    alice = await make_party("alice")
    await alice.engine.close()
    assert not alice.engine.logged_in
    with pytest.raises(RequestRefusedError, match="closed"):
        await alice.login()
    with pytest.raises(RequestRefusedError, match="closed"):
        await alice.engine.call("bob", CallMediaType.AUDIO)


async def test_malformed_server_event_is_logged_not_raised(
    make_party: MakeParty, caplog: pytest.LogCaptureFixture
) -> None:
    """A server event missing a field the engine needs is a logged protocol error: no
    exception, no callback, and the call goes on."""
    alice, bob = await make_party("alice"), await make_party("bob")
    await alice.engine.call("bob", CallMediaType.VIDEO)
    await bob.rec.wait_for("on_call_received")
    call = bob.engine.current_call
    assert call is not None
    mark = bob.rec.mark()
    with caplog.at_level("WARNING", logger="callclient.engine"):
        bob.engine._on_event(Event("USER_ENTER", {"callId": call.call_id}))  # no userID
        bob.engine._on_event(Event("ON_CALL_BEGIN", {"callId": call.call_id,
                                                     "callMediaType": "video"}))
    assert bob.rec.names(mark) == []
    assert "malformed USER_ENTER event" in caplog.text and "'userID'" in caplog.text
    assert "'callMediaType'" in caplog.text
    await bob.engine.accept()
    await alice.rec.wait_for("on_user_join", "bob")


@pytest.mark.parametrize(
    "code",
    [ErrorCode.CALL_FULL, ErrorCode.CALL_MEMBER_LIMIT, ErrorCode.INVITE_RATE_LIMITED,
     ErrorCode.SERVER_BUSY],
)
def test_server_refusals_are_request_refused_errors_with_their_code(code: ErrorCode) -> None:
    """A refusal the application can react to (retry later, fewer invitees) is typed as one,
    whatever its reason; the code says which."""
    error = error_for_code(int(code), "refused")
    assert isinstance(error, RequestRefusedError)
    assert error.code == int(code)

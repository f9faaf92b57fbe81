"""Offline call push through CallEngines: a caller's OfflinePushInfo reaches the push endpoint
(a real HTTP receiver) for an invitee who is not connected, who then logs in and answers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from callclient.types import (
    CallIOSOfflinePushType,
    CallMediaType,
    CallParams,
    OfflinePushInfo,
)
from signaling_server.server import SignalingServer
from tests.helpers.engine import MakeParty
from tests.helpers.servers import APP, sig
from tests.helpers.webhook_receiver import Receiver


@pytest.fixture
async def receiver(server: SignalingServer) -> AsyncIterator[Receiver]:
    """A push endpoint configured on the test server."""
    r = Receiver()
    await r.start()
    assert server.pushes is not None
    await server.pushes.create_config(r.url, [])
    yield r
    await r.stop()


async def test_offline_invitee_is_pushed_then_answers(
    make_party: MakeParty, server: SignalingServer, receiver: Receiver
) -> None:
    """alice calls bob (offline) with every push field set: the endpoint gets them under the
    reference's names with the invitation and bob's id; bob logs in while it rings, gets
    on_call_received, accepts, and both connect. A call with the push disabled is not
    pushed."""
    alice = await make_party("alice", login=False)
    await alice.engine.login(APP, "alice", sig("alice"), nickname="Alice")
    bob = await make_party("bob", login=False)
    push = OfflinePushInfo(title="Alice", desc="is calling you", ignore_ios_badge=True,
                           ios_sound="call.caf", android_sound="call",
                           android_oppo_channel_id="calls", android_vivo_classification=0,
                           android_xiaomi_channel_id="mi-calls", android_fcm_channel_id="fcm",
                           android_huawei_category="VOIP",
                           ios_push_type=CallIOSOfflinePushType.VOIP)
    call_id = await alice.engine.call("bob", CallMediaType.VIDEO,
                                      CallParams(user_data="meeting 7", offline_push_info=push))
    (got,) = await receiver.wait_for(1)
    assert got.command == "offline_push"
    assert got.body["UserId"] == "bob" and got.body["CallId"] == call_id
    assert got.body["OfflinePushInfo"] == {
        "title": "Alice", "desc": "is calling you", "ignoreIOSBadge": True,
        "iOSSound": "call.caf", "androidSound": "call", "androidOPPOChannelID": "calls",
        "androidVIVOClassification": 0, "androidXiaoMiChannelID": "mi-calls",
        "androidFCMChannelID": "fcm", "androidHuaWeiCategory": "VOIP", "isDisablePush": False,
        "iOSPushType": 1,
    }
    invitation = got.body["Invitation"]
    assert (invitation["sponsor"], invitation["sponsorNickname"], invitation["userData"]) == (
        "alice", "Alice", "meeting 7")

    await bob.login()
    received = await bob.rec.wait_for("on_call_received")
    assert received.args == ("alice", ["bob"], "", CallMediaType.VIDEO)
    assert bob.engine.current_call is not None
    assert bob.engine.current_call.user_data == "meeting 7"
    await bob.engine.accept()
    await alice.rec.wait_for("on_call_begin")
    await bob.rec.wait_for("on_call_begin")
    await alice.engine.hangup()
    await bob.rec.wait_for("on_call_end")

    carol = await make_party("carol")
    await carol.engine.call("dave", CallMediaType.AUDIO,
                            CallParams(offline_push_info=OfflinePushInfo(is_disable_push=True)))
    assert server.pushes is not None
    await server.pushes.flush()
    assert len(receiver.received) == 1

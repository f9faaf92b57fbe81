"""The client call core's rules on plain values: which request is allowed when, what each
event does, and the effects of losing the session. No server, no sockets."""

from __future__ import annotations

import pytest

from callclient import observer as note
from callclient.callstate import (
    ApplyRelay,
    CallState,
    CloseCameraForAudio,
    ConnectPeer,
    EndCallMedia,
    EndSession,
    Notify,
    RemoteAudioMuted,
    RemoteUplinkReported,
    StartCallMedia,
    UserInfoCache,
    calls_request,
    invite_request,
)
from callclient.errors import (
    ErrorCode,
    InvalidParameterError,
    NotLoggedInError,
    RequestRefusedError,
    RequestRepeatedError,
)
from callclient.types import (
    AudioDeviceInfo,
    CallIOSOfflinePushType,
    CallMediaType,
    CallParams,
    CallRole,
    CallScene,
    CallStatus,
    CameraInfo,
    NetworkQuality,
    OfflinePushInfo,
    RoomId,
    UserInfo,
)
from callwire import messages as ev
from callwire import protocol
from callwire.protocol import Relay

NOW = 1_700_000_000.0


def logged_in(user: str = "bob") -> CallState:
    state = CallState()
    state.logged_in(user)
    return state


def invitation(call_id: str = "c1", sponsor: str = "alice", users: tuple[str, ...] = ("bob",),
               group: str = "") -> ev.OnCallReceived:
    return ev.OnCallReceived(call_id, sponsor, list(users), group, CallMediaType.VIDEO, 42, "ud",
                             "", "")


def ringing(user: str = "bob") -> CallState:
    state = logged_in(user)
    state.receive(invitation(), NOW)
    return state


def connected(user: str = "bob") -> CallState:
    state = ringing(user)
    state.receive(ev.OnCallBegin("c1", 42, CallMediaType.VIDEO), NOW)
    state.receive(ev.UserEnter("c1", "alice", "", ""), NOW)
    return state


def notes(effects: list[object]) -> list[note.Notification]:
    return [e.notification for e in effects if isinstance(e, Notify)]


def test_requests_need_a_login() -> None:
    """Before login every call request is ERROR_INIT_FAIL naming the action."""
    state = CallState()
    with pytest.raises(NotLoggedInError, match="cannot call: not logged in") as caught:
        state.check_new_call()
    assert caught.value.code == ErrorCode.INIT_FAIL
    with pytest.raises(NotLoggedInError, match="accept"):
        state.check_answer("accept")


def test_answers_only_while_ringing_as_invitee() -> None:
    """accept/reject/ignore: refused with no call, as the caller, or once connected."""
    state = logged_in()
    with pytest.raises(RequestRefusedError, match='cannot accept: call status is "none"'):
        state.check_answer("accept")
    state = ringing()
    assert state.check_answer("reject").call_id == "c1"
    state.receive(ev.OnCallBegin("c1", 42, CallMediaType.VIDEO), NOW)
    with pytest.raises(RequestRefusedError, match='call status is "accept"'):
        state.check_answer("accept")
    caller = logged_in("alice")
    caller.call_created(ev.CallCreatedReply("c2", 7, []), CallMediaType.AUDIO, ["bob"])
    with pytest.raises(RequestRefusedError, match="you are the caller of this call"):
        caller.check_answer("accept")


def test_no_second_call_and_media_type_checks() -> None:
    """A call while in one is refused naming it; media type none or 7 is invalid."""
    state = ringing()
    with pytest.raises(RequestRefusedError, match='already in call c1 \\(status "waiting"\\)'):
        state.check_new_call()
    state = connected()
    with pytest.raises(RequestRepeatedError, match="already video"):
        state.check_switch_media_type(CallMediaType.VIDEO)
    with pytest.raises(InvalidParameterError, match="not none"):
        state.check_switch_media_type(CallMediaType.NONE)
    with pytest.raises(InvalidParameterError, match="1 \\(audio\\) or 2 \\(video\\)"):
        state.check_switch_media_type(7)
    call, media = state.check_switch_media_type(CallMediaType.AUDIO)
    assert call.call_id == "c1" and media is CallMediaType.AUDIO


def test_invite_rules() -> None:
    """A connected member may invite; while ringing only the caller may."""
    with pytest.raises(RequestRefusedError, match='cannot invite: call status is "waiting"'):
        ringing().check_invite()
    assert connected().check_invite().call_id == "c1"
    caller = logged_in("alice")
    caller.call_created(ev.CallCreatedReply("c2", 7, []), CallMediaType.AUDIO, ["bob"])
    assert caller.check_invite().call_id == "c2"
    assert caller.invited(ev.InvitedReply(["carol", "bob"], [])) == ["carol", "bob"]
    assert caller.call is not None and caller.call.callees == ["bob", "carol"]
    assert caller.call.scene is CallScene.GROUP_CALL


def test_join_rules() -> None:
    """join: refused in another call, repeated in this one; a refused join forgets the call."""
    state = ringing()
    with pytest.raises(RequestRefusedError, match="already in call c1"):
        state.begin_join("other")
    state = connected()
    with pytest.raises(RequestRepeatedError, match="already in this call"):
        state.begin_join("c1")
    state = logged_in()
    state.begin_join("c9")
    assert state.call is not None and state.call.status is CallStatus.WAITING
    state.join_failed("c9")
    assert state.call is None
    state.begin_join("c9")
    state.joined(ev.JoinedReply("c9", "room", CallMediaType.VIDEO, ["alice", "bob"]))
    assert state.call is not None and state.call.media_type is CallMediaType.VIDEO
    assert state.call.room_id.str_room_id == "room"


def test_events_about_another_call_change_nothing() -> None:
    """Events and relays for a call that is not the current one are ignored."""
    state = connected()
    before = state.call
    assert state.receive(ev.CallingEnd("old", "alice", 3.0, "hangup"), NOW) == []
    assert state.receive(ev.UserLeave("old", "alice", "hangup"), NOW) == []
    assert state.relay(Relay("old", "alice", "offer", {"sdp": "x"})) == []
    assert state.call is before and state.call is not None
    assert state.call.remote_users == ["alice"]


def test_an_invitation_while_in_a_call_is_ignored() -> None:
    """A second invitation does not replace the current call (the server says busy)."""
    state = connected()
    assert state.receive(invitation("c2", "carol"), NOW) == []
    assert state.call is not None and state.call.call_id == "c1"


def test_relay_connects_the_sender_first() -> None:
    """A relay of the current call: connect its sender, then apply it."""
    state = connected()
    relay = Relay("c1", "carol", "offer", {"sdp": "v=0"})
    assert state.relay(relay) == [ConnectPeer("carol"), ApplyRelay(relay)]


def test_own_user_enter_is_not_a_join() -> None:
    """USER_ENTER about oneself fires nothing; a repeated one (a duplicate trigger) neither
    connects the user again nor reports a second join."""
    state = connected()
    assert state.receive(ev.UserEnter("c1", "bob", "", ""), NOW) == []
    assert state.receive(ev.UserEnter("c1", "alice", "", ""), NOW) == []
    assert state.call is not None and state.call.remote_users == ["alice"]


def test_user_enter_connects_each_member_once_and_again_after_a_leave() -> None:
    """The accept reply lists oneself too; only USER_ENTER of another member connects it,
    once; after USER_LEAVE a new USER_ENTER connects the member again."""
    state = ringing()
    state.joined(ev.JoinedReply("c1", 42, CallMediaType.VIDEO, ["alice", "bob"]))
    assert state.receive(ev.OnCallBegin("c1", 42, CallMediaType.VIDEO), NOW)[-1] == (
        StartCallMedia())
    first = state.receive(ev.UserEnter("c1", "alice", "", ""), NOW)
    assert first == [ConnectPeer("alice"), Notify(note.UserJoin("alice"))]
    assert state.receive(ev.UserEnter("c1", "alice", "", ""), NOW) == []
    state.receive(ev.UserLeave("c1", "alice", "hangup"), NOW)
    assert state.receive(ev.UserEnter("c1", "alice", "", ""), NOW) == first


def test_media_reports_are_passed_on_when_they_change() -> None:
    """USER_VIDEO/AUDIO_AVAILABLE: observers hear each change once; the same value again
    (or media arriving after a report) adds nothing."""
    state = connected()
    video_on = state.receive(ev.UserVideoAvailable("c1", "alice", True), NOW)
    assert video_on == [Notify(note.UserVideoAvailable("alice", True))]
    assert state.receive(ev.UserVideoAvailable("c1", "alice", True), NOW) == []
    assert state.media_flowing("c1", "alice", "video") == []
    assert state.receive(ev.UserVideoAvailable("c1", "alice", False), NOW) == [
        Notify(note.UserVideoAvailable("alice", False))]
    assert state.media_flowing("c1", "alice", "video") == []  # the report wins


def test_media_of_a_user_who_reports_nothing_counts_as_available() -> None:
    """No media_state from alice: her flowing video and audio make them available, once;
    a later report of her own takes over; after she leaves and comes back, again."""
    state = connected()
    assert state.media_flowing("c1", "alice", "video") == [
        Notify(note.UserVideoAvailable("alice", True))]
    assert state.media_flowing("c1", "alice", "video") == []
    assert state.media_flowing("c1", "alice", "audio") == [
        Notify(note.UserAudioAvailable("alice", True))]
    assert state.receive(ev.UserAudioAvailable("c1", "alice", True), NOW) == []
    assert state.receive(ev.UserAudioAvailable("c1", "alice", False), NOW) == [
        RemoteAudioMuted("alice"), Notify(note.UserAudioAvailable("alice", False))]
    state.receive(ev.UserLeave("c1", "alice", "hangup"), NOW)
    state.receive(ev.UserEnter("c1", "alice", "", ""), NOW)
    assert state.media_flowing("c1", "alice", "audio") == [
        Notify(note.UserAudioAvailable("alice", True))]


def test_media_of_another_call_or_an_absent_user_changes_nothing() -> None:
    state = connected()
    assert state.media_flowing("c0", "alice", "video") == []
    assert state.media_flowing("c1", "carol", "video") == []
    state.receive(ev.CallingEnd("c1", "alice", 3.0, "hangup"), NOW)
    assert state.media_flowing("c1", "alice", "video") == []


def test_audio_muted_and_quality_reports_reach_the_monitor() -> None:
    """Audio off mutes the user's volume before the callback; quality goes to the monitor."""
    state = connected()
    effects = state.receive(ev.UserAudioAvailable("c1", "alice", False), NOW)
    assert effects == [RemoteAudioMuted("alice"),
                       Notify(note.UserAudioAvailable("alice", False))]
    assert state.receive(ev.OnUserNetworkQualityChanged(
        "c1", [("alice", NetworkQuality.POOR)]), NOW) == [
        RemoteUplinkReported("alice", NetworkQuality.POOR)]


def test_switch_to_audio_closes_the_camera_before_the_callback() -> None:
    """CALL_TYPE_CHANGED to audio: the camera is closed, then the callback fires."""
    state = connected()
    effects = state.receive(
        ev.CallTypeChanged("c1", CallMediaType.VIDEO, CallMediaType.AUDIO, "alice"), NOW)
    assert effects == [CloseCameraForAudio(), Notify(
        note.CallMediaTypeChanged(CallMediaType.VIDEO, CallMediaType.AUDIO))]
    assert state.call is not None and state.call.media_type is CallMediaType.AUDIO


def test_kicked_out_ends_the_call_then_the_session() -> None:
    """KICKED_OUT in a connected call: media ends, on_call_end (its duration to the ms), the
    session ends, then on_kicked_offline."""
    state = ringing()
    state.receive(ev.OnCallBegin("c1", 42, CallMediaType.VIDEO), NOW)
    effects = state.receive(ev.KickedOut("logged in elsewhere"), NOW + 12.3456)
    assert effects == [
        EndCallMedia(),
        Notify(note.CallEnd(RoomId(int_room_id=42), CallMediaType.VIDEO, CallRole.CALLED,
                            12.346)),
        EndSession(),
        Notify(note.KickedOffline()),
    ]
    assert state.call is None and state.user_id is None


def test_session_lost_while_ringing_cancels_with_own_id() -> None:
    """KICKED_OUT or USER_SIG_EXPIRED while an invitation rings: on_call_cancelled with our
    own id (an abnormal interruption), then the session's callback."""
    state = ringing()
    effects = state.receive(ev.UserSigExpired("expired"), NOW)
    assert effects == [EndCallMedia(), Notify(note.CallCancelled("bob")), EndSession(),
                       Notify(note.UserSigExpired())]
    state = logged_in()
    assert state.receive(ev.KickedOut("again"), NOW) == [EndSession(),
                                                        Notify(note.KickedOffline())]


def test_logout_ends_the_call_with_its_callback() -> None:
    """An application logout ends a connected call with on_call_end, a ringing one with
    on_call_cancelled(own id), and with no call fires nothing."""
    state = connected()
    assert state.call is not None and state.call.begin_time == NOW
    assert state.logged_out(NOW + 3.0004) == [
        EndCallMedia(),
        Notify(note.CallEnd(RoomId(int_room_id=42), CallMediaType.VIDEO, CallRole.CALLED, 3.0)),
    ]
    assert state.user_id is None and state.call is None
    state = ringing()
    assert state.logged_out(NOW) == [EndCallMedia(), Notify(note.CallCancelled("bob"))]
    assert logged_in().logged_out(NOW) == []


def test_cancelled_user_id_follows_the_reference() -> None:
    """An invitee's on_call_cancelled: the caller's id when the caller cancelled, its own for
    an abnormal interruption and everything else; the caller always its own."""
    for reason, expected in (("cancel", "alice"), ("interrupted", "bob"), ("timeout", "bob"),
                             ("reject", "bob"), ("answered_elsewhere", "bob")):
        state = ringing()
        effects = state.receive(ev.OnCallCanceled("c1", "bob", "alice", reason), NOW)
        assert notes(effects) == [note.CallCancelled(expected)], reason
    caller = logged_in("alice")
    caller.call_created(ev.CallCreatedReply("c2", 7, []), CallMediaType.AUDIO, ["bob"])
    effects = caller.receive(ev.OnCallCanceled("c2", "alice", "alice", "interrupted"), NOW)
    assert notes(effects) == [note.CallCancelled("alice")]


def test_a_ringing_call_gone_after_reconnect_cancels_with_own_id() -> None:
    """The server lost a call that rang for us (it restarted): on_call_cancelled(own id)."""
    state = ringing()
    assert notes(state.reconnected(None, NOW)) == [note.CallCancelled("bob")]


def test_user_info_cache_learns_from_events() -> None:
    """Invitations, USER_ENTER and USER_INFO_CHANGED fill the cache; on_user_info_changed
    follows the event's own callback, only when something changed."""
    state = logged_in()
    invitation = ev.OnCallReceived("c1", "alice", ["bob", "carol"], "", CallMediaType.VIDEO,
                                   42, "", "Alice", "a.png")
    effects = state.receive(invitation, NOW)
    assert notes(effects) == [note.CallReceived("alice", ["bob", "carol"], "",
                                                CallMediaType.VIDEO),
                              note.UserInfoChanged("alice", "Alice", "a.png")]
    assert state.users.get("alice") == UserInfo("alice", "Alice", "a.png")
    state.receive(ev.OnCallBegin("c1", 42, CallMediaType.VIDEO), NOW)
    effects = state.receive(ev.UserEnter("c1", "alice", "Alice", "a.png"), NOW)
    assert notes(effects) == [note.UserJoin("alice")]  # nothing new about alice
    effects = state.receive(ev.UserEnter("c1", "carol", "", ""), NOW)
    assert notes(effects) == [note.UserJoin("carol")]  # first seen without a nickname
    assert state.users.get("carol") == UserInfo("carol") and state.users.get("dave") is None
    effects = state.receive(ev.UserInfoChanged("c1", "alice", "Alicia", "a.png"), NOW)
    assert notes(effects) == [note.UserInfoChanged("alice", "Alicia", "a.png")]
    assert state.receive(ev.UserInfoChanged("c1", "alice", "Alicia", "a.png"), NOW) == []
    effects = state.users_info_received([ev.UserProfile("dave", "Dave", ""),
                                         ev.UserProfile("carol", "", "")])
    assert notes(effects) == [note.UserInfoChanged("dave", "Dave", "")]
    assert notes(state.self_info_set("Bobby", "")) == [note.UserInfoChanged("bob", "Bobby", "")]


def test_user_info_cache_is_bounded() -> None:
    """The cache keeps the most recently seen users only."""
    cache = UserInfoCache(limit=2)
    for user in ("a", "b", "c"):
        cache.learn(user, user.upper(), "")
    assert cache.get("a") is None and cache.get("c") == UserInfo("c", "C", "")
    cache.learn("b", "B", "")  # seen again: now the most recent
    cache.learn("d", "D", "")
    assert cache.get("b") is not None and cache.get("c") is None


def test_group_call_join_builds_the_call_from_the_reply() -> None:
    """join_in_group_call: allowed in no call; the reply makes a waiting call we are the
    callee of, with the caller, group and invitees it names; ON_CALL_BEGIN connects it."""
    state = connected()
    with pytest.raises(RequestRefusedError, match="cannot join a group call: already in call"):
        state.check_group_join()
    state = logged_in("carol")
    state.check_group_join()
    call = state.group_call_joined(ev.JoinedReply("g1", 99, CallMediaType.AUDIO,
                                                  ["alice", "bob", "carol"], "alice", "team",
                                                  ["bob", "carol"], ""))
    assert (call.call_id, call.role, call.status, call.caller, call.group_id) == (
        "g1", CallRole.CALLED, CallStatus.WAITING, "alice", "team")
    assert call.callees == ["bob", "carol"] and call.scene is CallScene.GROUP_CALL
    effects = state.receive(ev.OnCallBegin("g1", 99, CallMediaType.AUDIO), NOW)
    assert notes(effects) == [note.CallBegin(RoomId(int_room_id=99), CallMediaType.AUDIO,
                                             CallRole.CALLED)]


def test_requests_carry_user_data_and_every_push_field() -> None:
    """calls and invite carry userData and the whole offlinePushInfo, reference names."""
    push = OfflinePushInfo(title="Call", desc="from Alice", ignore_ios_badge=True,
                           ios_sound="ring.caf", android_sound="ring", android_oppo_channel_id="o",
                           android_vivo_classification=0, android_xiaomi_channel_id="x",
                           android_fcm_channel_id="f", android_huawei_category="IM",
                           is_disable_push=False, ios_push_type=CallIOSOfflinePushType.VOIP)
    params = CallParams(user_data="ud", offline_push_info=push)
    data = calls_request(["bob"], CallMediaType.VIDEO, params)
    wire = {
        "title": "Call", "desc": "from Alice", "ignoreIOSBadge": True, "iOSSound": "ring.caf",
        "androidSound": "ring", "androidOPPOChannelID": "o", "androidVIVOClassification": 0,
        "androidXiaoMiChannelID": "x", "androidFCMChannelID": "f",
        "androidHuaWeiCategory": "IM", "isDisablePush": False, "iOSPushType": 1,
    }
    assert data["offlinePushInfo"] == wire and data["userData"] == "ud"
    assert set(wire) == set(protocol.PUSH_INFO_FIELDS)
    protocol.parse_request(protocol.encode_request("calls", 1, data))  # the server accepts it
    invite = invite_request("c1", ["carol"], params)
    assert invite["offlinePushInfo"] == wire and invite["userData"] == "ud"
    assert "offlinePushInfo" not in calls_request(["bob"], CallMediaType.AUDIO, CallParams())


def test_device_list_change_is_one_callback() -> None:
    """A device list change becomes on_devices_updated with the lists and current ids."""
    mic = AudioDeviceInfo(3, "USB mic", "ALSA", 1, 48000.0, False)
    cam = CameraInfo(0, "/dev/video0", "USB camera")
    effects = logged_in().devices_updated([mic], [cam], "USB mic", "/dev/video0", [], "")
    assert effects == [Notify(note.DevicesUpdated([mic], [cam], "USB mic", "/dev/video0",
                                                  [], ""))]
    assert effects[0].notification.as_event().web_event == "DEVICED_UPDATED"


def test_call_begin_records_time_and_room() -> None:
    """ON_CALL_BEGIN: accepted at the clock's time, with the event's room and media."""
    state = ringing()
    effects = state.receive(ev.OnCallBegin("c1", "r9", CallMediaType.AUDIO), NOW + 5)
    call = state.call
    assert call is not None and call.begin_time == NOW + 5 and call.room_id.str_room_id == "r9"
    assert notes(effects) == [note.CallBegin(call.room_id, CallMediaType.AUDIO, CallRole.CALLED)]


def test_hangup_of_a_call_the_server_lost_ends_it() -> None:
    """hangup answered 4040: the call ends here with no callback."""
    state = connected()
    assert state.hangup_found_no_call() == [EndCallMedia()]
    assert state.call is None
    with pytest.raises(RequestRefusedError, match='cannot hang up: call status is "none"'):
        state.check_hangup()

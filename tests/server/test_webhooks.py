"""Call-event webhooks: what a real HTTP receiver on loopback gets, in order, despite failures.

Calls are driven through the real call state machine (:class:`CoreHarness`); its notices go to
a real :class:`WebhookService` with an outbox in SQLite or PostgreSQL (the ``db`` fixture: each
test runs on both), which POSTs to a real aiohttp receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from callclient.types import CallScene
from signaling_server.core import Notice
from signaling_server.records import users_in_call
from signaling_server.storage import open_store
from signaling_server.webhooks import EVENTS, WebhookService, WebhookSettings
from tests.helpers.core import APP_ID, START, CoreHarness
from tests.helpers.postgres import db_rows
from tests.helpers.waits import eventually
from tests.helpers.webhook_receiver import Received, Receiver

# The receivers listen on loopback: allowed only with allow_private_targets.
FAST = WebhookSettings(backoff_initial_s=0.05, backoff_max_s=0.2, close_grace_s=0.0,
                       allow_private_targets=True)
BODY_FIELDS = [
    "UserId", "RoomId", "TotalNum", "MediaType", "CallType", "CallId", "Role", "Event",
    "CallResult", "EventTime", "StartCallTs", "AcceptTs", "EndTs",
]
PLATFORMS = {"alice": "iOS", "bob": "Android", "carol": "Web", "dave": "miniProgram"}
CLIENT_IP = "203.0.113.7"  # what CoreHarness.open reports for every connection


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A started receiver, stopped at the end."""
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


@contextlib.asynccontextmanager
async def running_service(
    db: str, url: str | None, events: list[str] | None = None,
    settings: WebhookSettings = FAST,
) -> AsyncIterator[WebhookService]:
    """A started service on database ``db``, configured for ``url`` unless it is None."""
    store = open_store(db)
    service = WebhookService(store, APP_ID, settings)
    try:
        await service.start()
        if url is not None:
            await service.create_config(url, events)
        yield service
    finally:
        await service.close()
        store.close()


def harness(*users: str) -> CoreHarness:
    """A core with ``users`` logged in, each from its own platform."""
    h = CoreHarness()
    for user in users:
        h.login(user, platform=PLATFORMS[user])
    return h


def feed(h: CoreHarness, service: WebhookService) -> list[Notice]:
    """Give every notice of the harness to the service, as the server does; return them."""
    notices = list(h.notices)
    for notice in notices:
        service.notice_sink(notice)
    h.clear_notices()
    return notices


def check_callback(got: Received, notice: Notice) -> None:
    """The callback carries exactly the reference's query parameters and body fields."""
    role = "caller" if notice.role == "caller" else "callee"
    call = notice.call
    assert got.path == "/callback"
    assert got.headers["Content-Type"].startswith("application/json")
    assert got.query == {
        "sdkappid": str(APP_ID),
        "command": f"{role}_{notice.event}",
        "contenttype": "json",
        "clientip": CLIENT_IP,
        "optplatform": PLATFORMS[notice.user_id],
    }
    assert list(got.body) == BODY_FIELDS
    assert got.body == {
        "UserId": notice.user_id,
        "RoomId": str(call.room_id),
        "TotalNum": users_in_call(call),
        "MediaType": "video",
        "CallType": "single" if call.scene == CallScene.SINGLE_CALL else "group",
        "CallId": call.call_id,
        "Role": role,
        "Event": notice.event,
        # Group calls end as normal_end whatever happened (the reference's rule).
        "CallResult": call.result if call.scene == CallScene.SINGLE_CALL or not call.result
        else "normal_end",
        "EventTime": int(notice.event_time),
        "StartCallTs": int(START),
        "AcceptTs": 0 if call.accept_ts is None else int(call.accept_ts),
        "EndTs": 0 if call.end_ts is None else int(call.end_ts),
    }


def check_all(got: list[Received], notices: list[Notice]) -> None:
    """Every notice arrived once, in order, as documented."""
    assert len(got) == len(notices), [r.command for r in got]
    for received, notice in zip(got, notices, strict=True):
        check_callback(received, notice)


def call(h: CoreHarness, caller: str, *callees: str) -> str:
    """``caller`` calls ``callees`` (video, room 42); the call id."""
    reply = h.request(caller, "calls", userIDList=list(callees), mediaType=2,
                      roomId={"intRoomId": 42})
    return str(reply["callId"])


def pending_rows(db: str) -> list[tuple[int, str]]:
    """(id, command) of undelivered outbox rows, read with a separate connection."""
    return [(int(r[0]), str(r[1])) for r in db_rows(
        db, "SELECT id, command FROM webhook_outbox WHERE outcome = '' ORDER BY id")]


# ---------------------------------------------------------------------- the flows


async def test_one_to_one_accept_and_hangup(db: str, receiver: Receiver) -> None:
    """Accepted then hung up: start/receive/accept/accepted/end for both, in order; the two
    call_end callbacks carry normal_end and all three timestamps, earlier ones 0 for unset."""
    h = harness("alice", "bob")
    async with running_service(db, receiver.url) as service:
        call_id = call(h, "alice", "bob")
        h.advance(2)
        h.request("bob", "accept", callId=call_id)
        h.advance(10)
        h.request("bob", "hangup", callId=call_id)
        notices = feed(h, service)
        got = await receiver.wait_for(6)
    check_all(got, notices)
    assert receiver.commands() == [
        "caller_start_call", "callee_receive_call", "callee_accept_call",
        "caller_call_accepted", "callee_call_end", "caller_call_end",
    ]
    start, accept, end = int(START), int(START) + 2, int(START) + 12
    assert [r.body["CallResult"] for r in got] == ["", "", "", "", "normal_end", "normal_end"]
    assert [r.body["AcceptTs"] for r in got] == [0, 0, accept, accept, accept, accept]
    assert got[-1].body["StartCallTs"] == start and got[-1].body["EndTs"] == end
    assert got[0].body["RoomId"] == "42" and got[0].body["TotalNum"] == 2
    assert got[0].body["CallType"] == "single"


@pytest.mark.parametrize(
    ("action", "commands", "result"),
    [
        ("reject", ["callee_reject_call", "caller_call_rejected"], "reject"),
        ("ignore", ["callee_ignore_call", "caller_call_busy"], "call_busy"),
        ("cancel", ["callee_call_canceled", "caller_cancel_call"], "cancel"),
        ("timeout", ["callee_not_answer_call", "caller_call_missed"], "not_answer"),
    ],
)
async def test_one_to_one_not_connected(
    db: str, receiver: Receiver, action: str, commands: list[str], result: str
) -> None:
    """Reject, ignore, cancel and timeout: the reference's events for each side, the final
    ones with the call's result and end time."""
    h = harness("alice", "bob")
    async with running_service(db, receiver.url) as service:
        call_id = call(h, "alice", "bob")
        if action == "cancel":
            h.request("alice", "hangup", callId=call_id)
        elif action == "timeout":
            h.advance(31)
        else:
            h.request("bob", action, callId=call_id)
        notices = feed(h, service)
        got = await receiver.wait_for(4)
    check_all(got, notices)
    assert receiver.commands() == ["caller_start_call", "callee_receive_call", *commands]
    assert [r.body["CallResult"] for r in got[2:]] == [result, result]
    assert all(r.body["EndTs"] > 0 for r in got[2:])
    assert all(r.body["AcceptTs"] == 0 for r in got)


async def test_busy_callee(db: str, receiver: Receiver) -> None:
    """Calling a user who is in another call: the caller's start_call then call_busy."""
    h = harness("alice", "carol", "dave")
    async with running_service(db, receiver.url) as service:
        other = call(h, "carol", "dave")
        h.request("dave", "accept", callId=other)
        h.clear_notices()
        call_id = call(h, "alice", "carol")
        notices = feed(h, service)
        got = await receiver.wait_for(2)
    check_all(got, notices)
    assert receiver.commands() == ["caller_start_call", "caller_call_busy"]
    assert {r.body["CallId"] for r in got} == {call_id}
    assert got[-1].body["CallResult"] == "call_busy"


async def test_group_call_with_invite_and_join(db: str, receiver: Receiver) -> None:
    """A group call: receive for each invitee, reject, invite_user for a mid-call invitee,
    join_in_group_call for a rejecter who joins later, call_end for everyone."""
    h = harness("alice", "bob", "carol", "dave")
    async with running_service(db, receiver.url) as service:
        call_id = call(h, "alice", "bob", "carol")
        h.request("bob", "accept", callId=call_id)
        h.request("carol", "reject", callId=call_id)
        h.request("alice", "invite", callId=call_id, userIDList=["dave"])
        h.request("dave", "accept", callId=call_id)
        h.request("carol", "join", callId=call_id)
        for user in ("alice", "bob", "dave"):
            h.request(user, "hangup", callId=call_id)
        notices = feed(h, service)
        got = await receiver.wait_for(len(notices))
    check_all(got, notices)
    assert [(r.command, r.body["UserId"]) for r in got] == [
        ("caller_start_call", "alice"),
        ("callee_receive_call", "bob"),
        ("callee_receive_call", "carol"),
        ("callee_accept_call", "bob"),
        ("caller_call_accepted", "alice"),
        ("callee_reject_call", "carol"),
        ("caller_call_rejected", "alice"),
        ("caller_invite_user", "alice"),
        ("callee_receive_call", "dave"),
        ("callee_accept_call", "dave"),
        ("callee_join_in_group_call", "carol"),
        ("caller_call_end", "alice"),
        ("callee_call_end", "bob"),
        ("callee_call_end", "dave"),
        ("callee_call_end", "carol"),
    ]
    assert {r.body["CallType"] for r in got} == {"group"}
    assert got[-1].body["CallResult"] == "normal_end" and got[-1].body["TotalNum"] == 4


# ---------------------------------------------------------------------- configuration


async def test_disabled_events_are_not_sent(db: str, receiver: Receiver) -> None:
    """Only enabled events are enqueued: an event name enables both roles, a command one."""
    h = harness("alice", "bob")
    events = ["start_call", "accept_call", "caller_call_end"]
    async with running_service(db, receiver.url, events) as service:
        call_id = call(h, "alice", "bob")
        h.request("bob", "accept", callId=call_id)
        h.request("bob", "hangup", callId=call_id)
        feed(h, service)
        await receiver.wait_for(3)
        await service.flush()
        assert service.skipped == 3
    assert receiver.commands() == ["caller_start_call", "callee_accept_call", "caller_call_end"]
    assert db_rows(db, "SELECT COUNT(*) FROM webhook_outbox") == [(3,)]


async def test_nothing_is_enqueued_without_configuration(
    db: str, receiver: Receiver
) -> None:
    """With no callback URL configured nothing is stored or sent; a deleted configuration
    stops the callbacks again."""
    h = harness("alice", "bob")
    async with running_service(db, None) as service:
        call(h, "alice", "bob")
        feed(h, service)
        await service.flush()
        assert service.skipped == 2
        await service.create_config(receiver.url, list(EVENTS))
        await service.delete_config()
        h.advance(31)
        feed(h, service)
        await service.flush()
        assert service.skipped == 4
    assert receiver.received == []
    assert db_rows(db, "SELECT COUNT(*) FROM webhook_outbox") == [(0,)]


# ---------------------------------------------------------------------- delivery


async def test_receiver_down_then_up_gets_everything_once_in_order(
    db: str, receiver: Receiver
) -> None:
    """While the receiver is down the sender retries with backoff; once it is back, every
    callback arrives exactly once and each call's callbacks in their order."""
    await receiver.stop()
    h = harness("alice", "bob", "carol", "dave")
    async with running_service(db, receiver.url) as service:
        first = call(h, "alice", "bob")
        h.request("bob", "accept", callId=first)
        second = call(h, "carol", "dave")
        h.request("dave", "reject", callId=second)
        h.request("alice", "hangup", callId=first)
        notices = feed(h, service)
        await service.flush()
        await asyncio.sleep(0.6)  # several attempts, 0.05 s to 0.2 s apart
        assert service.failed_attempts >= 4
        assert len(pending_rows(db)) == len(notices)
        await receiver.start()
        got = await receiver.wait_for(len(notices))
        # The receiver has the last request before the sender has its response and marks
        # the row delivered: wait for the mark rather than assume it.
        await eventually(lambda: pending_rows(db) == [], "every row marked delivered")
    assert len(got) == len(notices) == 10
    assert len({r.seq for r in got}) == len(got)
    for call_id in (first, second):
        expected = [n for n in notices if n.call.call_id == call_id]
        check_all([r for r in got if r.body["CallId"] == call_id], expected)


async def test_pending_callbacks_are_sent_after_restart(
    db: str, receiver: Receiver
) -> None:
    """Callbacks still undelivered when the service stops stay in the database and are sent,
    in order, by the next run."""
    await receiver.stop()
    h = harness("alice", "bob")
    async with running_service(db, receiver.url) as service:
        call_id = call(h, "alice", "bob")
        h.request("bob", "reject", callId=call_id)
        notices = feed(h, service)
    rows = pending_rows(db)
    assert [command for _, command in rows] == [
        "caller_start_call", "callee_receive_call", "callee_reject_call", "caller_call_rejected"
    ]
    await receiver.start()
    store = open_store(db)
    service = WebhookService(store, APP_ID, FAST)
    try:
        await service.start()
        got = await receiver.wait_for(4)
        await service.flush()
        assert pending_rows(db) == []
    finally:
        await service.close()
        await service.close()
        store.close()
    check_all(got, notices)
    assert [r.seq for r in got] == [row_id for row_id, _ in rows]


async def test_close_does_not_wait_for_retries(db: str, receiver: Receiver) -> None:
    """Closing while callbacks wait for a retry is quick and leaves them pending on disk."""
    await receiver.stop()
    h = harness("alice", "bob")
    settings = WebhookSettings(allow_private_targets=True)
    async with running_service(db, receiver.url, settings=settings) as svc:
        call(h, "alice", "bob")
        feed(h, svc)
        await svc.flush()
        await asyncio.sleep(0.2)  # the first attempt failed; the retry waits about 0.5 s
        assert svc.failed_attempts == 1
        began = time.monotonic()
        await svc.close()
        assert time.monotonic() - began < 0.5
    assert len(pending_rows(db)) == 2


async def test_hanging_receiver_is_retried_after_3_s(
    db: str, receiver: Receiver
) -> None:
    """A receiver that does not answer within 3 s: the callback is sent again, and the call's
    next callback only after it was delivered."""
    receiver.hang_count, receiver.hang_s = 1, 4.0
    h = harness("alice", "bob")
    async with running_service(db, receiver.url) as service:
        call_id = call(h, "alice", "bob")
        h.request("bob", "reject", callId=call_id)
        notices = feed(h, service)
        got = await receiver.wait_for(5, timeout=15)
        await service.flush()
        assert service.failed_attempts == 1 and service.delivered == 4
    seqs = [r.seq for r in got]
    assert seqs[0] == seqs[1] and seqs[1:] == sorted(set(seqs))
    assert 3.0 <= got[1].at - got[0].at < 4.0
    check_all(got[1:], notices)


def test_event_list_is_the_reference_list() -> None:
    """Every event the reference lists can be configured, and nothing else."""
    assert set(EVENTS) == {
        "start_call", "call_accepted", "call_missed", "call_rejected", "call_busy",
        "cancel_call", "call_failed", "call_end", "call_interrupted", "receive_call",
        "accept_call", "not_answer_call", "reject_call", "ignore_call", "call_canceled",
        "invite_user", "join_in_group_call",
    }

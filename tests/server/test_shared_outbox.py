"""Two real server processes on one PostgreSQL: each webhook row is delivered once, in order
per call, whichever process stored it.

The outbox holds a backlog of rows of many calls when both processes start, and the receiver
is down then (both processes see every backlog row pending and try to send); once it is up,
both carry live calls of their own. The receiver records every request's ``X-Callback-Seq``
(the row id).
"""

from __future__ import annotations

import asyncio
import collections
import json
import time

from signaling_server.records import OutboxRow
from signaling_server.storage import open_store
from signaling_server.webhooks import WebhookService, WebhookSettings
from tests.helpers.postgres import PostgresServer, db_rows
from tests.helpers.serverproc import ServerProcess
from tests.helpers.servers import APP, insert_callback_config
from tests.helpers.waits import eventually
from tests.helpers.webhook_receiver import Receiver
from tests.helpers.wsclient import WsClient

BACKLOG_CALLS = 40
ROWS_PER_CALL = 5
LIVE_CALLS_PER_SERVER = 3
CALLBACKS_PER_LIVE_CALL = 6  # start, receive, accept, accepted, and call_end for both


def prepare(db: str, url: str) -> list[int]:
    """Configure callbacks to ``url`` and store the backlog, the calls' rows interleaved (row
    ``k`` of every call before row ``k + 1`` of any); the backlog's row ids."""
    store = open_store(db)
    try:
        with store.transaction() as conn:
            insert_callback_config(conn, url)
        now = time.time()
        rows = [
            OutboxRow(APP, f"backlog-{c}", "caller_call_end",
                      json.dumps({"sdkappid": str(APP), "command": "caller_call_end"}),
                      json.dumps({"CallId": f"backlog-{c}", "Step": k}), now)
            for k in range(ROWS_PER_CALL)
            for c in range(BACKLOG_CALLS)
        ]
        return store.save([], rows)
    finally:
        store.close()


async def until(client: WsClient, name: str) -> None:
    """Read ``client``'s events up to the next ``name``."""
    async with asyncio.timeout(10):
        while (await client.events.get()).name != name:
            pass


async def live_calls(server: ServerProcess, tag: str) -> None:
    """``LIVE_CALLS_PER_SERVER`` answered and hung-up 1v1 calls on ``server``."""
    async with (
        await WsClient.connect(server.url) as caller,
        await WsClient.connect(server.url) as callee,
    ):
        await caller.login(f"caller-{tag}")
        await callee.login(f"callee-{tag}")
        for _ in range(LIVE_CALLS_PER_SERVER):
            reply = await caller.call("calls", {"userIDList": [f"callee-{tag}"], "mediaType": 1})
            await until(callee, "ON_CALL_RECEIVED")
            await callee.call("accept", {"callId": reply["callId"]})
            await until(caller, "ON_CALL_BEGIN")
            await caller.call("hangup", {"callId": reply["callId"]})
            await until(callee, "CALLING_END")


async def test_two_servers_deliver_each_row_once_in_order_per_call(
    postgres: PostgresServer,
) -> None:
    """Every row (backlog and live) is received exactly once, each call's rows in id order;
    both processes delivered rows; nothing is left pending."""
    db = postgres.new_database()
    receiver = Receiver()
    await receiver.start()
    servers = [ServerProcess(db, "--webhook-allow-private") for _ in range(2)]
    try:
        backlog = prepare(db, receiver.url)
        await receiver.stop()  # refused: the rows are retried, nothing is recorded
        await asyncio.gather(*(s.start() for s in servers))
        await asyncio.sleep(1.0)  # both have read the outbox and tried to send
        await receiver.start()
        await asyncio.gather(live_calls(servers[0], "a"), live_calls(servers[1], "b"))
        total = len(backlog) + 2 * LIVE_CALLS_PER_SERVER * CALLBACKS_PER_LIVE_CALL
        await receiver.wait_for(total, timeout=60)
        # A second delivery would come from a claim: let each process claim a few times more.
        await asyncio.sleep(5)
    finally:
        await asyncio.gather(*(s.stop() for s in servers))
        await receiver.stop()
    got = receiver.received
    seqs = collections.Counter(r.seq for r in got)
    assert [seq for seq, n in seqs.items() if n > 1] == []
    stored = db_rows(db, "SELECT id, outcome, lease_owner FROM webhook_outbox ORDER BY id")
    assert sorted(seqs) == [row[0] for row in stored]
    assert set(backlog) <= set(seqs) and len(got) == total
    assert {row[1] for row in stored} == {"delivered"}
    by_call: dict[str, list[int]] = collections.defaultdict(list)
    for r in got:
        by_call[r.body["CallId"]].append(r.seq)
    assert all(ids == sorted(ids) for ids in by_call.values()), by_call
    assert [r.body["Step"] for r in got if r.body["CallId"] == "backlog-0"] == list(
        range(ROWS_PER_CALL))
    assert len({row[2] for row in stored}) == 2  # both processes sent rows


async def test_a_call_another_process_holds_waits_for_its_lease(postgres: PostgresServer) -> None:
    """Rows of a call whose earlier row another live process holds are not sent (not even the
    free later ones: the call's order); once that lease expires (the process died) this one
    claims the call's rows and sends them in order. Other calls go on meanwhile."""
    db = postgres.new_database()
    receiver = Receiver()
    await receiver.start()
    prepare(db, receiver.url)  # the backlog: call backlog-0 .. backlog-39
    store = open_store(db)
    with store.transaction() as conn:  # another process holds backlog-0's first row
        conn.execute("UPDATE webhook_outbox SET lease_owner = 'other', lease_until = ? "
                     "WHERE id = (SELECT MIN(id) FROM webhook_outbox WHERE call_id = ?)",
                     (time.time() + 3600, "backlog-0"))
    settings = WebhookSettings(claim_interval_s=0.05, allow_private_targets=True)
    service = WebhookService(store, APP, settings)
    try:
        await service.start()
        others = (BACKLOG_CALLS - 1) * ROWS_PER_CALL
        await receiver.wait_for(others)
        for _ in range(5):  # claims go on; backlog-0 stays with its holder
            await service.flush()
            await asyncio.sleep(settings.claim_interval_s)
        assert receiver.commands("backlog-0") == []
        with store.transaction() as conn:  # the holder's lease runs out
            conn.execute("UPDATE webhook_outbox SET lease_until = 0 WHERE lease_owner = 'other'")
        await receiver.wait_for(others + ROWS_PER_CALL)
    finally:
        await service.close()
        store.close()
        await receiver.stop()
    assert [r.body["Step"] for r in receiver.received if r.body["CallId"] == "backlog-0"] == list(
        range(ROWS_PER_CALL))
    assert len(receiver.received) == BACKLOG_CALLS * ROWS_PER_CALL


async def test_leases_are_renewed_while_held_and_freed_at_close(postgres: PostgresServer) -> None:
    """Rows waiting for a retry stay leased to their process (the lease is pushed forward at
    each claim interval); closing frees them for the others at once."""
    db = postgres.new_database()
    receiver = Receiver()
    await receiver.start()
    prepare(db, receiver.url)
    await receiver.stop()  # every attempt fails: the rows stay held
    store = open_store(db)
    settings = WebhookSettings(claim_interval_s=0.05, lease_s=5.0, backoff_initial_s=0.05,
                               backoff_max_s=0.1, close_grace_s=0.0, allow_private_targets=True)
    service = WebhookService(store, APP, settings)
    query = "SELECT DISTINCT lease_owner, lease_until FROM webhook_outbox"
    try:
        await service.start()
        await service.flush()
        first = db_rows(db, query)
        assert len(first) == 1 and first[0][0] != ""  # one claim took every row
        await eventually(lambda: service.failed_attempts >= 20, "attempts failed for a while")
        later = db_rows(db, query)
        assert len(later) == 1 and later[0][0] == first[0][0] and later[0][1] > first[0][1]
    finally:
        await service.close()
        store.close()
    assert db_rows(db, query) == [("", 0.0)]

"""The real server process SIGKILLed: no record, and no outbox row, a client was told about is lost.

Both tests run ``python -m signaling_server`` on a file database (:mod:`tests.helpers.serverproc`),
kill it with SIGKILL (no shutdown, no flush), start it again on the same database and check
the database against what the clients saw:

* right after the hangup reply arrives, many times in a row: every call whose hangup reply or
  ``CALLING_END`` reached a client is ``normal_end`` after the restart (issue 12 item 6; the
  server used to send the end frames before the record was committed);
* at random moments while pairs of clients run call cycles (item 9): every ``CALLING_END``
  seen has its ``normal_end`` record, every call id a client was given has a record, no record
  is left open after a restart, and every record's webhook notices are in the outbox exactly
  once, written with the record (start, end, or the restart's ``call_interrupted``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import time
from pathlib import Path

from signaling_server.store import CallStore
from signaling_server.webhooks import EVENTS
from tests.helpers.serverproc import ServerProcess
from tests.helpers.servers import APP
from tests.helpers.wsclient import WsClient

KILL_ROUNDS = 15
LOAD_ROUNDS = 5
LOAD_PAIRS = 8
UNREACHABLE_URL = "http://127.0.0.1:9/callbacks"  # discard port: refused, rows stay pending


def drain_ends(client: WsClient, ended: set[str]) -> None:
    """Note the call of every CALLING_END that reached ``client`` and was not read yet."""
    while not client.events.empty():
        event = client.events.get_nowait()
        if event.name == "CALLING_END":
            ended.add(event.data["callId"])


async def test_final_record_is_committed_before_the_hangup_reply(tmp_path: Path) -> None:
    """SIGKILL the instant the hangup reply arrives, 15 times: every such call is normal_end."""
    server = ServerProcess(tmp_path / "records.db")
    replied: list[str] = []
    ended: set[str] = set()
    try:
        for _ in range(KILL_ROUNDS):
            await server.start()
            alice, bob = await WsClient.connect(server.url), await WsClient.connect(server.url)
            await alice.login("alice")
            await bob.login("bob")
            call_id = (await alice.call("calls", {"userIDList": ["bob"], "mediaType": 1}))[
                "callId"
            ]
            await bob.expect("ON_CALL_RECEIVED")
            await bob.call("accept", {"callId": call_id})
            reply = await alice.request("hangup", {"callId": call_id})
            server.kill_now()  # no await between the reply and the kill
            assert reply.ok, reply
            replied.append(call_id)
            await server.kill()
            await asyncio.sleep(0.05)  # frames already in the socket buffers still arrive
            for client in (alice, bob):
                drain_ends(client, ended)
                client.abort()
        await server.start()  # the restart after the last kill interrupts what is open
    finally:
        await server.stop()
    store = CallStore(str(server.db))
    try:
        results = {}
        for call_id in {*replied, *ended}:
            call = store.get_call(APP, call_id)
            results[call_id] = None if call is None else call.result
    finally:
        store.close()
    lost = {c: r for c, r in results.items() if r != "normal_end"}
    assert not lost, f"{len(lost)} of {len(results)} calls ended before the kill were not " \
        f"recorded as normal_end: {lost}"
    assert len(replied) == KILL_ROUNDS


def configure_callbacks(db: Path) -> None:
    """Every event enabled, to a URL that refuses connections (rows stay in the outbox)."""
    store = CallStore(str(db))
    try:
        with store.transaction() as conn:
            conn.execute(
                "INSERT INTO callback_config (sdk_app_id, url, events, created_ts, updated_ts) "
                "VALUES (?, ?, ?, ?, ?)",
                (APP, UNREACHABLE_URL, json.dumps(EVENTS), time.time(), time.time()),
            )
    finally:
        store.close()


async def cycles(caller: WsClient, callee: WsClient, created: set[str], ended: set[str]) -> None:
    """1v1 call cycles (call, accept, hang up) until the connection breaks."""
    assert callee.user_id is not None
    while True:
        data = await caller.call("calls", {"userIDList": [callee.user_id], "mediaType": 1})
        call_id = data["callId"]
        created.add(call_id)
        await callee.expect("ON_CALL_RECEIVED")
        await callee.call("accept", {"callId": call_id})
        await caller.call("hangup", {"callId": call_id})
        for client in (caller, callee):
            while True:
                event = await client.events.get()
                if event.name == "CALLING_END":
                    ended.add(event.data["callId"])
                    break


def check_invariants(db: Path, created: set[str], ended: set[str]) -> collections.Counter[str]:
    """Assert the database agrees with what the clients saw; the records' results."""
    store = CallStore(str(db))
    try:
        calls = {c.call_id: c for c in store.find_calls(APP, limit=1_000_000)}
        with store.locked() as conn:
            rows = conn.execute(
                "SELECT call_id, command, body FROM webhook_outbox WHERE kind = 'callback'"
            ).fetchall()
    finally:
        store.close()
    assert [c for c, call in calls.items() if call.result == ""] == []
    wrong = {c: calls[c].result if c in calls else None for c in ended
             if c not in calls or calls[c].result != "normal_end"}
    assert not wrong, f"CALLING_END seen, record missing or not normal_end: {wrong}"
    assert created <= calls.keys(), f"call ids given out without a record: {created - calls.keys()}"
    notices = collections.Counter(
        (r["call_id"], r["command"], json.loads(r["body"])["UserId"]) for r in rows
    )
    twice = [key for key, n in notices.items() if n != 1]
    assert not twice, f"notices stored more than once: {twice[:5]}"
    commands: dict[str, set[str]] = collections.defaultdict(set)
    for call_id, command, _ in notices:
        commands[call_id].add(command)
    assert commands.keys() <= calls.keys(), "outbox rows of calls with no record"
    for call_id, call in calls.items():
        got = commands[call_id]
        expected = {"caller_start_call"}
        if call.result == "normal_end":
            expected |= {"caller_call_end", "callee_call_end"}
        elif call.result == "interrupt":
            expected |= {"caller_call_interrupted"}
        assert expected <= got, f"{call_id} ({call.result}): notices {sorted(got)}"
    return collections.Counter(call.result for call in calls.values())


async def test_random_sigkills_under_load_keep_records_and_outbox(tmp_path: Path) -> None:
    """5 SIGKILLs at random moments of 8 pairs' call cycles; the invariants hold after each
    restart."""
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    db = tmp_path / "records.db"
    configure_callbacks(db)
    server = ServerProcess(db)
    created: set[str] = set()
    ended: set[str] = set()
    try:
        await server.start()
        for _ in range(LOAD_ROUNDS):
            clients = [await WsClient.connect(server.url) for _ in range(2 * LOAD_PAIRS)]
            for i, client in enumerate(clients):
                await client.login(f"u{i}")
            load = [asyncio.create_task(cycles(clients[2 * i], clients[2 * i + 1], created, ended))
                    for i in range(LOAD_PAIRS)]
            await asyncio.sleep(rng.uniform(0.3, 1.5))
            server.kill_now()
            await server.kill()
            await asyncio.sleep(0.1)  # what is already in the socket buffers still arrives
            for task in load:
                task.cancel()
            for task in load:
                with contextlib.suppress(asyncio.CancelledError, ConnectionError, AssertionError):
                    await task
            for client in clients:
                drain_ends(client, ended)
                client.abort()
            await server.start()  # calls left open become interrupt, with their notices
            results = check_invariants(db, created, ended)
        print(f"seed {seed}: {len(created)} calls, {len(ended)} CALLING_END seen, {dict(results)}")
    finally:
        await server.stop()
    results = check_invariants(db, created, ended)
    assert results["normal_end"] >= LOAD_ROUNDS, results  # the load really ran

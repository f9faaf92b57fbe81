"""Where webhooks may go, and what the sender takes from a receiver (issue 12, items 4, 11).

Without ``allow_private_targets`` a callback URL on loopback, a private network or a
link-local address is refused when configured, and every connection is checked again at the
socket; redirects are never followed; a receiver's response body is read only up to a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from signaling_server.store import CallStore
from signaling_server.webhooks import (
    CallbackConfigError,
    WebhookService,
    WebhookSettings,
    forbidden_target,
)
from tests.helpers.core import APP_ID
from tests.helpers.rest import rest
from tests.helpers.servers import new_server
from tests.helpers.waits import eventually
from tests.helpers.webhook_receiver import Receiver

PUBLIC_ONLY = WebhookSettings(backoff_initial_s=0.05, backoff_max_s=0.2, close_grace_s=0.0)
ALLOW_PRIVATE = dataclasses.replace(PUBLIC_ONLY, allow_private_targets=True)


@contextlib.asynccontextmanager
async def service(db: Path, settings: WebhookSettings) -> AsyncIterator[WebhookService]:
    store = CallStore(str(db))
    svc = WebhookService(store, APP_ID, settings)
    try:
        await svc.start()
        yield svc
    finally:
        await svc.close()
        store.close()


def outbox(db: Path) -> list[tuple[str, int, str]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return list(conn.execute(
            "SELECT outcome, attempts, last_error FROM webhook_outbox ORDER BY id"))


def enqueue(svc: WebhookService, call_id: str = "c1") -> None:
    svc.enqueue(APP_ID, call_id, "caller_call_end", "call_end", {"command": "caller_call_end"},
                {"CallId": call_id})


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
        ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
        ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.0.0.1", "private"),
        ("0.0.0.0", "unspecified"), ("fc00::1", "private"), ("224.0.0.1", "multicast"),
        ("100.64.0.1", "reserved"),
    ],
)
def test_non_public_addresses_are_named(address: str, kind: str) -> None:
    assert forbidden_target(address) == kind


def test_public_addresses_pass() -> None:
    for address in ("93.184.215.14", "8.8.8.8", "2606:4700:4700::1111"):
        assert forbidden_target(address) is None, address


async def test_non_public_urls_refused_when_configured(tmp_path: Path) -> None:
    """Literal addresses and names that resolve to them (localhost) are refused with a
    message naming the flag; a public address, and a name that does not resolve now
    (checked at each delivery instead), are accepted; with the flag, loopback is too."""
    async with service(tmp_path / "db", PUBLIC_ONLY) as svc:
        for url in ("http://127.0.0.1:9/cb", "http://localhost:9/cb", "http://[::1]/cb",
                    "http://10.0.0.7/cb", "https://169.254.169.254/latest/meta-data",
                    "http://[::ffff:192.168.0.1]/cb"):
            with pytest.raises(CallbackConfigError, match="--webhook-allow-private"):
                await svc.create_config(url)
            assert await svc.get_config() is None
        created = await svc.create_config("http://93.184.215.14/cb")
        assert created.url == "http://93.184.215.14/cb"
        with pytest.raises(CallbackConfigError, match="loopback"):
            await svc.update_config(url="http://127.0.0.1:8080/cb")
        updated = await svc.update_config(url="http://no-such-host.invalid/cb")
        assert updated.url == "http://no-such-host.invalid/cb"
    async with service(tmp_path / "db2", ALLOW_PRIVATE) as svc:
        assert (await svc.create_config("http://127.0.0.1:9/cb")).url.startswith("http://127")


async def test_delivery_checks_the_address_it_connects_to(tmp_path: Path) -> None:
    """A loopback URL stored while allowed, then served without the flag (or a name that
    came to resolve to loopback): nothing reaches the receiver; each attempt fails naming
    the loopback address."""
    receiver = Receiver()
    await receiver.start()
    db = tmp_path / "db"
    try:
        async with service(db, ALLOW_PRIVATE) as svc:
            await svc.create_config(receiver.url.replace("127.0.0.1", "localhost"))
        async with service(db, PUBLIC_ONLY) as svc:
            enqueue(svc)
            await eventually(lambda: svc.failed_attempts >= 2, "two failed attempts")
            await svc.flush()
        assert receiver.received == []
        outcome, attempts, error = outbox(db)[0]
        assert outcome == "" and attempts >= 2
        assert "loopback" in error and "--webhook-allow-private" in error
    finally:
        await receiver.stop()


@contextlib.asynccontextmanager
async def http_app(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_redirects_are_not_followed(tmp_path: Path) -> None:
    """A receiver answering 307 to another URL: the other one never gets the callback; the
    attempt counts as failed, saying why, and is retried at the same URL."""
    hits: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        hits.append("redirect")
        raise web.HTTPTemporaryRedirect(location=str(request.url.with_path("/elsewhere")))

    async def elsewhere(request: web.Request) -> web.Response:
        hits.append("elsewhere")
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/cb", redirect)
    app.router.add_post("/elsewhere", elsewhere)
    async with http_app(app) as base:
        db = tmp_path / "db"
        async with service(db, ALLOW_PRIVATE) as svc:
            await svc.create_config(f"{base}/cb")
            enqueue(svc)
            await eventually(lambda: svc.failed_attempts >= 2, "two failed attempts")
            await svc.flush()
    assert set(hits) == {"redirect"}
    assert svc.delivered == 0
    assert "redirects are not followed" in outbox(db)[0][2]


async def test_response_body_is_read_only_up_to_a_bound(tmp_path: Path) -> None:
    """A receiver that answers 200 and then streams a body without end: the callback is
    delivered once the status and the first 64 KiB are in (reading it all used to hang until
    the 3 s timeout, and retry forever)."""
    streaming: list[bool] = []

    async def endless(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(status=200)
        await response.prepare(request)
        streaming.append(True)
        chunk = b"x" * 65_536
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            for _ in range(100_000):  # 6.5 GB: far more than anyone should read
                await response.write(chunk)
        return response

    app = web.Application()
    app.router.add_post("/cb", endless)
    settings = dataclasses.replace(ALLOW_PRIVATE, timeout_s=30.0)
    async with http_app(app) as base:
        db = tmp_path / "db"
        async with service(db, settings) as svc:
            await svc.create_config(f"{base}/cb")
            enqueue(svc)
            # The bound is on bytes, not time: the 30 s timeout is far away either way.
            await eventually(lambda: svc.delivered == 1, "the callback delivered", timeout=20)
            await svc.flush()
    assert streaming == [True]
    assert outbox(db)[0][0] == "delivered"


# --------------------------------------------------------------------------- retry caps, paging


async def test_attempt_cap_discards_the_row_logs_it_and_the_call_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A receiver answering 500 to one callback: after max_attempts the row is `discarded`
    (a warning with the running count), the call's next callback is then sent, and the
    configuration API shows the discarded row (used to retry forever, holding the call)."""
    receiver = Receiver()
    await receiver.start()
    settings = dataclasses.replace(ALLOW_PRIVATE, max_attempts=3)
    try:
        async with (
            new_server(db=str(tmp_path / "db"), http_port=0, webhooks=settings) as server,
        ):
            await rest(server, "callback/create_config", {"url": receiver.url})
            svc = server.webhooks
            assert svc is not None
            receiver.status = 500
            enqueue(svc)
            await eventually(lambda: svc.discarded == 1, "the row discarded")
            receiver.status = 200
            svc.enqueue(APP_ID, "c1", "callee_call_end", "call_end", {"command": "callee_call_end"},
                        {"CallId": "c1"})
            await eventually(lambda: svc.delivered == 1, "the next callback delivered")
            config = await rest(server, "callback/get_config", {})
    finally:
        await receiver.stop()
    assert receiver.commands() == ["caller_call_end"] * 3 + ["callee_call_end"]
    delivery = config["delivery"]
    assert delivery["pending"] == 0 and delivery["discarded"] == 1
    assert delivery["lastDiscarded"]["callId"] == "c1"
    assert delivery["lastDiscarded"]["attempts"] == 3
    assert "3 attempts" in delivery["lastDiscarded"]["error"]
    warnings = [r.getMessage() for r in caplog.records if "discarded" in r.getMessage()]
    assert len(warnings) == 1 and "1 discarded by this process" in warnings[0]


async def test_age_cap_discards_a_row_retried_too_long(tmp_path: Path) -> None:
    receiver = Receiver()
    await receiver.start()
    receiver.status = 503
    db = tmp_path / "db"
    settings = dataclasses.replace(ALLOW_PRIVATE, max_age_s=0.5)
    try:
        async with service(db, settings) as svc:
            await svc.create_config(receiver.url)
            enqueue(svc)
            await eventually(lambda: svc.discarded == 1, "the row discarded by age")
            stats = await svc.delivery_stats()
    finally:
        await receiver.stop()
    outcome, attempts, error = outbox(db)[0]
    assert outcome == "discarded" and attempts >= 1 and "max_age_s" in error
    assert stats["discarded"] == 1 and stats["pending"] == 0


async def test_pending_rows_are_loaded_in_pages(tmp_path: Path) -> None:
    """300 rows of 60 calls left undelivered by a run whose receiver was down: the next run
    holds at most max_loaded (20) of them in memory, and at most that many sender tasks,
    yet delivers all of them, each call's in order (it used to load all 300 and start 60
    tasks at once)."""
    receiver = Receiver()
    await receiver.start()
    url = receiver.url
    await receiver.stop()
    db = tmp_path / "db"
    async with service(db, ALLOW_PRIVATE) as svc:
        await svc.create_config(url)
        for i in range(300):
            svc.enqueue(APP_ID, f"call{i % 60}", f"caller_e{i}", "call_end",
                        {"command": f"caller_e{i}"}, {"CallId": f"call{i % 60}", "n": i})
        await svc.flush()
    assert len([r for r in outbox(db) if r[0] == ""]) == 300
    await receiver.start()
    peak_memory = peak_tasks = 0
    settings = dataclasses.replace(ALLOW_PRIVATE, max_loaded=20)
    try:
        async with service(db, settings) as svc:
            while svc.delivered < 300:
                peak_memory = max(peak_memory, svc.pending)
                peak_tasks = max(peak_tasks, len(svc._workers))
                await asyncio.sleep(0.002)
                assert len(receiver.received) <= 300
            await svc.flush()
    finally:
        await receiver.stop()
    assert 0 < peak_memory <= 20 and 0 < peak_tasks <= 20, (peak_memory, peak_tasks)
    assert [r[0] for r in outbox(db)] == ["delivered"] * 300
    by_call: dict[str, list[int]] = {}
    for got in receiver.received:
        by_call.setdefault(got.body["CallId"], []).append(got.body["n"])
    assert len(by_call) == 60
    assert all(ns == sorted(ns) and len(ns) == 5 for ns in by_call.values())


async def test_new_rows_wait_behind_a_backlog_in_order(tmp_path: Path) -> None:
    """While older rows wait in the table, a new callback of the same call is not sent
    before them."""
    receiver = Receiver()
    await receiver.start()
    db = tmp_path / "db"
    settings = dataclasses.replace(ALLOW_PRIVATE, max_loaded=4)
    try:
        async with service(db, settings) as svc:
            await svc.create_config(receiver.url)
            receiver.status = 500  # hold everything back for a while
            for i in range(20):
                svc.enqueue(APP_ID, "one", f"caller_e{i}", "call_end",
                            {"command": f"caller_e{i}"}, {"CallId": "one", "n": i})
            await svc.flush()
            assert svc.pending <= 4
            receiver.status = 200
            await eventually(lambda: svc.delivered == 20, "all 20 delivered")
    finally:
        await receiver.stop()
    delivered = [g.body["n"] for g in receiver.received if g.body.get("n") is not None]
    # Failed attempts are recorded too; the first success of each row comes in order.
    firsts = list(dict.fromkeys(delivered))
    assert firsts == list(range(20))


async def test_a_row_committed_with_its_record_is_retried_not_discarded_by_age(
    tmp_path: Path,
) -> None:
    """The server's path: the row is committed with its record (``store.save``), then handed
    over (``adopt``). A receiver down for the first attempts: the row is retried and delivered
    — its age counts from its creation, not from the epoch (which discarded it at the second
    attempt), and it is sent once though the pager also reads the table."""
    receiver = Receiver()
    await receiver.start()
    db = tmp_path / "db"
    settings = dataclasses.replace(ALLOW_PRIVATE, max_age_s=3600.0)
    try:
        async with service(db, settings) as svc:
            await svc.create_config(receiver.url)
            enqueue(svc, "c0")  # the start-up backlog is read and done: rows go straight on
            await eventually(lambda: [r[0] for r in outbox(db)] == ["delivered"], "c0 delivered")
            receiver.status = 503
            store = CallStore(str(db))
            try:
                row = svc.outbox_row(APP_ID, "c1", "caller_call_end", "call_end",
                                     {"command": "caller_call_end"}, {"CallId": "c1"})
                assert row is not None
                (row_id,) = store.save([], [row])
            finally:
                store.close()
            svc.adopt(row, row_id)
            await eventually(lambda: len(receiver.received) >= 3, "two failed attempts")
            receiver.status = 200
            failed = len(receiver.received)
            await eventually(lambda: [r[0] != "" for r in outbox(db)] == [True, True], "c1 done")
            assert svc.discarded == 0
    finally:
        await receiver.stop()
    outcome, attempts, _ = outbox(db)[1]
    assert outcome == "delivered" and attempts >= 3
    assert len(receiver.received) - failed <= 1  # at most the attempt in flight, then one

"""The REST API over real HTTP on 127.0.0.1: records, callback configuration, error codes;
each test on both record back ends (the ``db`` fixture: SQLite, then PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from callwire.usersig import generate_user_sig
from signaling_server.http_api import HttpApi, HttpApiConfig
from signaling_server.records import ParticipantOutcome, StoredCall
from signaling_server.storage import open_store
from signaling_server.webhooks import EVENTS, WebhookService, WebhookSettings
from tests.helpers.core import APP_ID, START, CoreHarness

KEY = "rest-test-secret-key"
ADMIN = "administrator"
SAMPLE_CALL_ID = "2ae7d549-c441-4a9b-87c0-61810fe19582"
SAMPLE_DATA = {
    "callId": SAMPLE_CALL_ID,
    "sdkAppId": 88888888,
    "mediaType": "video",
    "roomId": "123456",
    "startCallTs": 1688705638,
    "acceptTs": 1688705641,
    "endTs": 1688705668,
    "caller": "alice",
    "totalUserNumber": 2,
    "callType": "single",
    "callResult": "normal_end",
    "callees": ["bob1", "bob2"],
}


@dataclass
class Client:
    """Posts to a running API with the admin's query parameters unless overridden."""

    api: HttpApi
    session: aiohttp.ClientSession
    app: int
    admin: str

    def query(self, **overrides: str | None) -> dict[str, str]:
        """Valid query parameters; an override of None removes the parameter."""
        params: dict[str, str | None] = {
            "sdkappid": str(self.app),
            "identifier": self.admin,
            "usersig": generate_user_sig(self.app, KEY, self.admin, 3600),
            "random": "99999999",
            "contenttype": "json",
            **overrides,
        }
        return {k: v for k, v in params.items() if v is not None}

    async def post(
        self, path: str, body: bytes | dict[str, Any] = b"{}", method: str = "POST",
        **query: str | None,
    ) -> dict[str, Any]:
        """The response body of one request; the HTTP status must be 200."""
        raw = json.dumps(body).encode() if isinstance(body, dict) else body
        url = f"http://127.0.0.1:{self.api.port}{path}"
        async with self.session.request(
            method, url, params=self.query(**query), data=raw
        ) as response:
            assert response.status == 200
            result: dict[str, Any] = await response.json()
        assert list(result) == ["errorCode", "errorMessage", "requestId", "data"]
        assert re.fullmatch(r"[0-9a-f]{32}", result["requestId"])
        assert response.headers["X-Request-Id"] == result["requestId"]
        return result

    async def ok(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """The data of a successful request."""
        result = await self.post(path, body)
        assert (result["errorCode"], result["errorMessage"]) == (0, "Success"), result
        data: dict[str, Any] = result["data"]
        return data

    async def error(self, path: str, body: bytes | dict[str, Any] = b"{}", **query: Any) -> int:
        """The error code of a failing request (its data is empty)."""
        result = await self.post(path, body, **query)
        assert result["errorCode"] != 0 and result["data"] == {}, result
        assert result["errorMessage"]
        code: int = result["errorCode"]
        return code


@contextlib.asynccontextmanager
async def running_api(
    db: str, *, app: int = APP_ID, admin: str = ADMIN, rate: float = 1000.0
) -> AsyncIterator[Client]:
    """An API (with its webhook service) on a free port; a client for it."""
    store = open_store(db)
    webhooks = WebhookService(
        store, app, WebhookSettings(close_grace_s=0, allow_private_targets=True)
    )
    api = HttpApi(HttpApiConfig(app, KEY, admin, rate), store, webhooks)
    try:
        await webhooks.start()
        await api.start("127.0.0.1", 0)
        async with aiohttp.ClientSession() as session:
            yield Client(api, session, app, admin)
    finally:
        await api.stop()
        await api.stop()
        await webhooks.close()
        store.close()


def stored_call(
    call_id: str, start: float, *, caller: str = "alice", callees: tuple[str, ...] = ("bob",),
    result: str = "normal_end", media: int = 2, app: int = APP_ID,
) -> StoredCall:
    """A finished call record; every callee answered."""
    return StoredCall(
        call_id=call_id, sdk_app_id=app, caller=caller, callees=list(callees), scene=2,
        media_type=media, room_id=call_id[:8], group_id="", start_ts=start,
        accept_ts=start + 1, end_ts=start + 10, result=result,
        participants={caller: ParticipantOutcome(1, 3)}
        | {u: ParticipantOutcome(2, 2) for u in callees},
    )


# ---------------------------------------------------------------------- records


async def test_reference_sample_request(db: str) -> None:
    """The reference's sample request, byte for byte, gets the reference's sample data."""
    async with running_api(db, app=88888888, admin="admin") as client:
        client.api.store.save_calls([StoredCall(
            call_id=SAMPLE_CALL_ID, sdk_app_id=88888888, caller="alice",
            callees=["bob1", "bob2"], scene=2, media_type=2, room_id="123456", group_id="",
            start_ts=1688705638.4, accept_ts=1688705641.9, end_ts=1688705668.0,
            result="normal_end",
            participants={"alice": ParticipantOutcome(1, 3), "bob1": ParticipantOutcome(2, 2),
                          "bob2": ParticipantOutcome(2, 1)},
        )])
        body = b'{\n"callId": "2ae7d549-c441-4a9b-87c0-61810fe19582"\n}'
        for path in ("/records/get_record_by_callId", "/v1/records/get_record_by_callId"):
            result = await client.post(path, body)
            assert result["errorCode"] == 0 and result["errorMessage"] == "Success"
            assert result["data"] == SAMPLE_DATA
            assert list(result["data"]) == list(SAMPLE_DATA)


async def test_record_of_a_real_call(db: str) -> None:
    """A call made through the call core, stored as the server stores it, reads back in the
    reference's shape; an unknown callId is 70001."""
    h = CoreHarness()
    h.login("alice")
    h.login("bob")
    call_id = h.request("alice", "calls", userIDList=["bob"], mediaType=1,
                        roomId={"intRoomId": 7})["callId"]
    h.advance(2.5)
    h.request("bob", "accept", callId=call_id)
    h.advance(30)
    h.request("alice", "hangup", callId=call_id)
    async with running_api(db) as client:
        client.api.store.save_calls(h.saves)
        data = await client.ok("/v1/records/get_record_by_callId", {"callId": call_id})
        assert data == {
            "callId": call_id, "sdkAppId": APP_ID, "mediaType": "audio", "roomId": "7",
            "startCallTs": int(START), "acceptTs": int(START + 2.5),
            "endTs": int(START + 32.5), "caller": "alice", "totalUserNumber": 2,
            "callType": "single", "callResult": "normal_end", "callees": ["bob"],
        }
        missing = {"callId": str(uuid.uuid4())}
        assert await client.error("/v1/records/get_record_by_callId", missing) == 70001


async def test_records_by_condition_page_stably(db: str) -> None:
    """250 records page by 100 in (start time, callId) order with no gap or repeat, even when
    a record is added before the cursor between pages; filters combine."""
    calls = [
        stored_call(
            str(uuid.uuid4()), 1000.0 + i // 3,
            caller="carol" if i % 5 == 0 else "alice",
            result="reject" if i % 2 else "normal_end", media=1 if i % 4 == 0 else 2,
        )
        for i in range(250)
    ]
    expected = [c.call_id for c in sorted(calls, key=lambda c: (c.start_ts, c.call_id))]
    path = "/v1/records/get_records"
    async with running_api(db) as client:
        client.api.store.save_calls(calls)
        seen: list[str] = []
        cursor = ""
        pages = 0
        while pages < 10:  # 3 expected; a cursor that never ends fails below, not hangs
            data = await client.ok(path, {"limit": 100, "cursor": cursor})
            pages += 1
            seen += [r["callId"] for r in data["records"]]
            if pages == 1:  # a late record before the cursor must not shift later pages
                client.api.store.save_calls([stored_call("late", 999.0)])
            cursor = data["nextCursor"]
            if not cursor:
                break
        assert pages == 3 and seen == expected

        async def matching(**body: Any) -> list[str]:
            ids: list[str] = []
            cursor = ""
            for _ in range(len(calls) // 30 + 2):  # bounded: a cursor loop fails, not hangs
                data = await client.ok(path, {"limit": 30, "cursor": cursor, **body})
                ids += [r["callId"] for r in data["records"]]
                cursor = data["nextCursor"]
                if not cursor:
                    return ids
            pytest.fail(f"cursor pagination of {body} did not end")

        def where(ok: Callable[[StoredCall], bool]) -> list[str]:
            return [c for c in expected if ok(by_id[c])]

        by_id = {c.call_id: c for c in calls}
        assert await matching(userId="carol") == where(lambda c: c.caller == "carol")
        assert len(where(lambda c: c.caller == "carol")) == 50
        assert await matching(userId="bob", callResult="reject", startTs=1010) == where(
            lambda c: c.result == "reject" and c.start_ts >= 1010
        )
        assert await matching(mediaType="audio", startTs=1000, endTs=1030) == where(
            lambda c: c.media_type == 1 and c.start_ts < 1030
        )
        assert await matching(userId="nobody") == []
        first = await client.ok(path, {"limit": 2})
        assert [r["callId"] for r in first["records"]] == ["late", expected[0]]
        assert set(first["records"][0]) == set(SAMPLE_DATA)


# ---------------------------------------------------------------------- error codes


@pytest.mark.parametrize(
    "query",
    [
        {"sdkappid": None},
        {"identifier": None},
        {"usersig": None},
        {"random": None},
        {"contenttype": None},
        {"sdkappid": "abc"},
        {"sdkappid": "1400000999"},
        {"random": "4294967296"},
        {"random": "-1"},
        {"contenttype": "xml"},
    ],
)
async def test_invalid_query_parameters_are_70001(
    db: str, query: dict[str, str | None]
) -> None:
    """A missing or invalid query parameter, or another sdkappid, is 70001."""
    async with running_api(db) as client:
        assert await client.error("/v1/callback/get_config", **query) == 70001


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/records/get_record_by_callId", {}),
        ("/v1/records/get_record_by_callId", {"callId": 5}),
        ("/v1/records/get_record_by_callId", {"callId": ""}),
        ("/v1/records/get_record_by_callId", {"callId": "x", "sdkAppId": 1}),
        ("/v1/records/get_records", {"limit": 101}),
        ("/v1/records/get_records", {"limit": 0}),
        ("/v1/records/get_records", {"startTs": "yesterday"}),
        ("/v1/records/get_records", {"startTs": 20, "endTs": 10}),
        ("/v1/records/get_records", {"mediaType": "fax"}),
        ("/v1/records/get_records", {"callResult": "hangup"}),
        ("/v1/records/get_records", {"cursor": "not a cursor"}),
        ("/v1/callback/create_config", {}),
        ("/v1/callback/create_config", {"url": "ftp://example.com/"}),
        ("/v1/callback/create_config", {"url": "http://x/", "events": ["ring"]}),
        ("/v1/callback/update_config", {}),
        ("/v1/callback/get_config", {"url": "http://x/"}),
        ("/v1/records/no_such_command", {}),
    ],
)
async def test_invalid_body_fields_are_70001(
    db: str, path: str, body: dict[str, Any]
) -> None:
    """A missing, unknown or wrongly typed body field, or an unknown API, is 70001."""
    async with running_api(db) as client:
        assert await client.error(path, body) == 70001


async def test_usersig_errors_are_70002_and_70003(db: str) -> None:
    """A forged, foreign or garbled userSig is 70002; an expired one 70003."""
    path = "/v1/callback/get_config"
    async with running_api(db) as client:
        other_key = generate_user_sig(APP_ID, "another-key", ADMIN, 3600)
        other_user = generate_user_sig(APP_ID, KEY, "bob", 3600)
        other_app = generate_user_sig(APP_ID + 1, KEY, ADMIN, 3600)
        for sig in ("garbage", other_key, other_user, other_app):
            assert await client.error(path, usersig=sig) == 70002
        expired = generate_user_sig(APP_ID, KEY, ADMIN, 60, now=time.time() - 3600)
        assert await client.error(path, usersig=expired) == 70003


async def test_non_administrator_is_70004(db: str) -> None:
    """A valid userSig of a user who is not the configured administrator is 70004."""
    async with running_api(db, admin="ops") as client:
        sig = generate_user_sig(APP_ID, KEY, "administrator", 3600)
        code = await client.error("/v1/callback/get_config", identifier="administrator",
                                  usersig=sig)
        assert code == 70004
        assert await client.ok("/v1/callback/get_config", {}) == {}


async def test_rate_limit_is_70005(db: str) -> None:
    """By default about 20 requests/s per sdkappid pass and the rest are 70005; after a
    second the budget is back. The rate is configurable."""
    async with running_api(db, rate=20.0) as client:
        results = await asyncio.gather(
            *(client.post("/v1/callback/get_config") for _ in range(40))
        )
        codes = [r["errorCode"] for r in results]
        assert 20 <= codes.count(0) <= 25 and codes.count(70005) == 40 - codes.count(0)
        await asyncio.sleep(1.1)
        assert (await client.post("/v1/callback/get_config"))["errorCode"] == 0
    async with running_api(db, rate=2.0) as client:
        codes = [(await client.post("/v1/callback/get_config"))["errorCode"] for _ in range(3)]
        assert codes == [0, 0, 70005]


@pytest.mark.parametrize("body", [b"", b"  \n", b"{", b"[1, 2]", b'"callId"', b"\xff\xfe"])
async def test_unparseable_body_is_70009(db: str, body: bytes) -> None:
    """An empty body, invalid JSON or JSON that is not an object is 70009; `{}` is valid."""
    async with running_api(db) as client:
        assert await client.error("/v1/callback/get_config", body) == 70009
        assert await client.ok("/v1/callback/get_config", {}) == {}


async def test_only_post_is_served(db: str) -> None:
    """Another method still gets HTTP 200 with 70001, as the reference describes."""
    async with running_api(db) as client:
        result = await client.post("/v1/callback/get_config", b"{}", method="PUT")
        assert result["errorCode"] == 70001


# ---------------------------------------------------------------------- callback configuration


async def test_callback_config_crud_persists_across_restart(db: str) -> None:
    """Create, read, update and delete the callback configuration; it is in the database,
    so a restarted server reads the same configuration."""
    base = "/v1/callback/"
    async with running_api(db) as client:
        assert await client.ok(base + "get_config", {}) == {}
        created = await client.ok(base + "create_config", {"url": "http://127.0.0.1:9/cb"})
        assert created["url"] == "http://127.0.0.1:9/cb" and created["events"] == list(EVENTS)
        assert await client.error(base + "create_config", {"url": "http://x/"}) == 70001
        updated = await client.ok(
            base + "update_config", {"events": ["call_end", "caller_start_call", "call_end"]}
        )
        assert updated["events"] == ["call_end", "caller_start_call"]
        assert updated["url"] == created["url"] and updated["createdTs"] == created["createdTs"]
    async with running_api(db) as client:
        assert await client.ok(base + "get_config", {}) == {
            **updated, "delivery": {"pending": 0, "discarded": 0, "lastDiscarded": {}}}
        assert client.api.webhooks is not None and client.api.webhooks.config is not None
        assert client.api.webhooks.config.url == "http://127.0.0.1:9/cb"
        moved = await client.ok(base + "update_config", {"url": "https://example.com/hook"})
        assert moved["events"] == updated["events"]
        assert await client.ok(base + "delete_config", {}) == {"deleted": True}
        assert await client.ok(base + "delete_config", {}) == {"deleted": False}
        assert await client.error(base + "update_config", {"url": "http://x/"}) == 70001
    async with running_api(db) as client:
        assert await client.ok(base + "get_config", {}) == {}

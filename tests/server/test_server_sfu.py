"""The server with a real Janus subprocess: rooms made, guarded, destroyed; Janus unreachable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from callclient.janus import JanusError, JanusHandle, JanusSession
from callwire.codes import ErrorCode
from signaling_server.core import CoreConfig
from signaling_server.janus_proc import JanusProcess, free_port
from signaling_server.server import SignalingServer
from tests.helpers.servers import new_server
from tests.helpers.wsclient import WsClient


@pytest.fixture
async def janus() -> AsyncIterator[JanusProcess]:
    async with JanusProcess() as process:
        yield process


async def logged_in(server: SignalingServer, *users: str) -> list[WsClient]:
    clients = []
    for user in users:
        client = await WsClient.connect(server.url, user)
        await client.login(user)
        clients.append(client)
    return clients


async def handle(url: str) -> tuple[JanusSession, JanusHandle]:
    session = JanusSession(url)
    await session.create()
    return session, await session.attach()


async def until_room(session_handle: JanusHandle, room: int, exists: bool) -> None:
    for _ in range(100):
        data, _ = await session_handle.request({"request": "exists", "room": room})
        if data.get("exists") is exists:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"room {room} exists is not {exists}")


async def test_a_group_call_room_admits_members_only_and_goes_at_the_end(
    janus: JanusProcess,
) -> None:
    async with new_server(core=CoreConfig(sfu=(janus.url,))) as server:
        a, b, c = await logged_in(server, "A", "B", "C")
        call_id = (await a.call("calls", {"userIDList": ["B", "C"], "mediaType": 2}))["callId"]
        room_a = await a.expect("SFU_ROOM")
        assert room_a["url"] == janus.url and room_a["callId"] == call_id
        await b.expect("ON_CALL_RECEIVED")
        await b.call("accept", {"callId": call_id})
        room_b = await b.expect("SFU_ROOM")

        session, probe = await handle(janus.url)
        try:
            await until_room(probe, room_a["room"], True)
            join: dict[str, Any] = {"request": "join", "ptype": "publisher",
                                    "room": room_a["room"], "display": "X"}
            # An outsider: no pin, a wrong pin, the pin but no token, a made-up token.
            for extra, code in (({}, 429), ({"pin": "nope"}, 433),
                                ({"pin": room_a["pin"]}, 433),
                                ({"pin": room_a["pin"], "token": "made-up"}, 433)):
                with pytest.raises(JanusError) as refused:
                    await probe.request({**join, **extra})
                assert refused.value.code == code, extra
            # Nor can anyone edit or destroy it without the secret.
            with pytest.raises(JanusError):
                await probe.request({"request": "destroy", "room": room_a["room"]})
            # A member's own token admits them (B's token was added when B joined).
            member_session, member = await handle(janus.url)
            try:
                data, _ = await member.request({**join, "pin": room_b["pin"],
                                                "token": room_b["token"], "display": "B"})
                assert data["videoroom"] == "joined" and data["private_id"]
            finally:
                await member_session.destroy()

            await b.call("hangup", {"callId": call_id})
            await a.call("hangup", {"callId": call_id})
            await until_room(probe, room_a["room"], False)
        finally:
            await session.destroy()
        for client in (a, b, c):
            await client.close()


async def test_janus_unreachable_at_the_start_is_a_clear_error_not_a_hang() -> None:
    dead = f"http://127.0.0.1:{free_port()}/janus"
    async with new_server(core=CoreConfig(sfu=(dead,))) as server:
        a, b, c = await logged_in(server, "A", "B", "C")
        await a.call("calls", {"userIDList": ["B", "C"], "mediaType": 1})
        assert (await a.expect("SFU_ROOM"))["url"] == dead
        error = await a.expect("ERROR")
        assert error["code"] == ErrorCode.SFU_UNAVAILABLE and "--sfu" in error["msg"]
        assert (await a.expect("ON_CALL_CANCELED"))["reason"] == "interrupted"
        await b.expect("ON_CALL_RECEIVED")
        assert (await b.expect("ERROR"))["code"] == ErrorCode.SFU_UNAVAILABLE
        await b.expect("ON_CALL_CANCELED")
        for client in (a, b, c):
            await client.close()


def test_janus_proc_runs_a_command_with_a_janus() -> None:
    """``python -m signaling_server.janus_proc -- CMD {url}``: the command reaches Janus."""
    import subprocess
    import sys

    fetch = ("import json, sys, urllib.request; "
             "print(json.load(urllib.request.urlopen(sys.argv[1] + '/info'))['name'])")
    done = subprocess.run(
        [sys.executable, "-m", "signaling_server.janus_proc", "--", sys.executable, "-c",
         fetch, "{url}"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Janus WebRTC Server"


async def test_janus_cors_answers_any_origin_or_the_one_allowed() -> None:
    """The generated Janus answers a browser's preflight and requests with CORS headers:
    ``*`` by default, the page's origin with ``allow_origin``; requests without an Origin
    (the Python engine's, the server's) are served either way."""
    preflight = {"Origin": "http://127.0.0.1:8080", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    for allowed, expected in ((None, "*"), ("https://calls.example.com",
                                            "https://calls.example.com")):
        async with JanusProcess(allow_origin=allowed) as janus, aiohttp.ClientSession() as http:
            async with http.options(janus.url, headers=preflight) as response:
                assert response.status == 200
                assert response.headers["Access-Control-Allow-Origin"] == expected
                assert "POST" in response.headers["Access-Control-Allow-Methods"]
            async with http.post(janus.url, json={"janus": "create", "transaction": "t"},
                                 headers={"Origin": "http://127.0.0.1:8080"}) as response:
                assert response.headers["Access-Control-Allow-Origin"] == expected
                assert (await response.json())["janus"] == "success"
            session = JanusSession(janus.url)  # no Origin header
            await session.create()
            await session.destroy()
    with pytest.raises(ValueError, match="not an origin"):
        JanusProcess(allow_origin="calls.example.com/janus")

"""The REST API of a running test server, called as its administrator over real HTTP."""

from __future__ import annotations

from typing import Any

import aiohttp

from callwire.usersig import generate_user_sig
from signaling_server.server import SignalingServer
from tests.helpers.servers import APP, KEY

__all__ = ["rest", "rest_response"]


async def rest_response(
    server: SignalingServer, command: str, body: dict[str, Any]
) -> dict[str, Any]:
    """POST one REST request as the administrator; the whole response body (HTTP 200)."""
    query = {
        "sdkappid": str(APP),
        "identifier": "administrator",
        "usersig": generate_user_sig(APP, KEY, "administrator", 60),
        "random": "12345",
        "contenttype": "json",
    }
    url = f"http://127.0.0.1:{server.http_port}/v1/{command}"
    async with aiohttp.ClientSession() as session, session.post(
        url, params=query, json=body
    ) as response:
        assert response.status == 200
        result: dict[str, Any] = await response.json()
    return result


async def rest(
    server: SignalingServer, command: str, body: dict[str, Any], *, expect: int = 0
) -> dict[str, Any]:
    """The response's ``data`` when its errorCode is ``expect`` (0: success), else fail."""
    result = await rest_response(server, command, body)
    assert result["errorCode"] == expect, result
    if expect:
        assert result["data"] == {} and result["errorMessage"], result
    data: dict[str, Any] = result["data"]
    return data

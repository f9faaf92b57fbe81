"""The browser client on the HTTP port: its files, its settings, the development login, and
the REST API still behind the same port."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request

from callwire.dev import DEV_SECRET_KEY
from callwire.protocol import PROTOCOL_VERSION
from callwire.usersig import verify_user_sig
from signaling_server.core import CoreConfig
from signaling_server.server import SignalingServer
from signaling_server.web import (
    DEFAULT_WEB_ROOT,
    WebClient,
    dev_login_allowed,
    is_loopback,
    origin_of,
)
from tests.helpers.servers import APP, new_server


@pytest.fixture
async def site() -> AsyncIterator[SignalingServer]:
    async with new_server(http_port=0) as server:
        yield server


async def fetch(url: str, method: str = "GET", **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.request(
        method, url, **kwargs
    ) as response:
        return response.status, dict(response.headers), await response.read()


async def test_the_policy_lets_the_page_reach_the_configured_janus_instances() -> None:
    """With ``--sfu`` the page talks to Janus's HTTP API itself: connect-src names each
    instance's origin (not its path, no credentials), and nothing else is added."""
    urls = ("http://127.0.0.1:8088/janus", "https://user:pw@sfu.example.com/janus/",
            "http://127.0.0.1:8088/janus")
    async with new_server(http_port=0, core=CoreConfig(sfu=urls)) as server:
        for path in ("", "config.json"):
            _, headers, _ = await fetch(server.http_url + path)
            assert ("connect-src 'self' ws: wss: http://127.0.0.1:8088 "
                    "https://sfu.example.com; object-src") in headers["Content-Security-Policy"]
    assert origin_of("ftp://x/y") == "" and origin_of("janus") == ""


async def test_the_page_and_its_scripts_are_served_with_a_strict_policy(
    site: SignalingServer,
) -> None:
    """/ is index.html; the scripts it loads are there, as JavaScript; every response says
    only the page's own scripts may run (no CDN, nothing inline)."""
    status, headers, body = await fetch(site.http_url)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'<script type="module" src="app.js">' in body
    policy = headers["Content-Security-Policy"]
    assert "script-src 'self';" in policy and "connect-src 'self' ws: wss:" in policy
    for path in ("app.js", "lib/call.js", "lib/mesh.js", "lib/sfu.js", "lib/signaling.js",
                 "style.css", "favicon.svg"):
        status, headers, body = await fetch(site.http_url + path)
        assert status == 200, path
        assert body == (DEFAULT_WEB_ROOT / path).read_bytes()
    assert (await fetch(site.http_url + "app.js"))[1]["Content-Type"].startswith(
        "text/javascript")


async def test_only_files_of_the_web_root_are_served(site: SignalingServer) -> None:
    for path in ("missing.js", "%2e%2e/pyproject.toml", "lib/%2e%2e/%2e%2e/README.md",
                 ".hidden", "lib/"):
        status, _, body = await fetch(site.http_url + path)
        assert status == 404, path
        assert b"is not a file of the web client" in body


async def test_settings_name_the_websocket_and_the_development_login(
    site: SignalingServer,
) -> None:
    status, _, body = await fetch(site.http_url + "config.json")
    assert status == 200
    assert json.loads(body) == {
        "sdkAppId": APP, "protocolVersion": PROTOCOL_VERSION, "websocketUrl": None,
        "websocketPort": site.port, "secure": False, "developmentLogin": True,
    }


async def test_the_development_login_issues_a_working_user_sig(site: SignalingServer) -> None:
    status, _, body = await fetch(site.http_url + "dev/login", "POST",
                                  json={"userID": "alice"})
    assert status == 200
    reply = json.loads(body)
    assert reply["userID"] == "alice" and reply["sdkAppId"] == APP
    verify_user_sig(reply["userSig"], APP, DEV_SECRET_KEY, "alice")


@pytest.mark.parametrize(
    ("method", "body", "status", "message"),
    [
        ("POST", b'{"userID": "no spaces"}', 400, "userID must be 1..64 characters"),
        ("POST", b'{"user": "alice"}', 400, "userID must be a string"),
        ("POST", b"alice", 400, "the body must be JSON"),
        ("GET", b"", 405, 'POST {"userID": ...} to /dev/login'),
    ],
)
async def test_bad_development_logins_are_refused_with_a_reason(
    site: SignalingServer, method: str, body: bytes, status: int, message: str
) -> None:
    got, _, text = await fetch(site.http_url + "dev/login", method, data=body)
    assert got == status
    assert message in json.loads(text)["error"]


async def test_a_server_with_its_own_key_has_no_development_login(tmp_path: Path) -> None:
    async with new_server(http_port=0, secret_key="a-real-secret") as server:
        status, _, body = await fetch(server.http_url + "config.json")
        assert json.loads(body)["developmentLogin"] is False
        status, _, body = await fetch(server.http_url + "dev/login", "POST",
                                      json={"userID": "alice"})
        assert status == 404
        assert "the development login is off" in json.loads(body)["error"]


def test_the_development_login_needs_the_development_key_on_loopback() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback(host) and dev_login_allowed(DEV_SECRET_KEY, host), host
    for host in ("0.0.0.0", "::", "192.0.2.1", "example.com", ""):
        assert not dev_login_allowed(DEV_SECRET_KEY, host), host
    assert not dev_login_allowed("another key", "127.0.0.1")


async def test_the_development_login_refuses_clients_beyond_loopback() -> None:
    """Behind a proxy on loopback, a client from elsewhere still gets no userSig."""

    class Transport:
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return ("192.0.2.7", 40000) if name == "peername" else default

    client = WebClient(APP, lambda: 1, dev_secret_key=DEV_SECRET_KEY)
    request = make_mocked_request("POST", "/dev/login", transport=Transport())

    async def rest(request: Any) -> Any:
        raise AssertionError("handed on to the REST API")

    response = await client.serve(request, rest)
    assert response.status == 403


async def test_the_rest_api_answers_on_the_same_port(site: SignalingServer) -> None:
    """REST paths go on to the REST API: its JSON error for a request without credentials."""
    for path in ("v1/records/get_records", "records/get_records"):
        status, _, body = await fetch(site.http_url + path, "POST", data=b"{}")
        assert status == 200
        assert json.loads(body)["errorCode"] == 70001


async def test_a_missing_web_root_says_how_to_fix_it(tmp_path: Path) -> None:
    async with new_server(http_port=0, web_root=tmp_path / "nothing") as server:
        status, _, body = await fetch(server.http_url)
        assert status == 404
        assert b"start the server with --web-root DIR" in body

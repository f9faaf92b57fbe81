"""One version, written once (callwire.version): the installed package's metadata, both
programs' ``--version``, the server's login reply and both websocket handshakes carry it."""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable

import pytest

import callclient
import signaling_server
from callclient.cli import main as callclient_main
from callclient.signaling import Credentials, SignalingClient
from callwire.version import DISTRIBUTION, __version__
from signaling_server.cli import main as server_main
from signaling_server.server import SignalingServer
from tests.helpers.servers import APP, sig
from tests.helpers.wsclient import WsClient


def test_metadata_and_packages_carry_the_source_version() -> None:
    """pyproject reads the version from callwire.version; the packages re-export it."""
    assert importlib.metadata.version(DISTRIBUTION) == __version__
    assert callclient.__version__ == signaling_server.__version__ == __version__
    assert __version__.count(".") == 2 and all(p.isdigit() for p in __version__.split("."))


def _status(main: Callable[[list[str]], int], argv: list[str]) -> int | str | None:
    try:
        return main(argv)
    except SystemExit as exc:  # signaling-server lets argparse exit
        return exc.code


@pytest.mark.parametrize(("main", "prog"), [(callclient_main, "callclient"),
                                            (server_main, "signaling-server")])
def test_programs_print_the_version(main: Callable[[list[str]], int], prog: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """``callclient --version`` and ``signaling-server --version`` print it and exit 0."""
    assert _status(main, ["--version"]) == 0
    assert capsys.readouterr().out == f"{prog} {__version__}\n"


async def test_server_names_its_version_in_the_handshake_and_login_reply(
    server: SignalingServer,
) -> None:
    """The handshake's Server header and the login reply's serverVersion name the release."""
    async with await WsClient.connect(server.url) as client:
        assert client.ws.response is not None
        assert client.ws.response.headers["Server"].startswith(f"signaling-server/{__version__} ")
        reply = await client.login("alice")
    assert reply["serverVersion"] == __version__


async def test_client_names_its_version_in_the_handshake(
    server: SignalingServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The client's User-Agent names callclient and its release; the server logs it."""
    caplog.set_level(logging.DEBUG, logger="signaling_server.server")
    client = SignalingClient(server.url, lambda _event: None, lambda _relay: None,
                             reconnect=False)
    try:
        reply = await client.login(Credentials(APP, "bob", sig("bob")))
    finally:
        await client.close()
    assert reply["serverVersion"] == __version__
    agents = [r.getMessage() for r in caplog.records if "from 127.0.0.1 (" in r.getMessage()]
    assert len(agents) == 1 and f"(callclient/{__version__} Python/" in agents[0], agents

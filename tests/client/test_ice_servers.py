"""The engine takes its STUN/TURN servers from the login reply and ICE_SERVERS, tries the TURN
URLs against a real coturn (on loopback) and reports refused credentials clearly.

TURN over TLS (``turns:``) runs against a coturn with a TLS listener and a self-signed
certificate made here, trusted the way a user trusts a private CA: ``SSL_CERT_FILE``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from callclient.engine import CallEngine
from callclient.errors import ErrorCode
from callclient.ice import IceChooser
from callclient.peer import IceServer
from callclient.tasks import TaskOwner
from callclient.types import CallMediaType, MediaPath
from callwire.messages import IceServerEntry, IceServers
from callwire.turn import parse_turn_url, turn_credentials
from signaling_server.core import CoreConfig
from tests.helpers.certs import Certificate, make_self_signed
from tests.helpers.coturn import Coturn
from tests.helpers.engine import Recorder
from tests.helpers.servers import APP, new_server, sig
from tests.helpers.waits import T, eventually

SECRET = "test-turn-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def coturn() -> Iterator[Coturn]:
    """coturn on a free loopback port (allocations only: nothing is relayed here)."""
    with Coturn("127.0.0.1", SECRET, ["127.0.0.1"], port=_free_port()) as turn:
        yield turn


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """coturn's certificate: self-signed, valid for 127.0.0.1 only (not for ``localhost``)."""
    return make_self_signed(tmp_path_factory.mktemp("coturn-cert"), "coturn", ("127.0.0.1",))


@pytest.fixture(scope="module")
def coturn_tls(tls_cert: Certificate) -> Iterator[Coturn]:
    """coturn with a TLS listener too (``turns:``), on free loopback ports."""
    with Coturn("127.0.0.1", SECRET, ["127.0.0.1"], port=_free_port(), tls=tls_cert,
                tls_port=_free_port()) as turn:
        yield turn


def _core(turn: Coturn, secret: str = SECRET, ttl: int = 3600) -> CoreConfig:
    return CoreConfig(turn_urls=tuple(parse_turn_url(u) for u in turn.urls), turn_secret=secret,
                      turn_ttl_s=ttl)


async def _login(url: str, user: str, **kwargs: object) -> tuple[CallEngine, Recorder]:
    engine = CallEngine(url, **kwargs)  # type: ignore[arg-type]
    rec = Recorder(user)
    engine.add_observer(rec)
    await engine.login(APP, user, sig(user))
    return engine, rec


async def test_nothing_configured_no_servers() -> None:
    """Without --turn the engine uses host candidates only, as before (make demo)."""
    async with new_server() as server:
        engine, _ = await _login(server.url, "alice")
        try:
            assert engine.ice.servers == [] and engine.ice.expires_at is None
            assert engine.ice.checked.is_set()
        finally:
            await engine.close()


async def test_server_turn_used_after_a_real_allocation(coturn: Coturn) -> None:
    """The engine keeps the STUN side and the first TURN URL coturn allocated on."""
    async with new_server(core=_core(coturn)) as server:
        engine, rec = await _login(server.url, "alice")
        try:
            await asyncio.wait_for(engine.ice.checked.wait(), T)
            stun, relay = engine.ice.servers
            assert stun.urls == f"stun:127.0.0.1:{coturn.port}"
            assert relay.urls == coturn.urls[0]
            assert relay.username is not None and relay.username.endswith(":alice")
            assert [p.ok for p in engine.ice.probes] == [True]
            assert rec.find("on_error") is None
        finally:
            await engine.close()


async def test_explicit_ice_servers_override_the_servers(coturn: Coturn) -> None:
    mine = [IceServer("stun:198.51.100.7:3478")]
    async with new_server(core=_core(coturn)) as server:
        engine, _ = await _login(server.url, "alice", ice_servers=mine)
        try:
            assert engine.ice.servers == mine
            assert engine.ice.probes == []
        finally:
            await engine.close()


async def test_wrong_secret_reported_fast_with_its_code(coturn: Coturn) -> None:
    """coturn answers 401: on_error(-1330) naming the secret; STUN still used, no TURN."""
    async with new_server(core=_core(coturn, secret="not-the-secret")) as server:
        engine, rec = await _login(server.url, "alice")
        try:
            error = await rec.wait_for("on_error")
            assert error.args[0] == ErrorCode.TURN_AUTH_FAILED
            assert "static-auth-secret" in error.args[1]
            assert all(p.refused for p in engine.ice.probes)
            assert [s.urls for s in engine.ice.servers] == [f"stun:127.0.0.1:{coturn.port}"]
        finally:
            await engine.close()


async def test_unreachable_turn_reported_and_dropped() -> None:
    """Nothing listens on the TURN port: on_error(-1331), and no ICE server is left to
    delay gathering."""
    port = _free_port()
    core = CoreConfig(turn_urls=(parse_turn_url(f"turn:127.0.0.1:{port}?transport=tcp"),),
                      turn_secret=SECRET)
    async with new_server(core=core) as server:
        engine, rec = await _login(server.url, "alice")
        try:
            error = await rec.wait_for("on_error")
            assert error.args[0] == ErrorCode.TURN_UNREACHABLE
            assert engine.ice.servers == []
        finally:
            await engine.close()


async def test_credentials_renewed_before_expiry(coturn: Coturn) -> None:
    """With a 4 s lifetime the server sends fresh credentials after 3 s; the engine tries and
    uses them."""
    async with new_server(core=_core(coturn, ttl=4)) as server:
        engine, _ = await _login(server.url, "alice")
        try:
            await asyncio.wait_for(engine.ice.checked.wait(), T)
            first = engine.ice.servers[-1].username
            first_expiry = engine.ice.expires_at
            assert first_expiry is not None
            await eventually(lambda: (engine.ice.expires_at or 0) > first_expiry,
                             "renewed credentials (ICE_SERVERS)")
            await asyncio.wait_for(engine.ice.checked.wait(), T)
            assert engine.ice.servers[-1].username != first
        finally:
            await engine.close()


async def _call_paths(
    url: str, servers: list[IceServer] | None, relay_only: bool
) -> list[MediaPath]:
    """alice calls bob (audio); the path each reports for the other's media (remote_stats)."""
    kwargs: dict[str, object] = {"relay_only": relay_only}
    if servers is not None:
        kwargs["ice_servers"] = servers
    alice, _ = await _login(url, "alice", **kwargs)
    bob, bob_rec = await _login(url, "bob", **kwargs)
    try:
        await alice.call("bob", CallMediaType.AUDIO)
        await bob_rec.wait_for("on_call_received")
        await bob.accept()
        paths = []
        for engine, other in ((alice, "bob"), (bob, "alice")):

            def flowing(e: CallEngine = engine, o: str = other) -> bool:
                stats = e.remote_stats.get(o)
                return stats is not None and stats.audio_blocks > 10 and stats.path is not None

            await eventually(flowing, f"media from {other} on a known path", timeout=3 * T)
            path = engine.remote_stats[other].path
            assert path is not None
            paths.append(path)
        return paths
    finally:
        await alice.close()
        await bob.close()


async def test_host_path_on_one_machine() -> None:
    """No ICE servers: host candidates, UDP."""
    async with new_server() as server:
        paths = await _call_paths(server.url, None, relay_only=False)
    assert [(p.local, p.remote, p.transport, p.relayed) for p in paths] == [
        ("host", "host", "udp", False)] * 2


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_relay_path_through_coturn(coturn: Coturn, transport: str) -> None:
    """Relay only, through coturn over UDP, then over TCP: the path says so."""
    url = next(u for u in coturn.urls if u.endswith(transport))
    username, credential = turn_credentials(SECRET, "tester", 2_000_000_000)
    async with new_server() as server:
        paths = await _call_paths(server.url, [IceServer(url, username, credential)],
                                  relay_only=True)
    for path in paths:
        assert path.relayed and path.local == "relay"
        assert path.transport == f"turn/{transport}"


async def test_unreachable_turn_keeps_a_stun_server_elsewhere() -> None:
    """Only the dead TURN host's STUN side is dropped; another STUN server stays."""
    port = _free_port()
    notes: list[object] = []
    tasks = TaskOwner()
    chooser = IceChooser([], tasks, notes.append)
    chooser.update(IceServers((
        IceServerEntry((f"stun:127.0.0.1:{port}", "stun:198.51.100.9:3478")),
        IceServerEntry((f"turn:127.0.0.1:{port}?transport=tcp",), "u", "p"),
    ), None))
    await asyncio.wait_for(chooser.checked.wait(), T)
    assert [s.urls for s in chooser.servers] == ["stun:198.51.100.9:3478"]
    assert len(notes) == 1 and getattr(notes[0], "code", None) == ErrorCode.TURN_UNREACHABLE
    await tasks.cancel_all()


async def test_relay_path_through_coturn_over_tls(
    coturn_tls: Coturn, tls_cert: Certificate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relay only, through coturn's TLS listener, its certificate trusted through
    SSL_CERT_FILE: media flows both ways and the path says turn/tls."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_cert.cert))
    username, credential = turn_credentials(SECRET, "tester", 2_000_000_000)
    async with new_server() as server:
        paths = await _call_paths(
            server.url, [IceServer(coturn_tls.tls_url, username, credential)], relay_only=True)
    for path in paths:
        assert path.relayed and path.local == "relay"
        assert path.transport == "turn/tls"


async def test_server_turns_url_allocated_with_a_trusted_certificate(
    coturn_tls: Coturn, tls_cert: Certificate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server hands out only the turns: URL; with its CA in SSL_CERT_FILE the engine's
    check allocates on it and keeps it."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_cert.cert))
    core = CoreConfig(turn_urls=(parse_turn_url(coturn_tls.tls_url),), turn_secret=SECRET)
    async with new_server(core=core) as server:
        engine, rec = await _login(server.url, "alice")
        try:
            await asyncio.wait_for(engine.ice.checked.wait(), T)
            assert [s.urls for s in engine.ice.servers] == [coturn_tls.tls_url]
            assert [p.ok for p in engine.ice.probes] == [True]
            assert rec.find("on_error") is None
        finally:
            await engine.close()


@pytest.mark.parametrize("case", ["unknown-ca", "wrong-name"])
async def test_untrusted_turns_certificate_reported_with_its_code(
    coturn_tls: Coturn, tls_cert: Certificate, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path, case: str,
) -> None:
    """A certificate signed by a CA not in SSL_CERT_FILE, or trusted but not valid for the
    URL's host (``localhost``: it names 127.0.0.1 only): on_error(-1333) naming the URL, the
    TLS failure and SSL_CERT_FILE; no TURN server is used."""
    if case == "unknown-ca":
        trusted, host = make_self_signed(tmp_path, "another CA").cert, "127.0.0.1"
    else:
        trusted, host = tls_cert.cert, "localhost"
    monkeypatch.setenv("SSL_CERT_FILE", str(trusted))
    url = f"turns:{host}:{coturn_tls.tls_port}?transport=tcp"
    core = CoreConfig(turn_urls=(parse_turn_url(url),), turn_secret=SECRET)
    async with new_server(core=core) as server:
        engine, rec = await _login(server.url, "alice")
        try:
            error = await rec.wait_for("on_error")
            assert error.args[0] == ErrorCode.TURN_TLS_FAILED
            message = error.args[1]
            assert url in message and "SSL_CERT_FILE" in message
            assert "certificate verify failed" in message
            assert [(p.ok, p.tls_failed, p.refused) for p in engine.ice.probes] == [
                (False, True, False)]
            assert engine.ice.servers == []
        finally:
            await engine.close()

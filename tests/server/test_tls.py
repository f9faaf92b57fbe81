"""TLS on both listeners (wss and https) with a certificate the test makes, and its reload."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import ssl
import sys
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509

from signaling_server.tls import ServerTls, TlsError, TlsFiles
from tests.helpers.certs import Certificate, make_self_signed
from tests.helpers.servers import APP, new_server, sig
from tests.helpers.wsclient import WsClient
from tests.server.test_cli import clean_env


def trusting(*certs: Certificate) -> ssl.SSLContext:
    context = ssl.create_default_context()
    for cert in certs:
        context.load_verify_locations(cert.cert)
    return context


def presented(client: WsClient) -> str:
    """The common name of the certificate the server presented to ``client``."""
    ssl_object = client.ws.transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True)
    name = x509.load_der_x509_certificate(der).subject.rfc4514_string()
    return name.removeprefix("CN=")


async def login(client: WsClient, user: str) -> None:
    reply = await client.request("login", {"sdkAppId": APP, "userID": user,
                                           "userSig": sig(user), "protocolVersion": "1.0"})
    assert reply.ok, reply


async def test_wss_and_https_with_a_self_signed_certificate(tmp_path: Path) -> None:
    """A client that trusts the certificate logs in over wss and reads the page's settings
    over https; one that does not is refused by its own TLS check."""
    cert = make_self_signed(tmp_path)
    async with new_server(http_port=0, tls=TlsFiles(str(cert.cert), str(cert.key))) as server:
        assert server.url == f"wss://127.0.0.1:{server.port}"
        async with await WsClient.connect(server.url, ssl=trusting(cert)) as client:
            await login(client, "alice")
        async with aiohttp.ClientSession() as session, session.get(
            server.http_url + "config.json", ssl=trusting(cert)
        ) as response:
            assert (await response.json())["secure"] is True
        with pytest.raises(ssl.SSLCertVerificationError):
            await WsClient.connect(server.url, ssl=ssl.create_default_context())


async def test_reload_serves_the_new_certificate_to_new_connections_only(
    tmp_path: Path,
) -> None:
    """The files are replaced and reloaded: a new connection gets the new certificate, one
    already open keeps working; files that do not load leave the certificate in use."""
    old = make_self_signed(tmp_path / "old", "old")
    new = make_self_signed(tmp_path / "new", "new")
    live = TlsFiles(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
    shutil.copy(old.cert, live.cert)
    shutil.copy(old.key, live.key)
    async with new_server(tls=live) as server:
        first = await WsClient.connect(server.url, ssl=trusting(old, new))
        await login(first, "alice")
        assert presented(first) == "old"
        shutil.copy(new.cert, live.cert)
        shutil.copy(new.key, live.key)
        server.reload_tls()
        async with await WsClient.connect(server.url, ssl=trusting(old, new)) as second:
            assert presented(second) == "new"
        assert (await first.request("ping")).ok

        await asyncio.to_thread(Path(live.key).write_text, "not a key")
        with pytest.raises(TlsError, match="cannot use certificate"):
            server.reload_tls()
        async with await WsClient.connect(server.url, ssl=trusting(old, new)) as third:
            assert presented(third) == "new"
        await first.close()


def test_unusable_files_are_named_in_the_error(tmp_path: Path) -> None:
    cert = make_self_signed(tmp_path)
    with pytest.raises(TlsError, match=r"cannot read .*missing\.pem: no such file"):
        ServerTls(TlsFiles(str(tmp_path / "missing.pem"), str(cert.key)))
    other = make_self_signed(tmp_path / "other")
    with pytest.raises(TlsError, match="cannot use certificate"):
        ServerTls(TlsFiles(str(cert.cert), str(other.key)))


async def test_the_command_serves_tls_and_reloads_on_sighup(tmp_path: Path) -> None:
    """--tls-cert/--tls-key (or their environment variables): wss and https URLs printed;
    CALLSERVER_PUBLIC_WS_URL reaches the page's settings; SIGHUP reloads the files and says
    so; one flag without the other exits 2."""
    cert = make_self_signed(tmp_path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "signaling_server", "--port", "0", "--http-port", "0",
        "--tls-key", str(cert.key),
        cwd=tmp_path, env=clean_env(CALLSERVER_DB=":memory:", CALLSERVER_TLS_CERT=str(cert.cert),
                                    CALLSERVER_PUBLIC_WS_URL="wss://calls.example.com/ws"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            lines = [(await proc.stdout.readline()).decode() for _ in range(3)]
        assert re.match(r"signaling-server listening on wss://127\.0\.0\.1:\d+ ", lines[0])
        assert re.fullmatch(r"signaling-server REST API on https://127\.0\.0\.1:\d+/v1/\n",
                            lines[1]), lines
        page = re.fullmatch(r"signaling-server browser client on (https://\S+)\n", lines[2])
        assert page, lines
        async with aiohttp.ClientSession() as session, session.get(
            page.group(1) + "config.json", ssl=trusting(cert)
        ) as response:
            settings = json.loads(await response.read())
        assert settings["secure"] is True
        assert settings["websocketUrl"] == "wss://calls.example.com/ws"
        proc.send_signal(signal.SIGHUP)
        async with asyncio.timeout(20):
            assert (await proc.stdout.readline()).decode() == (
                "signaling-server: TLS certificate reloaded\n")
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    half = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "signaling_server", "--tls-cert", str(cert.cert),
        cwd=tmp_path, env=clean_env(), stderr=asyncio.subprocess.PIPE,
    )
    _, err = await half.communicate()
    assert half.returncode == 2
    assert b"--tls-cert and --tls-key go together" in err

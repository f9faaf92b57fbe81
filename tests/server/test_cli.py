"""The ``signaling-server`` command, run as ``python -m signaling_server`` subprocesses."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from pathlib import Path

import aiohttp

from callwire.dev import DEV_SDK_APP_ID
from signaling_server.pgstore import PG_SCHEMA_VERSION
from signaling_server.urls import redact_url
from tests.helpers.postgres import PostgresServer, db_rows
from tests.helpers.wsclient import WsClient


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any CALLSERVER_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLSERVER_")}
    env.update(extra)
    return env


async def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``python -m signaling_server ARGS`` to completion: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "signaling_server", *args,
        cwd=cwd, env=env or clean_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_serve_login_and_sigterm(tmp_path: Path) -> None:
    """It prints where it listens, accepts a login with its usersig, and SIGTERM exits 0."""
    code, out, _ = await run("usersig", "alice", cwd=tmp_path)
    assert code == 0
    user_sig = out.strip()
    assert re.fullmatch(r"[A-Za-z0-9*\-_]+", user_sig)

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "signaling_server", "--port", "0",
        cwd=tmp_path, env=clean_env(CALLSERVER_DB="calls.db"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        async with asyncio.timeout(20):
            line = (await proc.stdout.readline()).decode()
        match = re.fullmatch(
            r"signaling-server listening on (ws://127\.0\.0\.1:(\d+)) "
            r"\(sdkappid (\d+), db calls\.db\)\n",
            line,
        )
        assert match, line
        assert int(match.group(3)) == DEV_SDK_APP_ID
        async with await WsClient.connect(match.group(1)) as alice:
            reply = await alice.login("alice", user_sig=user_sig, sdkAppId=DEV_SDK_APP_ID)
            assert reply["userID"] == "alice"
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(5):
                assert await proc.wait() == 0
            assert (await alice.closed()).code == 1001
        err = (await proc.stderr.read()).decode()
        assert "development secret key" in err
        assert "Traceback" not in err
        assert (tmp_path / "calls.db").exists()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_bad_flag_exits_2(tmp_path: Path) -> None:
    """A malformed or unknown flag is an argparse error: exit 2 with a message."""
    code, _, err = await run("--port", "eighty", cwd=tmp_path)
    assert code == 2
    assert "--port" in err and "'eighty' is not a port number" in err
    code, _, err = await run("serve", "--colour", "blue", cwd=tmp_path)
    assert code == 2
    assert "unrecognized arguments: --colour blue" in err


async def test_busy_port_exits_1_without_traceback(tmp_path: Path) -> None:
    """A port already in use: one clear error line, exit 1, no traceback."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out, err = await run("--port", str(port), "--db", ":memory:", cwd=tmp_path)
    assert code == 1
    assert out == ""
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line]
    assert errors == [
        f"signaling-server: error: cannot listen on 127.0.0.1:{port}: address already in use"
    ]


async def test_rest_api_flags_and_env(tmp_path: Path) -> None:
    """--http-port serves the REST API and prints its URL; --admin names the only account it
    accepts; CALLSERVER_REST_RATE sets the rate limit."""
    code, out, _ = await run("usersig", "ops", cwd=tmp_path)
    assert code == 0
    ops_sig = out.strip()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "signaling_server", "--port", "0", "--http-port", "0",
        "--admin", "ops",
        cwd=tmp_path, env=clean_env(CALLSERVER_DB=":memory:", CALLSERVER_REST_RATE="2"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            await proc.stdout.readline()
            line = (await proc.stdout.readline()).decode()
        match = re.fullmatch(r"signaling-server REST API on (http://127\.0\.0\.1:\d+/v1/)\n", line)
        assert match, line
        query = {"sdkappid": str(DEV_SDK_APP_ID), "identifier": "ops", "usersig": ops_sig,
                 "random": "1", "contenttype": "json"}
        codes = []
        async with aiohttp.ClientSession() as session:
            for identifier in ("administrator", "ops", "ops", "ops"):
                async with session.post(
                    match.group(1) + "callback/get_config",
                    params=query | {"identifier": identifier}, data=b"{}",
                ) as response:
                    codes.append((await response.json())["errorCode"])
        assert codes == [70004, 0, 0, 70005]
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(5):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_development_key_refused_off_loopback(tmp_path: Path) -> None:
    """The published development key lets anyone mint an administrator's userSig: off
    loopback the server refuses to start with it, naming --secret-key; with a key of its
    own it starts (the listener is on 0.0.0.0 for a moment)."""
    for host in ("0.0.0.0", "::", "192.0.2.10", "example.com"):
        code, out, err = await run("--host", host, "--port", "0", "--db", ":memory:",
                                   "--http-port", "0", cwd=tmp_path)
        assert code == 2, (host, out, err)
        assert out == ""
        assert "--secret-key" in err and f"--host {host}" in err and "Traceback" not in err
    code, _, err = await run("--port", "0", "--db", ":memory:", cwd=tmp_path,
                             env=clean_env(CALLSERVER_HOST="0.0.0.0"))
    assert code == 2 and "--secret-key" in err
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "signaling_server", "--host", "0.0.0.0", "--port", "0",
        "--db", ":memory:", "--secret-key", "a-key-of-our-own-0123456789",
        cwd=tmp_path, env=clean_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            line = (await proc.stdout.readline()).decode()
        assert line.startswith("signaling-server listening on ws://0.0.0.0:"), line
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_postgresql_database_from_the_environment(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    """CALLSERVER_DB may be a PostgreSQL URL: the server serves on it and stops cleanly, and
    its schema is there afterwards."""
    url = postgres.new_database()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "signaling_server", "--port", "0",
        cwd=tmp_path, env=clean_env(CALLSERVER_DB=url),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        async with asyncio.timeout(20):
            line = (await proc.stdout.readline()).decode()
        assert line.endswith(f", db {url})\n"), line
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
        assert "Traceback" not in (await proc.stderr.read()).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert db_rows(url, "SELECT version FROM callserver_schema") == [(PG_SCHEMA_VERSION,)]


async def test_unreachable_postgresql_exits_1_with_the_reason(tmp_path: Path) -> None:
    """No PostgreSQL at the URL: one error line naming it (password hidden), exit 1."""
    url = f"postgresql://calls:s3cret@/records?host={tmp_path}/none&connect_timeout=2"
    code, out, err = await run("--port", "0", "--db", url, cwd=tmp_path)
    assert code == 1 and out == ""
    assert "Traceback" not in err and "s3cret" not in err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1, err
    assert errors[0].startswith(
        f"signaling-server: error: cannot open the record database {redact_url(url)}: "
        f"cannot connect to PostgreSQL at {redact_url(url)}: ")
    assert "calls:***@" in errors[0]


async def test_postgresql_without_the_driver_names_the_extra(tmp_path: Path) -> None:
    """Without psycopg installed, --db postgresql:// says which extra to install."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c",
        "import sys; sys.modules['psycopg'] = None\n"  # as if not installed
        "from signaling_server.cli import main\n"
        "sys.exit(main(['--port', '0', '--db', 'postgresql://u@/d']))",
        cwd=tmp_path, env=clean_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        _, err_bytes = await proc.communicate()
    err = err_bytes.decode()
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    assert "pip install 'callclient[postgres]'" in err

"""The local Redis and PostgreSQL of the tests and the cluster demo: they start, answer, come
back on the same port after a stop or a kill, and leave no process behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import psycopg
import pytest
import redis

from signaling_server.devservices import LocalPostgres, LocalRedis, ServiceError
from tests.helpers.waits import T

ROOT = Path(__file__).resolve().parents[2]


def _gone(pids: list[int], timeout: float = 3 * T) -> list[int]:
    """The pids of ``pids`` still alive (not zombies) after waiting up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def test_session_redis_answers(redis_server: LocalRedis) -> None:
    """The session fixture's server answers redis-py at its URL (database 0)."""
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.ping() is True
        client.set("devservices:probe", "1")
        assert client.get("devservices:probe") == b"1"
        client.delete("devservices:probe")
    finally:
        client.close()


def test_redis_restart_kill_and_stop() -> None:
    """restart and start-after-kill keep the port and lose the data (nothing is saved); a
    stop or kill leaves no process; close removes the directory."""
    service = LocalRedis()
    try:
        service.start()
        port, first_pid = service.port, service.pid
        assert first_pid is not None
        client = redis.Redis(port=port, socket_timeout=5)
        client.set("k", "v")

        service.restart()
        assert service.port == port and service.pid != first_pid
        assert _gone([first_pid]) == []
        assert client.ping() is True
        assert client.get("k") is None  # --save '': a restart starts empty
        client.close()

        killed_pid = service.pid
        assert killed_pid is not None
        service.kill()
        assert not service.running and not service.ping()
        assert _gone([killed_pid]) == []
        service.start()
        assert service.port == port and service.ping()

        last_pid = service.pid
        assert last_pid is not None
        service.stop()
        service.stop()  # idempotent
        assert not service.running and service.pid is None and not service.ping()
        assert _gone([last_pid]) == []
    finally:
        service.close()
    assert not service.root.exists()
    service.close()  # idempotent
    with pytest.raises(ServiceError, match="after close"):
        service.start()


def test_redis_on_a_taken_given_port_fails_with_the_reason() -> None:
    """A port given explicitly and already in use: an error that says so, no process left."""
    holder = LocalRedis()
    try:
        holder.start()
        clash = LocalRedis(port=holder.port)
        try:
            with pytest.raises(ServiceError, match="exited"):
                clash.start(timeout_s=10)
            assert "Address already in use" in clash.log_tail()
            assert not clash.running
        finally:
            clash.close()
    finally:
        holder.close()


def test_postgres_outage_and_return_on_tcp() -> None:
    """A TCP PostgreSQL: reachable over TCP and the socket; a stop ends open sessions and
    refuses new ones; a start brings it back on the same port with its data."""
    service = LocalPostgres(tcp_port=0)
    try:
        service.start()
        assert service.tcp_port is not None
        url = service.new_database()
        tcp = service.tcp_url(url.split("/")[3].split("?")[0])
        with psycopg.connect(tcp, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (x int)")
            conn.execute("INSERT INTO t VALUES (7)")
        session = psycopg.connect(url, autocommit=True)
        postmaster = psutil.Process(service.pid)
        backends = [p.pid for p in postmaster.children()]
        assert backends

        service.stop()
        assert _gone([postmaster.pid, *backends]) == []
        with pytest.raises(psycopg.OperationalError):
            session.execute("SELECT 1")
        session.close()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(tcp, connect_timeout=2).close()

        port = service.tcp_port
        service.start()
        assert service.tcp_port == port
        with psycopg.connect(tcp) as conn:
            assert conn.execute("SELECT x FROM t").fetchall() == [(7,)]
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
    finally:
        service.close()
    assert not service.root.exists()


def test_socket_only_postgres_has_no_tcp_url(postgres: LocalPostgres) -> None:
    """The session's PostgreSQL listens on its socket only."""
    with pytest.raises(ServiceError, match="no TCP listener"):
        postgres.tcp_url()
    with psycopg.connect(postgres.new_database()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


_CHILD = """
import sys, time
from signaling_server.devservices import LocalPostgres, LocalRedis
r = LocalRedis(); r.start()
p = LocalPostgres(); p.start()
print(r.pid, p.pid, r.root, p.root, flush=True)
time.sleep(600)
"""


def test_a_killed_owner_leaves_no_server_behind() -> None:
    """SIGKILL of the process that started them (no cleanup runs): both servers exit."""
    child = subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE,
                             cwd=ROOT, text=True)
    roots: list[str] = []
    try:
        assert child.stdout is not None
        redis_pid, pg_pid, *roots = child.stdout.readline().split()
        pids = [int(redis_pid), int(pg_pid)]
        pids += [p.pid for p in psutil.Process(int(pg_pid)).children()]
        assert _gone(pids[:2], timeout=0) == pids[:2]  # both run; children come and go
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        assert _gone(pids) == []
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)

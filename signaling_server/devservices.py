"""Local Redis and PostgreSQL servers for tests, ``make cluster-demo`` and the benchmarks.

:class:`LocalRedis` runs ``redis-server`` (the Debian package ``redis-server``) on a free TCP
port of 127.0.0.1, without persistence; :class:`LocalPostgres` runs ``initdb`` and
``postgres`` (the Debian package ``postgresql``) listening on a unix socket in its directory,
and on a TCP port of 127.0.0.1 too when asked. Each lives in a temporary directory that
:meth:`~LocalService.close` removes; when the caller is root the server runs as an
unprivileged user (PostgreSQL refuses root): the package's own user, else ``nobody``.

Both can be stopped and started again on the same port and data, which is how the fault tests
make a service unreachable and bring it back. A server runs in a process group of its own (a
Ctrl-C in the terminal reaches only its owner, which stops it in order) and gets a signal when
the thread that started it dies (``PR_SET_PDEATHSIG``), so a killed test run or demo leaves
none behind. That is the *thread*: start a service from the main thread or from a thread that
outlives it (an executor's worker, as ``asyncio.to_thread`` uses, lives until its executor
shuts down).

Every method blocks (process start and readiness polling, tens of milliseconds to a few
seconds); from a coroutine call them through ``await asyncio.to_thread(service.stop)``.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import itertools
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from callwire.extras import require

__all__ = [
    "LocalPostgres", "LocalRedis", "LocalService", "ServiceError", "default_pg_bin", "free_port",
    "parent_death_signal",
]

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
REDIS_SERVER = os.environ.get("CALLSERVER_REDIS_SERVER", "/usr/bin/redis-server")
"""The ``redis-server`` binary (Debian's ``redis-server`` package)."""


class ServiceError(RuntimeError):
    """A local service could not be set up, started or stopped; the message says why."""


def default_pg_bin() -> Path:
    """Where ``initdb`` and ``postgres`` are: ``$CALLSERVER_PG_BIN`` (or the older
    ``$CALLSERVER_TEST_PG_BIN``), else the newest ``/usr/lib/postgresql/N/bin`` (Debian)."""
    for var in ("CALLSERVER_PG_BIN", "CALLSERVER_TEST_PG_BIN"):
        if value := os.environ.get(var):
            return Path(value)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                   key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    return Path(found[-1]) if found else Path("/usr/lib/postgresql/15/bin")


def parent_death_signal(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets ``sig`` when the thread that started it dies (Linux;
    elsewhere nothing). ``subprocess`` runs it after a ``user=`` switch, which would
    otherwise clear it."""

    def arm() -> None:
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(sig))

    return arm


def _run_as(users: Sequence[str]) -> dict[str, Any]:
    """``subprocess`` arguments running a child as the first of ``users`` that exists (else
    ``nobody``) when we are root; none otherwise."""
    if os.geteuid() != 0:
        return {}
    for name in (*users, "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    raise ServiceError(f"running as root and none of the users {', '.join(users)}, nobody "
                       "exists to run the service as; create one (useradd --system NAME)")


def free_port() -> int:
    """A TCP port of 127.0.0.1 free right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalService:
    """One server process in a temporary directory: start, stop, start again, close.

    Subclasses say how to prepare the directory (:meth:`_prepare`, once), the command line
    (:meth:`_command`), whether it answers (:meth:`_ready`) and how to stop it gracefully.
    """

    name = "service"
    stop_signal = signal.SIGTERM
    death_signal = signal.SIGTERM

    def __init__(self, prefix: str, users: Sequence[str]) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self._as = _run_as(users)
        if self._as:
            os.chown(self.root, self._as["user"], self._as["group"])
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._prepared = False
        self._closed = False

    # ---------------------------------------------------------------- subclass hooks

    def _prepare(self, timeout_s: float) -> None:
        """One-time set-up of the directory before the first start."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    # ---------------------------------------------------------------- public API

    @property
    def log_path(self) -> Path:
        """The server's own output (stdout and stderr), appended to across restarts."""
        return self.root / f"{self.name}.log"

    @property
    def running(self) -> bool:
        """Whether the server process is alive (started and not yet exited)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The server process's id while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    def start(self, timeout_s: float = 60.0) -> None:
        """Start the server (preparing its directory the first time) and wait until it
        answers. Nothing happens if it runs already."""
        if self._closed:
            raise ServiceError(f"{self.name}: start after close(); make a new one")
        if self.running:
            return
        if not self._prepared:
            self._prepare(timeout_s)
            self._prepared = True
        if self._log is None:
            self._log = self.log_path.open("ab")
        started = time.monotonic()
        self._proc = subprocess.Popen(
            self._command(), stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, preexec_fn=parent_death_signal(self.death_signal),
            process_group=0, **self._as,
        )
        deadline = started + timeout_s
        while not self._ready():
            if self._proc.poll() is not None:
                code, self._proc = self._proc.returncode, None
                raise ServiceError(f"{self.name} exited with {code} while starting: "
                                   f"{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise ServiceError(f"{self.name} did not answer within {timeout_s:g} s: "
                                   f"{self.log_tail()}")
            time.sleep(0.02)
        logger.debug("%s up in %.0f ms (pid %d)", self.name,
                     1000 * (time.monotonic() - started), self._proc.pid)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the server gracefully (SIGKILL after ``timeout_s``) and reap it; its directory
        stays, so :meth:`start` brings it back with the same port and data. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(self.stop_signal)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop within %g s; killing it", self.name, timeout_s)
                proc.kill()
                proc.wait()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would, and reap it. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self, timeout_s: float = 60.0) -> None:
        """:meth:`stop`, then :meth:`start` (same port, same data)."""
        self.stop()
        self.start(timeout_s)

    def close(self) -> None:
        """Stop the server and remove its directory. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.stop()
        if self._log is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the server's log (for error messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:].strip() or "(no output)"
        except OSError:
            return "(no log)"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class LocalRedis(LocalService):
    """``redis-server`` on a free port of 127.0.0.1, no persistence (``--save ''``,
    ``--appendonly no``); :attr:`url` is ``redis://127.0.0.1:PORT/0``.

    ``with LocalRedis() as redis: ...`` starts it and closes it; :meth:`restart` and
    :meth:`start` after :meth:`stop` or :meth:`kill` keep the port (its data is gone: nothing
    is saved).
    """

    name = "redis-server"

    def __init__(self, port: int = 0, binary: str = REDIS_SERVER) -> None:
        if not Path(binary).exists():
            raise ServiceError(f"{binary} not found: install the Debian package redis-server "
                               "(make setup does), or set CALLSERVER_REDIS_SERVER to the binary")
        super().__init__("callserver-redis-", ("redis",))
        self.binary = binary
        self._fixed_port = port != 0
        self._started_once = False
        self.port = port or free_port()

    @property
    def url(self) -> str:
        """The URL of database 0, for ``--cluster`` and ``redis.asyncio.from_url``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 60.0) -> None:
        """Start and wait until it answers PING. The first start moves to another free port
        if the one picked was taken meanwhile (not when the port was given)."""
        for attempt in range(4):
            try:
                super().start(timeout_s)
            except ServiceError:
                if (self._fixed_port or self._started_once or attempt == 3
                        or "Address already in use" not in self.log_tail()):
                    raise
                self.port = free_port()
            else:
                self._started_once = True
                return

    def _command(self) -> list[str]:
        return [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.root), "--save", "", "--appendonly", "no",
            "--daemonize", "no", "--loglevel", "warning",
        ]

    def _ready(self) -> bool:
        # INFO, not PING: whoever answers on the port must be this process (a clash with
        # another server on a given port would otherwise look like a start).
        info = self._command_reply(b"INFO server\r\n")
        return self._proc is not None and f"process_id:{self._proc.pid}\r\n" in info

    def _command_reply(self, command: bytes) -> str:
        """The reply to one inline command, as text ('' when nothing answers)."""
        chunks: list[bytes] = []
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(command)
                while True:
                    chunks.append(sock.recv(65536))
                    data = b"".join(chunks)
                    if not chunks[-1] or self._complete(data):
                        break
        except OSError:
            return ""
        return b"".join(chunks).decode(errors="replace")

    @staticmethod
    def _complete(data: bytes) -> bool:
        """Whether ``data`` holds one whole RESP reply (a simple line, or a bulk string)."""
        head, sep, rest = data.partition(b"\r\n")
        if not sep:
            return False
        if not head.startswith(b"$"):
            return True
        return len(rest) >= int(head[1:]) + 2

    def ping(self) -> bool:
        """Whether the server answers PING right now."""
        return self._command_reply(b"PING\r\n").startswith("+PONG")


class LocalPostgres(LocalService):
    """A PostgreSQL server in a temporary directory, listening on a unix socket there, and
    on ``127.0.0.1:tcp_port`` too when ``tcp_port`` is given (0: a free port, kept across
    restarts).

    :meth:`url` names a database over the socket, :meth:`tcp_url` over TCP;
    :meth:`new_database` creates an empty one. The server trusts every local connection as
    user ``postgres``. :meth:`stop` is a fast shutdown (open sessions are ended), so a stopped
    server is unreachable at once; :meth:`start` brings it back with its data.
    """

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: SIGTERM would wait for clients to leave
    death_signal = signal.SIGINT

    def __init__(self, bin_dir: Path | None = None, *, tcp_port: int | None = None) -> None:
        bin_dir = bin_dir if bin_dir is not None else default_pg_bin()
        for tool in ("initdb", "postgres"):
            if not (bin_dir / tool).exists():
                raise ServiceError(
                    f"{bin_dir / tool} not found: install the Debian package postgresql "
                    "(make setup does), or point CALLSERVER_PG_BIN at its bin directory"
                )
        super().__init__("callserver-pg-", ("postgres",))
        self.bin_dir = bin_dir
        self.data = self.root / "data"
        self.socket_dir = self.root
        self.tcp_port: int | None = (tcp_port or free_port()) if tcp_port is not None else None
        # Names the socket file (.s.PGSQL.<port>); the TCP port when there is one.
        self.port = self.tcp_port if self.tcp_port is not None else 5432
        self.user = "postgres"
        self._names = itertools.count(1)

    def _prepare(self, timeout_s: float) -> None:
        log = self.root / "initdb.log"
        with log.open("wb") as out:
            try:
                done = subprocess.run(
                    [str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", self.user,
                     "--auth=trust", "--locale=C", "--encoding=UTF8", "--no-sync"],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    check=False, timeout=timeout_s, **self._as,
                )
            except subprocess.TimeoutExpired as exc:
                raise ServiceError(f"initdb did not finish within {timeout_s:g} s") from exc
        if done.returncode != 0:
            raise ServiceError(f"initdb failed ({done.returncode}): {log.read_text()[-2000:]}")

    def _command(self) -> list[str]:
        listen = "127.0.0.1" if self.tcp_port is not None else ""
        return [
            str(self.bin_dir / "postgres"), "-D", str(self.data), "-k", str(self.socket_dir),
            "-p", str(self.port), "-c", f"listen_addresses={listen}",
            "-c", "max_connections=200", "-c", "shared_buffers=32MB", "-c", "fsync=off",
        ]

    def _ready(self) -> bool:
        psycopg = self._driver()
        try:
            psycopg.connect(self.url("postgres"), connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    @staticmethod
    def _driver() -> Any:
        return require("psycopg", extra="postgres", feature="a local PostgreSQL")

    def url(self, dbname: str = "postgres") -> str:
        """The connection URL of database ``dbname`` over the unix socket."""
        return f"postgresql://{self.user}@/{dbname}?host={self.socket_dir}&port={self.port}"

    def tcp_url(self, dbname: str = "postgres") -> str:
        """The connection URL of database ``dbname`` over TCP (needs ``tcp_port``)."""
        if self.tcp_port is None:
            raise ServiceError("this LocalPostgres has no TCP listener; pass tcp_port=0")
        return f"postgresql://{self.user}@127.0.0.1:{self.tcp_port}/{dbname}"

    def new_database(self, name: str | None = None) -> str:
        """Create an empty database (``name``, else a fresh one); its URL over the socket."""
        if name is None:
            name = f"test_{os.getpid()}_{next(self._names)}"
        with self._driver().connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

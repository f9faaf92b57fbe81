"""coturn as a subprocess with a generated configuration, for the NAT/relay tests.

:class:`Coturn` writes a ``turnserver.conf`` into a temporary directory and runs ``turnserver
-c`` (inside a network namespace when given its ``ip netns exec`` prefix). The configuration is
the standard shared-secret mode (``use-auth-secret``/``static-auth-secret``, the credentials
of :mod:`callwire.turn`), listens only on the given address, has no CLI (``no-cli``) and may
relay only to the test's own addresses: ``denied-peer-ip`` covers every IPv4 address and
``allowed-peer-ip`` re-opens only ``peers`` (coturn applies the allow list first). Its SQLite
user database, pid file and log live in the temporary directory. Stopped (SIGTERM, then
SIGKILL) on exit.

With ``tls`` (a certificate of :mod:`tests.helpers.certs`) it also serves TURN over TLS on
``tls_port`` (``turns:``); DTLS stays off (``no-dtls``: aiortc cannot use it).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tests.helpers.certs import Certificate

__all__ = ["TURN_PORT", "TURN_TLS_PORT", "Coturn", "CoturnUnavailable"]

TURN_PORT = 3478
"""Inside a test's own namespace nothing else listens, so the standard port is free."""
TURN_TLS_PORT = 5349
"""The standard port of TURN over TLS (``turns:``)."""


class CoturnUnavailable(RuntimeError):
    """``turnserver`` is not installed (Debian package ``coturn``) or did not start."""


class Coturn:
    """``with Coturn(address, secret, peers, prefix) as turn: ...``."""

    def __init__(
        self,
        address: str,
        secret: str,
        peers: list[str],
        prefix: list[str] | None = None,
        *,
        port: int = TURN_PORT,
        realm: str = "callclient.test",
        tls: Certificate | None = None,
        tls_port: int = TURN_TLS_PORT,
    ) -> None:
        self.address = address
        self.secret = secret
        self.peers = peers
        self.prefix = prefix or []
        self.port = port
        self.realm = realm
        self.tls = tls
        self.tls_port = tls_port
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.proc: subprocess.Popen[str] | None = None

    @property
    def urls(self) -> list[str]:
        """TURN over UDP, then over TCP, on the same port; then over TLS when it has one."""
        base = f"turn:{self.address}:{self.port}"
        return [f"{base}?transport=udp", f"{base}?transport=tcp",
                *([self.tls_url] if self.tls is not None else [])]

    @property
    def tls_url(self) -> str:
        """The ``turns:`` URL of the TLS listener (only listening with ``tls``)."""
        return f"turns:{self.address}:{self.tls_port}?transport=tcp"

    def config(self, workdir: Path) -> str:
        """The configuration file's text."""
        lines = [
            f"listening-ip={self.address}",
            f"relay-ip={self.address}",
            f"listening-port={self.port}",
            "min-port=49152",
            "max-port=65535",
            "use-auth-secret",
            f"static-auth-secret={self.secret}",
            f"realm={self.realm}",
            "fingerprint",
            "no-cli",
            *([f"tls-listening-port={self.tls_port}", f"cert={self.tls.cert}",
               f"pkey={self.tls.key}"] if self.tls is not None else ["no-tls"]),
            "no-dtls",
            "no-multicast-peers",
            "no-software-attribute",
            *(["allow-loopback-peers"] if self.address.startswith("127.") else []),
            "denied-peer-ip=0.0.0.0-255.255.255.255",
            *(f"allowed-peer-ip={peer}" for peer in self.peers),
            f"userdb={workdir / 'turndb'}",
            f"pidfile={workdir / 'turnserver.pid'}",
            f"log-file={workdir / 'turn.log'}",
            "simple-log",
            "no-stdout-log",
        ]
        return "\n".join(lines) + "\n"

    def log(self) -> str:
        """coturn's log so far (for failure messages)."""
        if self._dir is None:
            return ""
        path = Path(self._dir.name) / "turn.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> Coturn:
        binary = shutil.which("turnserver")
        if binary is None:
            raise CoturnUnavailable("turnserver not found: apt-get install coturn")
        self._dir = tempfile.TemporaryDirectory(prefix="coturn-")
        workdir = Path(self._dir.name)
        conf = workdir / "turnserver.conf"
        conf.write_text(self.config(workdir))
        self.proc = subprocess.Popen(
            [*self.prefix, binary, "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            self._wait_listening()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_listening(self, timeout: float = 15.0) -> None:
        """Until a TCP connect to the TURN port (and the TLS one) succeeds (UDP opens at the
        same time)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        ports = [self.port, *([self.tls_port] if self.tls is not None else [])]
        probe = [*self.prefix, sys.executable, "-c",
                 "import socket,sys\nfor p in sys.argv[2:]:"
                 " socket.create_connection((sys.argv[1], int(p)), 1).close()",
                 self.address, *map(str, ports)]
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CoturnUnavailable(f"turnserver exited {self.proc.returncode}: "
                                        f"{self.log()[-2000:]}")
            if not self.prefix:
                try:
                    for port in ports:
                        socket.create_connection((self.address, port), 1).close()
                    return
                except OSError:
                    pass
            elif subprocess.run(probe, capture_output=True, timeout=5).returncode == 0:
                return
            time.sleep(0.1)
        raise CoturnUnavailable(f"turnserver not listening within {timeout:g} s: "
                                f"{self.log()[-2000:]}")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc is not None and proc.stderr is not None:
            proc.stderr.close()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

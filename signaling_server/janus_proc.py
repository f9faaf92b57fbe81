"""Run a Janus gateway as a subprocess: a generated configuration on loopback, a free port.

The tests, ``make demo``'s group mode and the benchmarks start their SFU this way, as the
signaling server is started: :class:`JanusProcess` writes a minimal configuration into a
temporary folder (only the VideoRoom plugin and the HTTP transport, bound to 127.0.0.1 on a
free port, no admin API, no event handlers), runs ``janus -F <folder>`` and waits until its
HTTP API answers ``info``. :meth:`JanusProcess.kill` (SIGKILL) and :meth:`JanusProcess.start`
again on the same port are what the fault tests use.

CORS: the browser client calls the HTTP API from the signaling server's page, another origin.
Janus answers every request with ``Access-Control-Allow-Origin: *`` unless ``allow_origin``
is set (``--allow-origin``): then with that origin only, so browsers refuse the API to pages
of other origins. ``enforce_cors`` is never set: Janus would then refuse every request
without an ``Origin`` header, which is every request of the Python engine and the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import aiohttp

__all__ = ["JanusNotInstalledError", "JanusProcess", "free_port", "janus_binary"]

logger = logging.getLogger(__name__)

_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu/janus", "/usr/lib/aarch64-linux-gnu/janus",
             "/usr/lib/janus", "/opt/janus/lib/janus")
_START_TIMEOUT = 20.0
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+")


class JanusNotInstalledError(RuntimeError):
    """No ``janus`` binary or no VideoRoom plugin on this machine."""


def janus_binary() -> str:
    """The ``janus`` executable; :class:`JanusNotInstalledError` names the package to install."""
    path = shutil.which("janus")
    if path is None:
        raise JanusNotInstalledError(
            "janus is not installed: install the Debian package 'janus' (make setup does)"
        )
    return path


def _lib_dir() -> Path:
    for folder in _LIB_DIRS:
        if (Path(folder) / "plugins" / "libjanus_videoroom.so").exists():
            return Path(folder)
    raise JanusNotInstalledError(
        "the Janus VideoRoom plugin was not found in " + ", ".join(_LIB_DIRS)
    )


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _disabled(folder: Path, keep: str) -> str:
    names = sorted(p.name for p in folder.glob("libjanus_*.so"))
    return ",".join(n for n in names if n != keep)


def _write_config(folder: Path, port: int, lib: Path, allow_origin: str | None = None) -> None:
    (folder / "janus.jcfg").write_text(f"""\
general: {{
    configs_folder = "{folder}"
    plugins_folder = "{lib / 'plugins'}"
    transports_folder = "{lib / 'transports'}"
    events_folder = "{lib / 'events'}"
    loggers_folder = "{lib / 'loggers'}"
    debug_level = 3
    session_timeout = 30
    server_name = "callclient-sfu"
}}
media: {{
    rtp_port_range = "20000-60000"
}}
nat: {{
    nice_debug = false
    ice_ignore_list = "vmnet,docker"
}}
plugins: {{
    disable = "{_disabled(lib / 'plugins', 'libjanus_videoroom.so')}"
}}
transports: {{
    disable = "{_disabled(lib / 'transports', 'libjanus_http.so')}"
}}
loggers: {{
    disable = "{_disabled(lib / 'loggers', '')}"
}}
events: {{
    broadcast = false
    disable = "{_disabled(lib / 'events', '')}"
}}
""")
    (folder / "janus.transport.http.jcfg").write_text(f"""\
general: {{
    json = "compact"
    base_path = "/janus"
    http = true
    port = {port}
    ip = "127.0.0.1"
    https = false
}}
admin: {{
    admin_http = false
    admin_https = false
}}
cors: {{
{f'    allow_origin = "{allow_origin}"' if allow_origin else ""}
}}
""")
    # No static rooms: every room is created by the signaling server, with a secret.
    (folder / "janus.plugin.videoroom.jcfg").write_text("general: {\n}\n")


class JanusProcess:
    """One Janus gateway subprocess; ``async with JanusProcess() as janus: janus.url``."""

    def __init__(self, port: int | None = None, *, log_path: str | None = None,
                 allow_origin: str | None = None) -> None:
        if allow_origin is not None and not _ORIGIN.fullmatch(allow_origin):
            raise ValueError(f"allow_origin {allow_origin!r} is not an origin: give "
                             "scheme://host[:port], e.g. https://calls.example.com")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/janus"
        """The HTTP API root, what ``signaling-server --sfu`` takes."""
        self._folder = Path(tempfile.mkdtemp(prefix="janus-"))
        self._log_path = log_path or str(self._folder / "janus.log")
        self._proc: subprocess.Popen[bytes] | None = None
        _write_config(self._folder, self.port, _lib_dir(), allow_origin)

    @property
    def running(self) -> bool:
        """Whether the subprocess is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The subprocess id while running."""
        return self._proc.pid if self.running and self._proc is not None else None

    async def start(self) -> None:
        """Start Janus and wait until its API answers (raises if it does not in 20 s)."""
        if self.running:
            return
        self._launch()  # a fork and exec: quick, no reason to leave the loop for it
        deadline = time.monotonic() + _START_TIMEOUT
        async with aiohttp.ClientSession() as http:
            while True:
                if not self.running:
                    raise RuntimeError(f"janus exited at start; see {self._log_path}")
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with http.get(self.url + "/info",
                                        timeout=aiohttp.ClientTimeout(total=1)) as response:
                        if response.status == 200:
                            return
                if time.monotonic() > deadline:
                    await self.stop()
                    raise RuntimeError(f"janus did not answer in {_START_TIMEOUT:.0f} s; "
                                       f"see {self._log_path}")
                await asyncio.sleep(0.1)

    def _launch(self) -> None:
        with open(self._log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [janus_binary(), "-F", str(self._folder), "-o", "-L", self._log_path],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        """SIGKILL the gateway (a crash, for the fault tests)."""
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

    async def stop(self) -> None:
        """Stop the gateway (SIGTERM, then SIGKILL after 5 s). Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(asyncio.to_thread(proc.wait), 5.0)
        except TimeoutError:
            proc.kill()
            await asyncio.to_thread(proc.wait)

    async def aclose(self) -> None:
        """Stop the gateway and delete its configuration folder."""
        await self.stop()
        shutil.rmtree(self._folder, ignore_errors=True)

    async def __aenter__(self) -> JanusProcess:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def _run_with(command: list[str], allow_origin: str | None = None) -> int:
    async with JanusProcess(allow_origin=allow_origin) as janus:
        argv = [arg.replace("{url}", janus.url) for arg in command]
        print(f"janus at {janus.url} (log {janus._log_path})", file=sys.stderr, flush=True)
        child = await asyncio.create_subprocess_exec(*argv)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, child.send_signal, signum)
        return await child.wait()


def main(argv: list[str] | None = None) -> int:
    """``python -m signaling_server.janus_proc [--allow-origin ORIGIN] -- COMMAND ARGS``.

    Starts Janus on a free loopback port, runs the command with ``{url}`` in its arguments
    replaced by the Janus HTTP API URL, and stops Janus when the command exits. With
    ``--allow-origin`` Janus's CORS answers name that origin (the page's) instead of ``*``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    allow_origin = None
    if args[:1] == ["--allow-origin"] and len(args) > 1:
        allow_origin, args = args[1], args[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print(main.__doc__, file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run_with(args, allow_origin))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except JanusNotInstalledError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

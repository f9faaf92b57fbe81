"""The package as a user gets it: built into a wheel and an sdist, installed with pip into a
fresh virtual environment outside the checkout, every program run from another directory.

The build runs ``python -m build`` on a copy of the checkout's files (tracked and new, not
ignored), so the checkout gets no ``build/`` and the copy shows what a clean clone builds; it
runs without build isolation (the dev extra has the backend) so it needs no index. The
install uses pip with the machine's configuration (its index, its cache), dependencies
included, into ``python -m venv --without-pip``: nothing of the checkout or of the
development environment is on the installed programs' path.
"""

from __future__ import annotations

import asyncio
import email.parser
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import pytest

from callclient.apps.desktop import Layout
from callclient.media.pattern import read_stamp
from callwire.version import DISTRIBUTION, __version__
from tests.helpers.apps import logged_process
from tests.helpers.xvfb import close_window, find_window, screenshot

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("callwire", "callclient", "signaling_server")
DIST_INFO = f"{DISTRIBUTION}-{__version__}.dist-info"
SHIPPED_ASSETS = ("callclient/assets/ringback.wav", "callclient/assets/ringtone.wav")
WEB_CLIENT = tuple(sorted(
    f"signaling_server/webclient/{path}" for path in (
        "app.js", "favicon.svg", "index.html", "style.css", "lib/call.js", "lib/media.js",
        "lib/mesh.js", "lib/quality.js", "lib/sfu.js", "lib/signaling.js")
))
"""The browser client's files: served by the installed server from the package."""
WINDOW = (640, 360)

pytestmark = pytest.mark.timeout(600)  # the first test also builds and installs (~1-2 min)


@dataclass(frozen=True)
class Built:
    """What ``python -m build`` made: the sdist, its wheel, and a wheel of the tree itself."""

    sdist: Path
    wheel: Path
    """Built from the sdist (what ``python -m build`` does by default)."""
    tree_wheel: Path
    """Built straight from the source tree."""
    log: str


@dataclass(frozen=True)
class Installed:
    """A virtual environment holding the wheel, and where to run its programs from."""

    venv: Path
    elsewhere: Path
    env: dict[str, str]

    def bin(self, program: str) -> str:
        """The path of an installed program."""
        return str(self.venv / "bin" / program)

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run an installed program from outside the checkout; its result (exit 0 asserted)."""
        done = subprocess.run([self.bin(args[0]), *args[1:]], cwd=self.elsewhere, env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done


def _run(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    done = subprocess.run([str(a) for a in args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout + done.stderr


def _copy_checkout(to: Path) -> None:
    """Copy the checkout's tracked and new (not ignored) files: what a clean clone holds."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=False, timeout=60,
    )
    if listed.returncode != 0:
        pytest.fail(f"the wheel test copies the git checkout; git failed: {listed.stderr!r}")
    for name in listed.stdout.decode().split("\0"):
        source = ROOT / name
        if name and source.is_file():  # a tracked file deleted in the work tree is skipped
            (to / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, to / name)


def _build_env() -> dict[str, str]:
    # Without PYTHONDONTWRITEBYTECODE: with it, setuptools warns that it skips byte-compiling.
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The sdist and wheel of a copy of the checkout, and a wheel built from the tree."""
    work = tmp_path_factory.mktemp("build")
    source, dist, tree = work / "source", work / "dist", work / "tree"
    _copy_checkout(source)
    build = [sys.executable, "-m", "build", "--no-isolation"]
    log = _run(*build, "--outdir", dist, source, env=_build_env())
    log += _run(*build, "--wheel", "--outdir", tree, source, env=_build_env())
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    (tree_wheel,) = tree.glob("*.whl")
    return Built(sdist, wheel, tree_wheel, log)


@pytest.fixture(scope="module")
def installed(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """A fresh venv outside the checkout with the wheel and its dependencies installed."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    assert not venv.is_relative_to(ROOT)
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    # This environment's pip installs into the new one: no pip of its own to bootstrap. No
    # byte-compiling: it costs more (~40 s) than the programs' few starts save.
    _run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install",
         "--quiet", "--no-compile", built.wheel, timeout=480)
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    dropped = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items()
           if k not in dropped and not k.startswith("CALLSERVER_")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return Installed(venv, elsewhere, env)


def _members(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_wheel_ships_the_three_packages_their_data_and_the_license(built: Built) -> None:
    """The wheel holds callwire, callclient and signaling_server with py.typed each, the two
    tones, the LICENSE and complete metadata; no tests, benchmarks or benchmark media."""
    members = _members(built.wheel)
    assert {name.split("/")[0] for name in members} == {*PACKAGES, DIST_INFO}
    for package in PACKAGES:
        assert f"{package}/py.typed" in members
        assert f"{package}/__init__.py" in members
    data = sorted(n for n in members
                  if not n.endswith((".py", "py.typed")) and not n.startswith(DIST_INFO))
    assert data == sorted([*SHIPPED_ASSETS, *WEB_CLIENT])
    assert max(len(members[n]) for n in data) < 200_000
    assert members[f"{DIST_INFO}/licenses/LICENSE"].startswith(b"MIT License")
    meta = email.parser.Parser().parsestr(members[f"{DIST_INFO}/METADATA"].decode())
    assert (meta["Name"], meta["Version"]) == (DISTRIBUTION, __version__)
    assert meta["License-Expression"] == "MIT" and meta["License-File"] == "LICENSE"
    assert meta["Requires-Python"] == ">=3.11"
    assert {"bench", "test", "dev"} <= set(meta.get_all("Provides-Extra") or [])
    assert "Typing :: Typed" in (meta.get_all("Classifier") or [])
    assert meta.get_payload().startswith("# callclient")  # the README as the description
    entry_points = members[f"{DIST_INFO}/entry_points.txt"].decode()
    assert "callclient = callclient.cli:main" in entry_points
    assert "signaling-server = signaling_server.cli:main" in entry_points


def test_sdist_builds_the_same_wheel_as_the_tree(built: Built) -> None:
    """The wheel built from the sdist has the same files with the same bytes as one built
    straight from the source tree; the sdist has the LICENSE and docs, not the tests."""
    assert _members(built.wheel) == _members(built.tree_wheel)
    with tarfile.open(built.sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"LICENSE", "README.md", "pyproject.toml", "docs/protocol.md", *SHIPPED_ASSETS} <= names
    assert not any(name.startswith(("tests/", "bench/")) for name in names)


def test_build_prints_no_warning(built: Built) -> None:
    """Neither the sdist nor the wheels' builds warn about anything."""
    warnings = [line for line in built.log.splitlines() if re.search("warn", line, re.I)]
    assert warnings == []


def test_installed_programs_run_outside_the_checkout(installed: Installed) -> None:
    """From another directory, the installed packages (not the checkout's) answer:
    ``--version``, ``signaling-server --help``, ``callclient bot --help``, the tones' paths."""
    where = installed.run("python", "-c", (
        "import callwire, callclient, signaling_server\n"
        "from callclient.assets import RINGTONE, asset_path\n"
        "for module in (callwire, callclient, signaling_server):\n"
        "    print(module.__file__)\n"
        "print(asset_path(RINGTONE))\n"
        "from signaling_server.web import DEFAULT_WEB_ROOT\n"
        "print(DEFAULT_WEB_ROOT / 'index.html')\n"
    )).stdout.split()
    assert len(where) == 5
    for path in where:
        assert Path(path).is_relative_to(installed.venv), where
    assert Path(where[-2]).stat().st_size > 10_000
    assert b"<html" in Path(where[-1]).read_bytes()  # the browser client ships in the wheel
    assert installed.run("callclient", "--version").stdout == f"callclient {__version__}\n"
    assert installed.run("signaling-server", "--version").stdout == (
        f"signaling-server {__version__}\n")
    assert "usersig" in installed.run("signaling-server", "--help").stdout
    bot_help = installed.run("callclient", "bot", "--help").stdout
    assert "--auto-accept" in bot_help and "--record" in bot_help


def test_installed_demo_completes_a_call(installed: Installed) -> None:
    """``callclient demo --seconds 2`` (bot subprocess included) runs a call and writes the
    PNG of what alice saw, with bob's stamp in it."""
    out = installed.elsewhere / "demo-out"
    done = installed.run("callclient", "demo", "--seconds", "2", "--out", str(out), timeout=120)
    for line in ("alice: on_call_begin", "bob: on_call_begin", "bob exited with status 0"):
        assert line in done.stdout, done.stdout
    image = cv2.imread(str(out / "alice-sees-bob.png"))
    assert image is not None and read_stamp(image) is not None


async def _listening_url(log: Path, proc: asyncio.subprocess.Process) -> str:
    async with asyncio.timeout(30):
        while True:
            text = await asyncio.to_thread(log.read_text)
            found = re.search(r"listening on (ws://\S+)", text)
            if found:
                return found.group(1)
            assert proc.returncode is None, text
            await asyncio.sleep(0.1)


async def test_installed_desktop_app_opens_its_window(installed: Installed, display: str,
                                                      tmp_path: Path) -> None:
    """The installed ``signaling-server`` and ``callclient app --virtual`` under Xvfb: the
    window appears with the virtual camera's live preview (its stamp counting up), closing it
    exits 0, and SIGTERM stops the server with 0."""
    server_log, app_log = tmp_path / "server.log", tmp_path / "app.log"
    async with logged_process(installed.bin("signaling-server"), "--port", "0", "--db",
                              ":memory:", log=server_log, env=installed.env,
                              cwd=installed.elsewhere) as server:
        url = await _listening_url(server_log, server)
        app_env = dict(installed.env, DISPLAY=display)
        async with logged_process(installed.bin("callclient"), "app", "--user", "alice",
                                  "--server", url, "--virtual", "--window",
                                  f"{WINDOW[0]}x{WINDOW[1]}", log=app_log, env=app_env,
                                  cwd=installed.elsewhere) as app:
            window, x, y = await find_window(display, "^callclient - alice$")
            left, top, width, height = Layout(WINDOW, 1).rects[0]  # the preview's tile
            stamps: list[int] = []
            shot = None
            try:
                async with asyncio.timeout(60):  # the app logs in, then opens the camera
                    while len(set(stamps)) < 2:  # live: two frames, not one still
                        shot = await asyncio.to_thread(screenshot, display)
                        found = read_stamp(shot[y + top : y + top + height,
                                                x + left : x + left + width])
                        stamps += [found[0]] if found else []
                        await asyncio.sleep(0.2)
            finally:
                if shot is not None:  # what the test saw last, for a failure's post-mortem
                    cv2.imwrite(str(tmp_path / "screen.png"), shot)
            await asyncio.to_thread(close_window, display, window)
            async with asyncio.timeout(30):
                assert await app.wait() == 0, app_log.read_text()
        server.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await server.wait() == 0, server_log.read_text()

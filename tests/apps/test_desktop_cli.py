"""The desktop app's command line: refusals before any window opens."""

from __future__ import annotations

from pathlib import Path

import pytest

from callclient.apps.desktop import main
from callclient.assets import RINGBACK, RINGTONE, asset_path


def test_main_without_display_fails(monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Without DISPLAY the app says so and exits 2 instead of crashing in Qt."""
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert main(["--user", "alice", "--server", "ws://127.0.0.1:1"]) == 2
    assert "no display" in capsys.readouterr().err


def test_missing_ringtone_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A ringtone that does not exist is named, exit 2, before logging in."""
    monkeypatch.setenv("DISPLAY", ":0")
    missing = tmp_path / "nope.wav"
    assert main(["--user", "alice", "--server", "ws://127.0.0.1:1",
                 "--ringtone", str(missing)]) == 2
    assert f"no such sound file: {missing}" in capsys.readouterr().err


@pytest.mark.parametrize(("size", "error"), [("12x", "expected WxH"), ("100x100", "too small")])
def test_bad_window_size_is_refused(size: str, error: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """--window needs WxH of at least 160x120; argparse exits 2 with the reason."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--user", "alice", "--server", "ws://127.0.0.1:1", "--window", size])
    assert exit_info.value.code == 2
    assert error in capsys.readouterr().err


def test_default_tones_exist() -> None:
    """The bundled ringtone and ringback the command line defaults to are there."""
    for name in (RINGTONE, RINGBACK):
        assert asset_path(name).is_file(), asset_path(name)

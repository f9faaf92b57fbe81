"""The ``callclient`` command line: usage errors exit 2, failures exit 1 with one line."""

from __future__ import annotations

import argparse
import json

import pytest

from callclient.cli import main, parse_audio_processing, parse_resolution
from callclient.media.processing import AudioProcessing
from callclient.types import Resolution
from tests.helpers.apps import closed_port, run_module
from tests.helpers.servers import new_server

BAD_USAGE = [
    ([], "required"),
    (["fly"], "invalid choice"),
    (["bot", "--server", "ws://127.0.0.1:1"], "--user"),
    (["bot", "--user", "bob"], "--server"),
    (["bot", "--user", "bob", "--server", "http://x"], "ws://"),
    (["bot", "--user", "bob", "--server", "ws://x", "--resolution", "123x4"], "unknown resolution"),
    (["bot", "--user", "bob", "--server", "ws://x", "--media", "fax"], "audio or video"),
    (["bot", "--user", "bob", "--server", "ws://x", "--seconds", "-1"], "positive"),
    (["bot", "--user", "b", "--server", "ws://x", "--usersig", "s", "--secret-key", "k"],
     "not allowed"),
    (["bot", "--user", "b", "--server", "ws://x", "--audio-processing", "loud"],
     "unknown audio processing 'loud'"),
    (["loopback", "--users", "1"], "between 2 and 9"),
    (["loopback", "--seconds", "abc"], "not a number"),
    (["demo", "--seconds", "0"], "positive"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_USAGE)
def test_bad_flags_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each usage error returns 2 and says what is wrong on stderr."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err, err
    assert "Traceback" not in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    """``bot --help`` lists the options and returns 0."""
    assert main(["bot", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--auto-accept", "--call", "--play", "--record", "--usersig", "--human"):
        assert option in out


def test_parse_resolution() -> None:
    """Names, WxH, heights with p and numeric values all name a preset."""
    assert parse_resolution("RESOLUTION_1280_720") is Resolution.RESOLUTION_1280_720
    assert parse_resolution("1280x720") is Resolution.RESOLUTION_1280_720
    assert parse_resolution("1080p") is Resolution.RESOLUTION_1920_1080
    assert parse_resolution("720p") is Resolution.RESOLUTION_1280_720
    assert parse_resolution("0") is Resolution.RESOLUTION_640_360
    with pytest.raises(Exception, match="unknown resolution"):
        parse_resolution("4k")


OFF = AudioProcessing.off()


@pytest.mark.parametrize(("text", "expected"), [
    ("all", AudioProcessing()),
    ("on", AudioProcessing()),
    ("off", OFF),
    ("none", OFF),
    ("aec", OFF.with_changes(echo_cancellation=True)),
    ("ns", OFF.with_changes(noise_suppression=True)),
    ("agc", OFF.with_changes(auto_gain=True)),
    ("hpf", OFF.with_changes(high_pass_filter=True)),
    ("aec,ns", OFF.with_changes(echo_cancellation=True, noise_suppression=True)),
    (" NS , agc,", OFF.with_changes(noise_suppression=True, auto_gain=True)),
    ("hpf,aec,ns,agc", AudioProcessing()),
])
def test_parse_audio_processing(text: str, expected: AudioProcessing) -> None:
    """all/on, off/none, or a comma-separated set of stages in any order and case."""
    assert parse_audio_processing(text) == expected


@pytest.mark.parametrize("text", ["loud", "aec,echo", "", ",", "aec;ns", "all,off"])
def test_parse_audio_processing_names_the_valid_values(text: str) -> None:
    """A value that is not all, off or a set of known stages names what is accepted."""
    with pytest.raises(argparse.ArgumentTypeError) as caught:
        parse_audio_processing(text)
    message = str(caught.value)
    assert repr(text) in message
    assert "all, off" in message and "aec, ns, agc, hpf" in message


def test_bad_audio_processing_exits_2_naming_the_stages(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``bot --audio-processing aec,eq``: exit 2, one usage error naming the valid stages."""
    assert main(["bot", "--user", "b", "--server", "ws://x", "--audio-processing",
                 "aec,eq"]) == 2
    err = capsys.readouterr().err
    assert "argument --audio-processing" in err and "aec, ns, agc, hpf" in err, err
    assert "Traceback" not in err


async def test_unreachable_server_exits_1() -> None:
    """A server nobody listens on: exit 1, one error line with the code, no traceback."""
    url = f"ws://127.0.0.1:{closed_port()}"
    code, out, err = await run_module("callclient", "bot", "--user", "bob", "--server", url)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("callclient bot: error: [-1406]") and url in lines[0]
    assert "Traceback" not in err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["event"] for r in records] == ["bot_error", "bot_exit"]
    assert records[0]["args"][0] == -1406 and records[1]["args"] == [1]


async def test_bad_usersig_exits_1() -> None:
    """A refused login: exit 1 with the server's error code on one line."""
    async with new_server() as srv:
        code, _, err = await run_module("callclient", "bot", "--user", "bob", "--server",
                                        srv.url, "--usersig", "not-a-usersig")
    assert code == 1
    assert err.count("\n") == 1 and "callclient bot: error: [7000" in err, err
    assert "Traceback" not in err


async def test_missing_play_file_exits_1() -> None:
    """``--play`` of a file that does not exist: exit 1 naming the file."""
    code, _, err = await run_module("callclient", "bot", "--user", "bob", "--server",
                                    "ws://127.0.0.1:1", "--play", "/nonexistent/clip.mp4")
    assert code == 1
    assert "error:" in err and "/nonexistent/clip.mp4" in err and "Traceback" not in err


async def test_loopback_json() -> None:
    """``callclient loopback --json`` prints a parseable report of both directions."""
    code, out, err = await run_module("callclient", "loopback", "--seconds", "1", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert set(data["users"]) == {"user0", "user1"}
    assert data["users"]["user1"]["user0"]["frames"] > 0
    assert data["users"]["user0"]["user1"]["dominant_hz"] == pytest.approx(400, abs=10)

"""``callclient bot`` as a real subprocess: auto-accept, JSON event log, recordings, signals."""

from __future__ import annotations

import asyncio
import signal
import wave
from pathlib import Path

import av
import numpy as np
import pytest

from callclient.apps.bot import Bot, BotConfig
from callclient.apps.events import format_human
from callclient.engine import CallEngine
from callclient.media.analysis import dominant_frequency
from callclient.media.base import MemoryView
from callclient.media.deviceset import DeviceSet
from callclient.media.pattern import read_stamp
from callclient.media.processing import AudioProcessing
from callclient.media.virtual import Tone, VirtualSpeaker
from callclient.sfu import SfuTransport
from callclient.types import AudioPlaybackDevice, CallMediaType
from callwire.dev import DEV_SDK_APP_ID
from signaling_server.core import CoreConfig
from signaling_server.janus_proc import JanusProcess
from tests.helpers.apps import BotProcess
from tests.helpers.servers import new_server, sig
from tests.helpers.waits import T, eventually

CALLER_TONE = 520.0


def decoded_stamps(path: Path) -> list[int]:
    """The stamp counters read from every decoded frame of an MP4 (None-less)."""
    counters: list[int] = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            found = read_stamp(frame.to_ndarray(format="bgr24"), rotations=False)
            if found is not None:
                counters.append(found[0])
    return counters


def wav_samples(path: Path) -> tuple[int, np.ndarray]:
    """(sample rate, int16 mono samples) of a WAV file."""
    with wave.open(str(path), "rb") as wav:
        assert wav.getnchannels() == 1 and wav.getsampwidth() == 2
        return wav.getframerate(), np.frombuffer(wav.readframes(wav.getnframes()), np.int16)


async def call_bot(url: str, seconds: float, hang_up: bool) -> tuple[CallEngine, MemoryView]:
    """alice calls bob for ``seconds`` (hanging up after if ``hang_up``); returns her engine."""
    alice = CallEngine(url, devices=DeviceSet.virtual("alice", program=Tone(CALLER_TONE, 0.3)))
    view = MemoryView()
    alice.start_remote_view("bob", view)
    await alice.login(DEV_SDK_APP_ID, "alice", sig("alice"))
    await alice.open_camera()
    await alice.call("bob", CallMediaType.VIDEO)
    await view.wait_frames(1, 15)
    await asyncio.sleep(seconds)
    if hang_up:
        await alice.hangup()
    return alice, view


def check_recording(directory: Path, min_seconds: float) -> None:
    """alice.mp4 decodes to stamped frames in order, alice.wav holds her tone.

    The amounts are checked loosely (a quarter of the frames and half of the audio a quiet
    machine records in ``min_seconds``): on a loaded machine the sender's frame rate drops, and
    what matters here is that the recording holds her stream, in order, decodable.
    """
    counters = decoded_stamps(directory / "alice.mp4")
    assert len(counters) >= max(10, 30 * min_seconds * 0.25), len(counters)
    assert counters == sorted(counters) and counters[-1] > counters[0]
    rate, samples = wav_samples(directory / "alice.wav")
    assert rate == 48000
    assert samples.size >= rate * min_seconds * 0.5
    middle = samples[samples.size // 2 - rate // 2 : samples.size // 2 + rate // 2]
    assert abs(dominant_frequency(middle) - CALLER_TONE) <= 10.0


async def test_bot_answers_records_and_exits_on_sigterm(tmp_path: Path) -> None:
    """The bot accepts alice's call, logs it as JSON, records her, and SIGTERM exits 0."""
    record = tmp_path / "rec"
    async with new_server() as srv:
        bot = await BotProcess.start("--user", "bob", "--server", srv.url, "--auto-accept",
                                     "--record", str(record))
        try:
            await bot.wait_event("bot_ready")
            alice, view = await call_bot(srv.url, 3.0, hang_up=True)
            try:
                assert view.count > 30
                await bot.wait_event("on_call_end")
                recording = await bot.wait_event("bot_recording", timeout=15)
            finally:
                await alice.close()
            code = await bot.stop(signal.SIGTERM)
        finally:
            await bot.kill()
    assert code == 0, bot.stderr
    assert "Traceback" not in bot.stderr
    names = [r["event"] for r in bot.records]
    for expected in ("on_call_received", "on_call_begin", "on_user_join", "on_call_end"):
        assert expected in names, names
    assert names[-1] == "bot_exit"
    for r in bot.records:
        assert set(r) == {"t", "user", "event", "args"}
        assert r["user"] == "bob" and isinstance(r["t"], float)
    received = bot.events("on_call_received")[0]["args"]
    assert received == ["alice", ["bob"], "", "VIDEO"]
    assert bot.events("on_call_begin")[0]["args"][1:] == ["VIDEO", "CALLED"]
    # One machine, no ICE servers: alice's media came on a host pair over UDP, logged once.
    assert [r["args"] for r in bot.events("bot_media_path")] == [
        ["alice", "host", "host", "udp"]]
    info = recording["args"][0]
    assert info["user"] == "alice" and info["video_frames"] > 30
    assert info["latency_median_ms"] is not None and info["latency_median_ms"] > 0
    check_recording(record, 3.0)


async def test_sigint_mid_call_hangs_up_and_finalizes(tmp_path: Path) -> None:
    """SIGINT during a call: the caller sees the call end, exit 0, the files are playable."""
    record = tmp_path / "rec"
    async with new_server() as srv:
        bot = await BotProcess.start("--user", "bob", "--server", srv.url, "--auto-accept",
                                     "--record", str(record))
        try:
            await bot.wait_event("bot_ready")
            alice, _ = await call_bot(srv.url, 2.0, hang_up=False)
            try:
                events = alice.events()
                code = await bot.stop(signal.SIGINT)
                async with asyncio.timeout(10):
                    async for event in events:
                        if event.name == "on_call_end":
                            break
            finally:
                await alice.close()
        finally:
            await bot.kill()
    assert code == 0, bot.stderr
    assert [r["event"] for r in bot.records][-2:] == ["bot_recording", "bot_exit"]
    check_recording(record, 2.0)


async def test_bot_places_a_call_and_exits_when_it_ends(tmp_path: Path) -> None:
    """``--call alice --seconds``: the bot calls, alice hears its tone, and it exits 0 alone."""
    async with new_server() as srv:
        alice = CallEngine(srv.url)
        try:
            await alice.login(DEV_SDK_APP_ID, "alice", sig("alice"))
            events = alice.events()
            view = MemoryView()
            alice.start_remote_view("bob", view)
            bot = await BotProcess.start("--user", "bob", "--server", srv.url, "--call", "alice",
                                         "--media", "video", "--tone", "700", "--seconds", "6")
            try:
                async with asyncio.timeout(30):
                    async for event in events:
                        if event.name == "on_call_received":
                            await alice.open_camera()
                            await alice.accept()
                            break
                await view.wait_frames(10, 15)
                async with asyncio.timeout(30):
                    code = await bot.proc.wait()
                await bot.stop()
            finally:
                await bot.kill()
            speaker = alice.devices.speakers[AudioPlaybackDevice.SPEAKERPHONE]
            assert isinstance(speaker, VirtualSpeaker)
        finally:
            await alice.close()
    assert code == 0, bot.stderr
    assert read_stamp(view.frames[-1].image) is not None
    names = [r["event"] for r in bot.records]
    assert "on_call_begin" in names and "on_call_end" in names
    assert abs(dominant_frequency(speaker.samples()[-48000:]) - 700.0) <= 10.0


def write_clip(path: Path, seconds: float, tone: float) -> None:
    """An MP4 with stamped test-pattern video (25 fps) and an AAC tone."""
    from callclient.media.virtual import VirtualCamera

    camera = VirtualCamera(320, 180)
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=25)
        video.width, video.height, video.pix_fmt = 320, 180, "yuv420p"
        audio = container.add_stream("aac", rate=48000)
        audio.layout = "mono"
        for i in range(int(seconds * 25)):
            frame = av.VideoFrame.from_ndarray(camera.draw(i, 0.0), format="bgr24")
            for packet in video.encode(frame.reformat(format="yuv420p")):
                container.mux(packet)
        n = np.arange(int(seconds * 48000))
        samples = (0.3 * np.sin(2 * np.pi * tone * n / 48000)).astype(np.float32)
        for start in range(0, samples.size, 1024):
            chunk = samples[start : start + 1024]
            block = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
            block.sample_rate = 48000
            block.pts = start
            for packet in audio.encode(block):
                container.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode(None):
                container.mux(packet)


async def test_bot_api_plays_a_file(tmp_path: Path) -> None:
    """The ``Bot`` API with ``play``: the caller sees the file's frames and hears its audio."""
    clip = tmp_path / "clip.mp4"
    write_clip(clip, 2.0, 600.0)
    records: list[dict[str, object]] = []
    async with new_server() as srv:
        bot = Bot(BotConfig("bob", srv.url, auto_accept=True, play=clip), records.append)
        try:
            await bot.start()
            assert records[0]["event"] == "bot_ready"
            alice, view = await call_bot(srv.url, 3.0, hang_up=True)
            speaker = alice.devices.speakers[AudioPlaybackDevice.SPEAKERPHONE]
            assert isinstance(speaker, VirtualSpeaker)
            heard = dominant_frequency(speaker.samples()[-48000:])
            frames = view.frames
            await alice.close()
        finally:
            await bot.close()
            await bot.close()
        code = bot.exit_code
    assert code == 0
    assert abs(heard - 600.0) <= 10.0, heard
    found = read_stamp(frames[-1].image)
    assert found is not None and 0 <= found[0] < 50  # a frame of the 2 s clip, looping
    assert records[-1]["event"] == "bot_exit"


async def test_bot_log_shows_nicknames() -> None:
    """The bot's records of callbacks about users whose nickname the engine knows carry
    ``names``; the human format shows them; the bot's own nickname reaches the caller."""
    records: list[dict[str, object]] = []
    async with new_server() as srv:
        bot = Bot(BotConfig("bob", srv.url, auto_accept=True, media=CallMediaType.AUDIO,
                            nickname="Bob the bot"), records.append)
        alice = CallEngine(srv.url)
        try:
            await bot.start()
            await alice.login(DEV_SDK_APP_ID, "alice", sig("alice"), nickname="Alice")
            events = alice.events()
            await alice.call("bob", CallMediaType.AUDIO)
            async with asyncio.timeout(15):
                async for event in events:
                    if event.name == "on_user_join":
                        break
            known = alice.user_info("bob")
            await alice.hangup()
        finally:
            await alice.close()
            await bot.close()
    received = next(r for r in records if r["event"] == "on_call_received")
    assert received["names"] == {"alice": "Alice"}
    joined = next(r for r in records if r["event"] == "on_user_join")
    assert joined["names"] == {"alice": "Alice"}
    assert "names" not in records[0]  # bot_ready names nobody
    assert format_human(received).endswith("[alice=Alice]")
    assert known is not None and known.nickname == "Bob the bot"


SFU_TONES = {"bob": 400.0, "carol": 900.0, "dave": 1500.0}
"""No sum or difference of two of these lands within 100 Hz of the third."""


async def test_bots_in_an_sfu_call_record_every_participant(tmp_path: Path) -> None:
    """bob group-calls carol and dave through a Janus subprocess, all three recording: each
    bot's folder holds an MP4 of each other participant's stamped frames, in order, and a WAV
    of their tone (``--sfu``: the call is not meshed)."""
    async with JanusProcess() as janus, new_server(core=CoreConfig(sfu=(janus.url,))) as srv:
        bots = {user: Bot(BotConfig(user, srv.url, auto_accept=user != "bob", fps=15.0,
                                    tone_hz=tone, record=tmp_path / user,
                                    call=("carol", "dave") if user == "bob" else ()))
                for user, tone in SFU_TONES.items()}
        try:
            for user in ("carol", "dave", "bob"):
                await bots[user].start()
            for user, bot in bots.items():
                for other in SFU_TONES:
                    if other != user:
                        await eventually(
                            lambda bot=bot, other=other: (
                                (stats := bot.engine.remote_stats.get(other)) is not None
                                and stats.video_frames >= 15),
                            f"{user} decoded 15 frames of {other}", timeout=3 * T)
                assert isinstance(bot.engine._media.transport, SfuTransport), user
            await asyncio.sleep(2.0)
        finally:
            for bot in bots.values():
                await bot.close()
    for user in SFU_TONES:
        recorded = sorted(p.name for p in (tmp_path / user).iterdir())
        others = [o for o in SFU_TONES if o != user]
        assert recorded == sorted([f"{o}.mp4" for o in others] + [f"{o}.wav" for o in others])
        for other in others:
            counters = decoded_stamps(tmp_path / user / f"{other}.mp4")
            assert len(counters) >= 10, (user, other, len(counters))
            assert counters == sorted(counters) and counters[-1] > counters[0], (user, other)
            rate, samples = wav_samples(tmp_path / user / f"{other}.wav")
            assert samples.size >= rate, (user, other, samples.size)
            last = samples[-rate:]
            assert abs(dominant_frequency(last) - SFU_TONES[other]) <= 10.0, (user, other)


@pytest.mark.parametrize(("flags", "label"), [
    ([], "off"),
    (["--audio-processing"], "AEC NS AGC HPF"),
    (["--audio-processing", "ns,agc"], "NS AGC"),
    (["--audio-processing", "off"], "off"),
])
async def test_bot_passes_audio_processing_to_its_engine(flags: list[str], label: str) -> None:
    """``callclient bot --audio-processing``: the stages the bot's engine runs, as bot_ready
    reports them (the default: off, the bot's devices being virtual)."""
    async with new_server() as srv:
        bot = await BotProcess.start("--user", "bob", "--server", srv.url, *flags)
        try:
            ready = await bot.wait_event("bot_ready")
            code = await bot.stop(signal.SIGTERM)
        finally:
            await bot.kill()
    assert ready["args"] == [srv.url, label]
    assert code == 0, bot.stderr


async def test_bot_api_hands_audio_processing_to_the_engine() -> None:
    """``BotConfig.audio_processing`` is what the engine runs; None keeps its default."""
    chosen = AudioProcessing.off().with_changes(echo_cancellation=True, auto_gain=True)
    async with new_server() as srv:
        for config, expected in ((chosen, chosen), (None, AudioProcessing.off())):
            bot = Bot(BotConfig("bob", srv.url, audio_processing=config))
            try:
                assert bot.engine.audio_processing == expected
            finally:
                await bot.close()

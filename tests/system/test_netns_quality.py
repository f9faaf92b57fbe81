"""Network quality under real packet loss: nftables drops UDP inside a network namespace.

The signaling server and two engines (an audio+video call, ``alice`` calls ``bob``) run in
:mod:`impair_child`, started inside a namespace made by :class:`netns.Namespace`; this test
process stays outside and changes the namespace's nftables rules between phases. Only UDP (the
media) is dropped, the signaling's TCP is untouched. One call serves every phase (module
fixture), in file order: 0 %, 5 %, 20 % loss, then all UDP dropped and restored. Each test
sets its own rule first, so each also runs alone.

The engines use their default intervals: volume every 0.3 s, quality every 2 s, DOWN reported
at once. Timestamps are CLOCK_MONOTONIC, shared by both processes.

Where namespaces cannot be made (not root, no iproute2 or nftables) the fixture raises
:class:`netns.NamespaceUnavailable`: every test here errors with that message, none is skipped.

What aiortc does during a total drop (checked in aioice 0.13 / aiortc 1.16): ICE consent
freshness (RFC 7675) sends a check every 4..6 s and gives up after 6 failures in a row, so the
connection survives about 25 s without any UDP; DTLS has no timeout and SCTP only retransmits,
so a drop of a few seconds could keep the same connection. aiortc has no ICE restart; the
engine instead replaces a connection whose path has been silent for 2 s by a fresh one
(``PeerConfig.restart_after``, docs/protocol.md "Media restart"), which connects once UDP
flows again: the same call, nobody leaves, and the link reads DOWN until the new one carries
media. Video
resumes later than audio: aiortc's video jitter buffer (512 packets) waits for the packets
lost in the gap, which the sender can no longer retransmit (its history holds 128), until 512
newer packets push them out (aiortc PR #1418); at this call's packet rate that is 5..10 s.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

import pytest

from callclient.types import NetworkQuality as Q
from tests.helpers.jsonchild import JsonChild
from tests.helpers.netns import Namespace

CHILD = "tests.helpers.impair_child"
USERS = ("alice", "bob")

Report = tuple[float, str, dict[str, Q]]
"""A quality report: when (monotonic), whose engine, ``{user: level}``."""


class Child(JsonChild):
    """The call process inside the namespace: its JSON lines, kept in order, and commands."""

    def __init__(self, ns: Namespace, stderr: IO[str]) -> None:
        super().__init__(ns.command(sys.executable, "-m", CHILD, "--host", ns.address), stderr,
                         name="the call process")
        self.ns = ns

    def reports(self, start: int) -> list[Report]:
        """Quality reports from index ``start`` on."""
        return [
            (item["t"], item["who"], {user: Q(level) for user, level in item["args"][0].items()})
            for item in self.since(start)
            if item["ev"] == "on_user_network_quality_changed"
        ]

    def stats(self) -> dict[str, dict[str, Any]]:
        """Fresh receive counters of both engines."""
        start = self.mark()
        self.send(cmd="report")
        self.wait_for(lambda item: item["ev"] == "ok", 5.0, "report reply", start)
        latest: dict[str, dict[str, Any]] = {}
        for item in self.since(start):
            if item["ev"] == "stats":
                latest[item["who"]] = item
        return latest


@pytest.fixture(scope="module")
def call() -> Iterator[Child]:
    """A connected audio+video call inside a fresh namespace (deleted afterwards)."""
    with Namespace() as ns, tempfile.TemporaryFile(mode="w+") as stderr:
        child = Child(ns, stderr)
        try:
            child.wait_for(lambda item: item["ev"] == "ready", 40.0, "connected call")
            yield child
        finally:
            child.close()
        ends = [i for i in child.lines if i["ev"] in ("on_call_end", "on_user_leave")]
        assert not ends, f"the call ended during the impairment tests: {ends}"


def show(reports: list[Report], since: float) -> str:
    """Reports as text lines, times relative to ``since``."""
    return "\n".join(
        f"  {t - since:+6.2f} s {who}: "
        + ", ".join(f"{user}={level.name}" for user, level in levels.items())
        for t, who, levels in reports
    )


def first_per_side(
    child: Child, start: int, timeout: float, check: Callable[[Q], bool], what: str
) -> dict[tuple[str, str], float]:
    """When each side first reported each user passing ``check`` (time of that report)."""
    seen: dict[tuple[str, str], float] = {}
    wanted = {(side, user) for side in USERS for user in USERS}
    deadline = time.monotonic() + timeout
    since = time.monotonic()
    while True:
        for t, who, levels in child.reports(start):
            for user, level in levels.items():
                if check(level):
                    seen.setdefault((who, user), t)
        if wanted <= seen.keys():
            return seen
        if time.monotonic() >= deadline:
            pytest.fail(
                f"not every user rated {what} by both sides within {timeout:g} s "
                f"(missing {sorted(wanted - seen.keys())}); reports:\n"
                + show(child.reports(start), since)
            )
        time.sleep(0.1)


def no_call_end(child: Child) -> None:
    """The call is still up: nobody left and it did not end."""
    ends = [i for i in child.lines if i["ev"] in ("on_call_end", "on_user_leave")]
    assert not ends, f"the call ended: {ends}\n{child.stderr_tail()}"


def test_no_loss_rates_excellent_or_good(call: Child) -> None:
    """0 % loss: after 6 s both sides rate both users EXCELLENT or GOOD, never worse."""
    call.ns.clear_rules()
    start, since = call.mark(), time.monotonic()
    time.sleep(6.0)
    reports = call.reports(start)
    text = show(reports, since)
    print(f"0 % loss:\n{text}")
    for side in USERS:
        mine = [levels for _, who, levels in reports if who == side]
        assert len(mine) >= 2, f"{side} reported quality {len(mine)} times in 6 s:\n{text}"
        for levels in mine:
            assert set(levels) == set(USERS), f"{side} reported {levels}"
            assert all(q in (Q.UNKNOWN, Q.EXCELLENT, Q.GOOD) for q in levels.values()), text
        assert all(q in (Q.EXCELLENT, Q.GOOD) for q in mine[-1].values()), text


def test_five_percent_loss_rates_poor_or_worse(call: Child) -> None:
    """5 % UDP loss each way: both sides rate both users POOR or worse within 8 s, not DOWN."""
    start, since = call.mark(), time.monotonic()
    call.ns.set_udp_loss(5)
    seen = first_per_side(call, start, 8.0, lambda q: q >= Q.POOR, "POOR or worse")
    time.sleep(max(0.0, since + 6.0 - time.monotonic()))
    reports = call.reports(start)
    print(f"5 % loss:\n{show(reports, since)}")
    print({key: round(t - since, 2) for key, t in seen.items()})
    assert all(q is not Q.DOWN for _, _, levels in reports for q in levels.values()), (
        "5 % loss rated DOWN:\n" + show(reports, since)
    )
    no_call_end(call)


def test_twenty_percent_loss_rates_bad_or_worse_and_audio_flows(call: Child) -> None:
    """20 % UDP loss: BAD or worse within 8 s, never DOWN; the call stays up, audio arrives."""
    start, since = call.mark(), time.monotonic()
    call.ns.set_udp_loss(20)
    before = call.stats()
    seen = first_per_side(call, start, 8.0, lambda q: q >= Q.BAD, "BAD or worse")
    time.sleep(max(0.0, since + 6.0 - time.monotonic()))
    after = call.stats()
    reports = call.reports(start)
    print(f"20 % loss:\n{show(reports, since)}")
    print({key: round(t - since, 2) for key, t in seen.items()})
    assert all(q is not Q.DOWN for _, _, levels in reports for q in levels.values()), (
        "20 % loss rated DOWN:\n" + show(reports, since)
    )
    counts = [i for i in call.since(start) if i["ev"] == "stats"]
    for user in USERS:
        blocks = after[user]["audio_blocks"] - before[user]["audio_blocks"]
        elapsed = after[user]["t"] - before[user]["t"]
        print(f"{user}: {blocks} audio blocks in {elapsed:.1f} s at 20 % loss")
        # aiortc's audio jitter buffer (16 packets) waits out every gap, so far fewer than the
        # 50 blocks/s sent come out (about 10/s here): require 3/s, and no second without any.
        assert blocks >= 3 * elapsed, f"{user} got only {blocks} blocks in {elapsed:.1f} s"
        mine = [(i["t"], i["audio_blocks"]) for i in counts if i["who"] == user]
        last_new = mine[0][0]
        for (_, previous), (t, now) in itertools.pairwise(mine):
            if now > previous:
                last_new = t
            assert t - last_new <= 1.6, f"{user}: no audio block for {t - last_new:.1f} s"
        assert after[user]["call_id"] == before[user]["call_id"] is not None
    no_call_end(call)


def test_total_drop_is_down_within_3_s_and_recovers_in_the_same_call(call: Child) -> None:
    """All UDP dropped: DOWN within 3 s; rule removed: levels recover, audio and video resume.

    The time is from just before the rule is installed to the first report with DOWN, for each
    side and each user. The drop lasts until both sides report everyone DOWN (about 3 s), far
    shorter than ICE consent freshness (about 25 s), so the same connection carries on.
    """
    call.ns.clear_rules()
    time.sleep(1.0)
    before = call.stats()
    start, since = call.mark(), time.monotonic()
    call.ns.drop_all_udp()
    down = first_per_side(call, start, 6.0, lambda q: q is Q.DOWN, "DOWN")
    delays = {key: t - since for key, t in down.items()}
    print("DOWN after:", {f"{side} sees {user}": f"{d:.2f} s" for (side, user), d in
                          sorted(delays.items())})
    assert max(delays.values()) <= 3.0, "DOWN later than 3 s:\n" + show(
        call.reports(start), since
    )
    stalled = call.stats()

    restart, cleared = call.mark(), time.monotonic()
    call.ns.clear_rules()
    up = first_per_side(
        call, restart, 10.0, lambda q: Q.UNKNOWN < q < Q.DOWN, "better than DOWN"
    )
    print("up again after:", {f"{side} sees {user}": f"{t - cleared:.2f} s" for (side, user), t
                              in sorted(up.items())})

    def flowing(counter: str, more: int) -> Callable[[dict[str, Any]], bool]:
        got: set[str] = set()

        def check(item: dict[str, Any]) -> bool:
            if item["ev"] == "stats" and item[counter] >= stalled[item["who"]][counter] + more:
                got.add(item["who"])
            return got == set(USERS)

        return check

    audio = call.wait_for(flowing("audio_blocks", 25), 5.0, "audio after the drop", restart)
    video = call.wait_for(flowing("video_frames", 5), 20.0, "video after the drop", restart)
    print(f"audio flowing {audio['t'] - cleared:.2f} s, video {video['t'] - cleared:.2f} s "
          "after the rule was removed")
    print(f"drop and recovery:\n{show(call.reports(start), since)}")
    after = call.stats()
    for user in USERS:
        assert after[user]["call_id"] == before[user]["call_id"] is not None
    no_call_end(call)

"""RecordWriter: batched, ordered call-record writes from asyncio on one worker thread."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from signaling_server.records import OutboxRow, ParticipantOutcome, ProfileUpdate, StoredCall
from signaling_server.store import CallStore, RecordWriter

APP = 1400000001


def make_call(call_id: str, start: float = 1000.0, result: str = "") -> StoredCall:
    """A call from alice to bob."""
    return StoredCall(
        call_id=call_id,
        sdk_app_id=APP,
        caller="alice",
        callees=["bob"],
        scene=2,
        media_type=1,
        room_id=call_id,
        group_id="",
        start_ts=start,
        accept_ts=None,
        end_ts=None,
        result=result,
        participants={"alice": ParticipantOutcome(1, 3), "bob": ParticipantOutcome(2, 1)},
    )


class BatchLog(CallStore):
    """A real store that also remembers the size of every batch it was given."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.batches: list[list[str]] = []

    def save(
        self,
        calls: Sequence[StoredCall],
        outbox: Sequence[OutboxRow] = (),
        profiles: Sequence[ProfileUpdate] = (),
    ) -> list[int]:
        """Record the batch, then save it."""
        self.batches.append([c.call_id for c in calls])
        return super().save(calls, outbox, profiles)


async def hold_worker(writer: RecordWriter) -> tuple[threading.Event, asyncio.Task[bool]]:
    """Keep the worker busy in a query until the returned event is set."""
    release, busy = threading.Event(), threading.Event()

    def block() -> bool:
        busy.set()
        return release.wait(10)

    task = asyncio.ensure_future(writer.run_query(block))
    await asyncio.to_thread(busy.wait, 10)
    return release, task


async def test_thousands_of_submits_are_all_committed(tmp_path: Path) -> None:
    """5,000 submits followed by flush are all in the database, in few transactions."""
    store = BatchLog(str(tmp_path / "calls.db"))
    writer = RecordWriter(store, max_batch=512)
    for i in range(5000):
        writer.submit(make_call(f"c{i:04d}", float(i)))
    await writer.flush()
    found = await writer.run_query(store.find_calls, APP, limit=10_000)
    assert [c.call_id for c in found] == [f"c{i:04d}" for i in range(5000)]
    assert writer.committed == 5000 and writer.failed == 0
    assert max(len(b) for b in store.batches) <= 512
    assert len(store.batches) < 5000
    await writer.close()


async def test_repeated_submissions_are_coalesced() -> None:
    """Versions of one call queued together are written once, as the latest version."""
    store = BatchLog(":memory:")
    writer = RecordWriter(store)
    release, held = await hold_worker(writer)
    for i in range(100):
        call = make_call("c1", result="" if i < 99 else "normal_end")
        call.user_data = str(i)
        writer.submit(call)
    writer.submit(make_call("c2"))
    release.set()
    assert await held
    await writer.flush()
    assert store.batches == [["c1", "c2"]]
    stored = await writer.run_query(store.get_call, APP, "c1")
    assert stored is not None and (stored.user_data, stored.result) == ("99", "normal_end")
    await writer.close()


async def test_batches_are_bounded_by_max_batch() -> None:
    """A backlog is committed in batches of at most max_batch calls, in submission order."""
    store = BatchLog(":memory:")
    writer = RecordWriter(store, max_batch=3)
    release, held = await hold_worker(writer)
    for i in range(7):
        writer.submit(make_call(f"c{i}"))
    release.set()
    await held
    await writer.flush()
    assert store.batches == [["c0", "c1", "c2"], ["c3", "c4", "c5"], ["c6"]]
    await writer.close()


async def test_submit_takes_a_snapshot() -> None:
    """Changing a call after submitting it does not change what is written."""
    store = CallStore(":memory:")
    writer = RecordWriter(store)
    release, held = await hold_worker(writer)
    call = make_call("c1")
    writer.submit(call)
    call.result = "cancel"
    call.callees.append("carol")
    call.participants["bob"].result_type = 3
    release.set()
    await held
    await writer.flush()
    assert await writer.run_query(store.get_call, APP, "c1") == make_call("c1")
    await writer.close()


async def test_run_query_sees_earlier_submits_on_the_worker_thread() -> None:
    """A query runs on the worker thread after everything submitted before it."""
    store = CallStore(":memory:")
    writer = RecordWriter(store)
    writer.submit(make_call("c1"))
    records = await writer.run_query(store.recent_calls, APP, "bob", None, None, None)
    assert [r["callId"] for r in records] == ["c1"]
    thread = await writer.run_query(threading.current_thread)
    assert thread is not threading.current_thread() and thread.name.startswith("record-writer")
    assert thread.daemon is False
    with pytest.raises(ZeroDivisionError):
        await writer.run_query(lambda: 1 / 0)
    assert await writer.run_query(store.find_calls, APP, user_id="bob", limit=5) != []
    await writer.close()


async def test_flush_does_not_block_the_event_loop() -> None:
    """While the worker is busy, flush waits and other coroutines keep running."""
    writer = RecordWriter(CallStore(":memory:"))
    release, held = await hold_worker(writer)
    writer.submit(make_call("c1"))
    flushing = asyncio.ensure_future(writer.flush())
    ticks = 0
    for _ in range(5):
        await asyncio.sleep(0.01)
        ticks += 1
    assert ticks == 5 and not flushing.done()
    release.set()
    await asyncio.wait_for(flushing, 10)
    await held
    assert writer.committed == 1
    await writer.close()


async def test_failed_record_does_not_lose_the_batch() -> None:
    """A record that cannot be written is counted and logged; the rest of its batch is kept."""
    store = CallStore(":memory:")
    writer = RecordWriter(store)
    release, held = await hold_worker(writer)
    bad = make_call("bad")
    bad.room_id = True
    for call in (make_call("a"), bad, make_call("b")):
        writer.submit(call)
    release.set()
    await held
    await writer.flush()
    assert (writer.committed, writer.failed) == (2, 1)
    found = await writer.run_query(store.find_calls, APP)
    assert [c.call_id for c in found] == ["a", "b"]
    await writer.close()


async def test_close_writes_the_queue_and_is_idempotent(tmp_path: Path) -> None:
    """close commits what was queued, closes the store and can be called again or concurrently."""
    path = str(tmp_path / "calls.db")
    store = CallStore(path)
    writer = RecordWriter(store)
    for i in range(300):
        writer.submit(make_call(f"c{i:03d}", float(i)))
    await asyncio.gather(writer.close(), writer.close())
    await writer.close()
    await writer.flush()
    assert writer.closed and store.closed
    with pytest.raises(RuntimeError):
        writer.submit(make_call("late"))
    with pytest.raises(RuntimeError):
        await writer.run_query(store.open_calls)
    reopened = CallStore(path)
    assert len(reopened.find_calls(APP, limit=1000)) == 300
    reopened.close()


_NEVER_CLOSED = textwrap.dedent(
    """
    import sys
    from signaling_server.records import OutboxRow, ParticipantOutcome, ProfileUpdate, StoredCall
    from signaling_server.store import CallStore, RecordWriter

    writer = RecordWriter(CallStore(sys.argv[1]))
    for i in range(50):
        writer.submit(StoredCall(
            call_id=f"c{i}", sdk_app_id=1, caller="alice", callees=["bob"], scene=2,
            media_type=1, room_id=1, group_id="", start_ts=float(i), accept_ts=None,
            end_ts=None, result="", participants={"alice": ParticipantOutcome(1, 3)},
        ))
    """
)


def test_unclosed_writer_finishes_at_exit(tmp_path: Path) -> None:
    """A process that never closes its writer still exits, with the queued records written."""
    path = tmp_path / "calls.db"
    done = subprocess.run(
        [sys.executable, "-c", _NEVER_CLOSED, str(path)],
        cwd=Path(__file__).resolve().parents[2],
        timeout=30,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    store = CallStore(str(path))
    assert len(store.find_calls(1)) == 50
    store.close()

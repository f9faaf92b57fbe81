"""RecordWriter: batched, ordered call-record writes from asyncio on one worker thread (the
tests taking ``db`` or ``postgres`` also on PostgreSQL)."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path

import psycopg
import pytest

from signaling_server.pgstore import PgCallStore
from signaling_server.records import OutboxRow, ParticipantOutcome, ProfileUpdate, StoredCall
from signaling_server.storage import open_store
from signaling_server.store import CallStore, RecordWriter, StoreBusy
from tests.helpers.postgres import PostgresServer
from tests.helpers.waits import eventually

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


async def test_close_writes_the_queue_and_is_idempotent(db: str) -> None:
    """close commits what was queued, closes the store and can be called again or concurrently
    (each back end)."""
    store = open_store(db)
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
    reopened = open_store(db)
    assert len(reopened.find_calls(APP, limit=1000)) == 300
    reopened.close()


_NEVER_CLOSED = textwrap.dedent(
    """
    import sys
    from signaling_server.records import OutboxRow, ParticipantOutcome, ProfileUpdate, StoredCall
    from signaling_server.store import CallStore, RecordWriter, StoreBusy

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


# ---------------------------------------------------------------------- issue 12 items 5 and 8


async def test_a_stuck_query_does_not_hold_up_commits(db: str) -> None:
    """Queries run on their own thread and connection: records commit while one is stuck
    (each back end)."""
    store = open_store(db)
    writer = RecordWriter(store)
    release, busy = threading.Event(), threading.Event()

    def stuck() -> bool:
        busy.set()
        return release.wait(30)

    query = asyncio.ensure_future(writer.run_read(stuck))
    await asyncio.to_thread(busy.wait, 10)
    unit = writer.submit_unit([make_call("c1", result="normal_end")])
    assert await asyncio.wait_for(asyncio.wrap_future(unit.attempted), 10) is True
    assert not query.done()
    other = open_store(db)
    stored = other.get_call(APP, "c1")
    other.close()
    assert stored is not None and stored.result == "normal_end"
    release.set()
    assert await query
    thread = await writer.run_read(threading.current_thread)
    assert thread.name.startswith("record-reader")
    await writer.close()


async def test_queries_beyond_the_bound_are_refused_at_once() -> None:
    """With max_reads queries in flight the next one raises StoreBusy; nothing queues up."""
    writer = RecordWriter(CallStore(":memory:"), max_reads=2)
    release = threading.Event()
    held = [asyncio.ensure_future(writer.run_read(release.wait, 30)) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(StoreBusy):
        await writer.run_read(writer.store.open_calls)
    assert writer.stats().refused == 1 and writer.stats().reads_in_flight == 2
    release.set()
    assert await asyncio.gather(*held) == [True, True]
    assert await writer.run_read(writer.store.open_calls) == []
    await writer.close()


async def test_other_writes_beyond_the_bound_are_refused_records_never() -> None:
    """max_jobs other writes waiting: the next raises StoreBusy; records are still accepted."""
    writer = RecordWriter(CallStore(":memory:"), max_jobs=2)
    release, held = await hold_worker(writer)
    waiting = [asyncio.ensure_future(writer.run_query(lambda: 1)) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(StoreBusy):
        await writer.run_query(lambda: 2)
    units = [writer.submit_unit([make_call(f"c{i}")]) for i in range(50)]
    release.set()
    await held
    assert await asyncio.gather(*waiting) == [1, 1]
    await writer.flush()
    assert all(u.committed.result() == [] for u in units)
    assert writer.committed == 50
    await writer.close()


async def test_records_commit_before_waiting_writes() -> None:
    """Units queued behind other writes are committed before those writes run (priority)."""
    store = BatchLog(":memory:")
    writer = RecordWriter(store)
    release, held = await hold_worker(writer)
    order: list[str] = []
    jobs = [asyncio.ensure_future(writer.run_query(order.append, f"job{i}")) for i in range(3)]
    await asyncio.sleep(0)
    unit = writer.submit_unit([make_call("late")])
    unit.attempted.add_done_callback(lambda _: order.append("commit"))
    release.set()
    await held
    await asyncio.gather(*jobs)
    # job0 waited for nothing; the unit came after it but is committed before job1 and job2
    assert order.index("commit") <= 1 and order[-2:] == ["job1", "job2"]
    await writer.close()


async def test_a_write_failing_transiently_is_kept_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another process holds the write lock (SQLITE_BUSY): the record is kept, retried with
    backoff, logged and counted, and committed once the lock is gone; nothing is lost."""
    path = str(tmp_path / "calls.db")
    writer = RecordWriter(CallStore(path, busy_timeout=0.02), retry_initial_s=0.02,
                          retry_max_s=0.2)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    unit = writer.submit_unit([make_call("c1", result="normal_end")])
    assert await asyncio.wait_for(asyncio.wrap_future(unit.attempted), 10) is False
    later = writer.submit_unit([make_call("c2")])
    for _ in range(500):  # 4 attempts take about 0.02 + 0.04 + 0.08 s plus busy timeouts
        if writer.stats().failed_attempts >= 4:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail(f"only {writer.stats().failed_attempts} attempts in 10 s")
    stats = writer.stats()
    assert stats.retrying == 2 and stats.lost == 0 and not unit.committed.done()
    blocker.execute("COMMIT")
    blocker.close()
    assert await asyncio.wait_for(asyncio.wrap_future(unit.committed), 10) == []
    await asyncio.wait_for(asyncio.wrap_future(later.committed), 10)
    assert writer.stats().retrying == 0 and writer.lost == 0
    assert sum("kept for a retry" in r.message for r in caplog.records if
               r.levelname == "ERROR") >= 3
    await writer.close()
    store = CallStore(path)
    assert [c.call_id for c in store.find_calls(APP)] == ["c1", "c2"]
    store.close()


async def test_a_postgresql_write_waiting_for_a_lock_is_kept_and_retried(
    postgres: PostgresServer,
) -> None:
    """Another session holds a lock on the calls table: each attempt gives up after the
    store's lock timeout (transient), the records are kept and committed once it is gone."""
    url = postgres.new_database()
    writer = RecordWriter(PgCallStore(url, busy_timeout=0.05), retry_initial_s=0.02,
                          retry_max_s=0.2)
    blocker = psycopg.connect(url)
    blocker.execute("LOCK TABLE calls IN ACCESS EXCLUSIVE MODE")
    try:
        unit = writer.submit_unit([make_call("c1", result="normal_end")])
        assert await asyncio.wait_for(asyncio.wrap_future(unit.attempted), 10) is False
        later = writer.submit_unit([make_call("c2")])
        await eventually(lambda: writer.stats().failed_attempts >= 3, "three failed attempts")
        stats = writer.stats()
        assert stats.retrying == 2 and stats.lost == 0 and not unit.committed.done()
    finally:
        blocker.rollback()
        blocker.close()
    await asyncio.wait_for(asyncio.wrap_future(later.committed), 10)
    assert writer.stats().retrying == 0 and writer.lost == 0
    assert [c.call_id for c in await writer.run_read(writer.store.open_calls)] == ["c2"]
    await writer.close()


async def test_later_versions_wait_behind_a_failing_one(tmp_path: Path) -> None:
    """While a unit is kept for a retry, later versions of the same call queue behind it, so
    the newest version is the one left in the database."""
    path = str(tmp_path / "calls.db")
    writer = RecordWriter(CallStore(path, busy_timeout=0.02), retry_initial_s=0.05,
                          retry_max_s=0.1)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    first = writer.submit_unit([make_call("c1")])
    await asyncio.wrap_future(first.attempted)
    last = writer.submit_unit([make_call("c1", result="normal_end")])
    blocker.execute("COMMIT")
    blocker.close()
    await asyncio.wait_for(asyncio.wrap_future(last.committed), 10)
    stored = await writer.run_read(writer.store.open_calls)
    assert stored == []
    await writer.close()
    store = CallStore(path)
    call = store.get_call(APP, "c1")
    store.close()
    assert call is not None and call.result == "normal_end"


async def test_outbox_rows_are_written_with_their_record(tmp_path: Path) -> None:
    """A unit's record and outbox rows are one transaction: a row that cannot be stored keeps
    its record out too (and the unit is counted lost, loudly)."""
    store = CallStore(str(tmp_path / "calls.db"))
    writer = RecordWriter(store)
    row = OutboxRow(APP, "c1", "caller_call_end", "{}", "{}", 1000.0)
    good = writer.submit_unit([make_call("c1", result="normal_end")], [row, row])
    assert len(await asyncio.wrap_future(good.committed)) == 2
    with store.transaction() as conn:
        conn.execute("CREATE TRIGGER no_outbox BEFORE INSERT ON webhook_outbox "
                     "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    bad = writer.submit_unit([make_call("c2", result="normal_end")], [row])
    assert await asyncio.wrap_future(bad.attempted) is False
    with pytest.raises(sqlite3.IntegrityError):
        await asyncio.wrap_future(bad.committed)
    assert await writer.run_read(store.get_call, APP, "c2") is None
    assert writer.stats().lost == 1
    await writer.close()

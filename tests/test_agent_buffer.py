"""The SQLite buffer, the commit batcher and status, on real SQLite files."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.buffer import Buffer, Quarantined, open_readonly
from agent.errors import StoreError, StoreMissing
from agent.ingest import Batcher
from agent.service import backoff_delay
from agent.status import read_status
from schemas import Reading, decode
from tests.agent_support import telemetry

T0 = 1_767_225_600_000


def reading(seq: int, ts: int = T0, device: str = "dev-1") -> Reading:
    return decode(*telemetry(device, seq, ts), received_ms=ts + 5)


@pytest.fixture
def buf(tmp_path: Path) -> Iterator[Buffer]:
    b = Buffer.open(tmp_path / "agent.sqlite3", busy_timeout_ms=100)
    yield b
    b.close()


def test_wal_and_full_sync(buf: Buffer) -> None:
    conn = sqlite3.connect(buf.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    assert buf._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_redelivery_is_stored_once_and_ids_grow(buf: Buffer) -> None:
    assert buf.write([reading(1), reading(2)]) == 2
    assert buf.write([reading(2), reading(3)]) == 1
    rows = sqlite3.connect(buf.path).execute("SELECT id, seq FROM readings ORDER BY id").fetchall()
    assert [seq for _, seq in rows] == [1, 2, 3]
    assert [i for i, _ in rows] == sorted(i for i, _ in rows)


def test_unique_key_is_time_first(buf: Buffer) -> None:
    cols = sqlite3.connect(buf.path).execute("PRAGMA index_info(readings_key)").fetchall()
    assert [c[2] for c in cols] == ["ts_ms", "device_id", "kind", "seq"]


def test_quarantine_keeps_first_4_kib_and_true_size(buf: Buffer) -> None:
    payload = b"x" * 10_000
    buf.write([], [Quarantined.of(1, "fleet/a/b/telemetry", payload, "too odd")])
    [(kept, size)] = sqlite3.connect(buf.path).execute(
        "SELECT payload, payload_bytes FROM quarantine").fetchall()  # fmt: skip
    assert kept == payload[:4096] and size == 10_000


def test_killed_agents_interval_is_closed_at_last_alive_mark(tmp_path: Path) -> None:
    path = tmp_path / "agent.sqlite3"
    b = Buffer.open(path)
    iid = b.open_interval(1000)
    b.write([reading(1)], alive=(iid, 4000))
    b.close()  # like a SIGKILL: nobody closed the interval
    b = Buffer.open(path)
    assert b.recover_intervals() == 1
    rows = sqlite3.connect(path).execute(
        "SELECT start_ms, end_ms, closed_by FROM observations").fetchall()  # fmt: skip
    assert rows == [(1000, 4000, "recovered")]
    b.close()


def test_status_while_writer_is_open(buf: Buffer) -> None:
    iid = buf.open_interval(T0)
    buf.write([reading(1, T0 + 60_000), reading(2, T0)], [Quarantined.of(1, "t", b"x", "bad")])
    buf.write([], alive=(iid, T0 + 10_000))
    s = read_status(buf.path)
    assert s["readings_total"] == 2 and s["quarantined_total"] == 1
    assert s["pending_upload_rows"] == 2
    assert s["oldest_pending_ts_ms"] == T0 and s["oldest_pending_ts"] == "2026-01-01T00:00:00Z"
    assert s["db_bytes"] > 0 and s["subscribed_since"] == "2026-01-01T00:00:00Z"
    assert s["observed_seconds"] == 10.0


def test_pending_follows_the_upload_cursor(buf: Buffer) -> None:
    buf.write([reading(1, T0), reading(2, T0 + 1)])
    buf._conn.execute("UPDATE meta SET value = 1 WHERE key = 'uploaded_upto'")
    s = read_status(buf.path)
    assert (s["pending_upload_rows"], s["oldest_pending_ts_ms"]) == (1, T0 + 1)


def test_missing_db_and_newer_schema(tmp_path: Path) -> None:
    with pytest.raises(StoreMissing, match="has not run with this data_dir"):
        open_readonly(tmp_path / "none.sqlite3")
    path = tmp_path / "new.sqlite3"
    sqlite3.connect(path).execute("PRAGMA user_version = 99").connection.close()
    with pytest.raises(StoreError, match="newer than this agent's"):
        Buffer.open(path)


def test_open_waits_for_another_writer_instead_of_failing(tmp_path: Path) -> None:
    """A second process opening the buffer (agent flush, a restart) while the agent commits."""
    import threading

    path = tmp_path / "agent.sqlite3"
    Buffer.open(path).close()
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE meta SET value = value + 1 WHERE key = 'dropped_rows'")
    opened: list[object] = []

    def open_it() -> None:
        try:
            opened.append(Buffer.open(path, busy_timeout_ms=5000))
        except StoreError as exc:
            opened.append(exc)

    t = threading.Thread(target=open_it)
    t.start()
    t.join(0.3)  # it is waiting on the writer's lock, not failed
    assert t.is_alive() and not opened
    writer.execute("COMMIT")
    writer.close()
    t.join(10)
    assert len(opened) == 1 and isinstance(opened[0], Buffer), opened
    opened[0].close()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0


def test_batcher_flushes_on_size_and_age(buf: Buffer) -> None:
    b = Batcher(buf, batch_max=3, batch_interval_s=0.05, clock_ms=lambda: T0)
    b.add(*telemetry("d", 1, T0), mid=1, qos=1, now=0.0)
    assert not b.due(0.01) and b.due(0.05)
    assert b.seconds_until_due(0.02, idle=1.0) == pytest.approx(0.03)
    b.add(*telemetry("d", 2, T0), mid=2, qos=1, now=0.01)
    b.add(*telemetry("d", 3, T0), mid=3, qos=1, now=0.02)
    assert b.due(0.02)


def test_batcher_acks_after_commit_in_order(buf: Buffer) -> None:
    acked: list[int] = []

    def ack(mid: int, qos: int) -> None:
        # Another connection sees the row when its ack goes out.
        seen = sqlite3.connect(buf.path).execute("SELECT count(*) FROM readings").fetchone()[0]
        assert seen == 3
        acked.append(mid)

    b = Batcher(buf, batch_max=10, batch_interval_s=1, clock_ms=lambda: T0)
    for mid in (7, 3, 9):
        b.add(*telemetry("d", mid, T0), mid=mid, qos=1, now=0)
    assert b.flush(ack) == 3
    assert acked == [7, 3, 9] and b.pending == 0


def test_failed_commit_acks_nothing_and_keeps_the_batch(buf: Buffer) -> None:
    acked: list[int] = []
    b = Batcher(buf, batch_max=10, batch_interval_s=1, clock_ms=lambda: T0)
    b.add(*telemetry("d", 1, T0), mid=1, qos=1, now=0)
    b.add(b"fleet/x/y/telemetry".decode(), b"junk", mid=2, qos=1, now=0)
    locker = sqlite3.connect(buf.path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    with pytest.raises(StoreError, match="database is locked"):
        b.flush(lambda mid, qos: acked.append(mid))
    assert acked == [] and b.pending == 2
    locker.execute("ROLLBACK")
    locker.close()
    assert b.flush(lambda mid, qos: acked.append(mid)) == 2
    assert acked == [1, 2] and (b.stored, b.quarantined) == (1, 1)


def test_flush_without_connection_commits_and_acks_nothing(buf: Buffer) -> None:
    b = Batcher(buf, batch_max=10, batch_interval_s=1, clock_ms=lambda: T0)
    b.add(*telemetry("d", 1, T0), mid=1, qos=1, now=0)
    assert b.flush(None) == 1 and b.stored == 1


def test_backoff_grows_to_ceiling_with_jitter() -> None:
    lows = [backoff_delay(n, 0.5, 30, lambda: 0.0) for n in range(10)]
    highs = [backoff_delay(n, 0.5, 30, lambda: 1.0) for n in range(10)]
    assert lows[:4] == [0.25, 0.5, 1.0, 2.0] and highs[:3] == [0.5, 1.0, 2.0]
    assert max(highs) == 30 and max(lows) == 15

"""Crash safety: SIGKILL mid-upload and at random points, restart, retry; orphans at startup."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from central.ledger import LedgerBatch, open_ledger
from schemas.batch import batch_id
from tests.central_support import (
    CentralServer,
    central_server,
    create_token,
    files_under,
    make_batch,
    put,
    sha,
)

__all__ = ["central_server"]  # the fixture, imported for pytest


def data_dir(server: CentralServer) -> Path:
    return server.config.parent / "central"


def ledger_rows(server: CentralServer) -> dict[str, LedgerBatch]:
    ledger = open_ledger(f"sqlite:///{data_dir(server) / 'ledger.sqlite3'}")
    try:
        return {b.batch_id: b for b in ledger.batches()}
    finally:
        ledger.close()


def assert_consistent(server: CentralServer) -> dict[str, LedgerBatch]:
    """Every ledger row has its file with its sha256, and every file has its row."""
    rows = ledger_rows(server)
    landing = data_dir(server) / "landing"
    files = {str(p.relative_to(landing)): p for p in files_under(landing)}
    assert set(files) == {r.landing_path for r in rows.values()}
    for r in rows.values():
        assert hashlib.sha256(files[r.landing_path].read_bytes()).hexdigest() == r.sha256
    return rows


def test_sigkill_mid_upload_then_retry(central_server: CentralServer) -> None:
    token = create_token(central_server.config, "gw-k")
    body = make_batch("gw-k", 1, n=2000)
    bid = batch_id("gw-k", 1)
    half_sent = threading.Event()

    def slow_body() -> Iterator[bytes]:
        step = len(body) // 20
        for i in range(0, len(body), step):
            if i >= len(body) // 2:
                half_sent.set()
            yield body[i : i + step]
            time.sleep(0.1)

    def upload() -> BaseException | int:
        try:
            with httpx.Client(base_url=central_server.url, timeout=30) as client:
                return client.put(
                    f"/v1/batches/{bid}",
                    content=slow_body(),
                    headers={"Authorization": f"Bearer {token}", "Content-SHA256": sha(body)},
                ).status_code
        except httpx.HTTPError as exc:
            return exc

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(upload)
        assert half_sent.wait(30)
        central_server.kill()
        outcome = pending.result(60)
    assert isinstance(outcome, httpx.HTTPError), outcome  # the client saw the connection die

    central_server.start()
    with httpx.Client(base_url=central_server.url, timeout=30) as client:
        assert put(client, bid, body, token).status_code == 201  # the retry
        assert put(client, bid, body, token).status_code == 200  # and a duplicate retry
    rows = assert_consistent(central_server)
    assert list(rows) == [bid]


@pytest.mark.slow
def test_sigkill_at_random_points_under_load(central_server: CentralServer) -> None:
    """Kill the server while 4 clients upload; after restart the retries leave no gap, no twin."""
    token = create_token(central_server.config, "gw-s")
    bodies = {s: make_batch("gw-s", s, n=400) for s in range(1, 121)}
    stop = threading.Event()

    def client(offset: int) -> None:
        with httpx.Client(base_url=central_server.url, timeout=10) as c:
            for s in range(1 + offset, 121, 4):
                if stop.is_set():
                    return
                try:
                    put(c, batch_id("gw-s", s), bodies[s], token)
                except httpx.HTTPError:
                    return

    for kill_after in (0.4, 0.9, 1.5):
        stop.clear()
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(client, k) for k in range(4)]
            time.sleep(kill_after)
            central_server.kill()
            stop.set()
            for f in futures:
                f.result(60)
        central_server.start()
        assert_consistent(central_server)

    # the agents retry everything they never got a 2xx for
    with httpx.Client(base_url=central_server.url, timeout=30) as c:
        statuses = [put(c, batch_id("gw-s", s), b, token).status_code for s, b in bodies.items()]
    assert set(statuses) <= {200, 201}, statuses
    rows = assert_consistent(central_server)
    assert {r: rows[r].sha256 for r in rows} == {
        batch_id("gw-s", s): sha(b) for s, b in bodies.items()
    }


def test_startup_adopts_or_removes_orphans(central_server: CentralServer) -> None:
    token = create_token(central_server.config, "gw-o")
    with httpx.Client(base_url=central_server.url, timeout=30) as client:
        recorded = make_batch("gw-o", 1)
        assert put(client, batch_id("gw-o", 1), recorded, token).status_code == 201
    central_server.stop()

    landing = data_dir(central_server) / "landing"
    day = landing / "gateway=gw-o" / "date=2026-01-01"
    # what a crash between "file durable" and "ledger row written" leaves behind
    (day / f"{batch_id('gw-o', 2)}.parquet").write_bytes(make_batch("gw-o", 2))
    # an interrupted temp file
    (day / f".tmp-{batch_id('gw-o', 3)}.parquet.abc123").write_bytes(b"PAR1 half")
    # a file in the layout that is no valid batch
    (day / f"{batch_id('gw-o', 4)}.parquet").write_bytes(b"not parquet")
    # a racing loser: the id is already recorded at another path
    other_day = landing / "gateway=gw-o" / "date=2026-01-09"
    other_day.mkdir(parents=True)
    (other_day / f"{batch_id('gw-o', 1)}.parquet").write_bytes(
        make_batch("gw-o", 1, start_ms=1_767_225_600_000 + 8 * 86_400_000)
    )
    # a file central did not write: left alone
    (landing / "README.txt").write_text("operator notes")

    central_server.start()
    log = central_server.logs()
    assert f"adopted orphan gateway=gw-o/date=2026-01-01/{batch_id('gw-o', 2)}.parquet" in log
    assert "temp file of an interrupted upload" in log
    assert f"removed orphan gateway=gw-o/date=2026-01-01/{batch_id('gw-o', 4)}.parquet" in log
    assert f"removed orphan gateway=gw-o/date=2026-01-09/{batch_id('gw-o', 1)}.parquet" in log
    assert "ignoring README.txt" in log
    assert "1 adopted, 3 removed, 0 missing, 1 ignored" in log

    (landing / "README.txt").unlink()
    rows = assert_consistent(central_server)
    assert sorted(rows) == [batch_id("gw-o", 1), batch_id("gw-o", 2)]
    assert rows[batch_id("gw-o", 1)].sha256 == sha(recorded)
    with httpx.Client(base_url=central_server.url, timeout=30) as client:
        # the adopted batch answers as stored: the agent's retry is a replay
        assert put(client, batch_id("gw-o", 2), make_batch("gw-o", 2), token).status_code == 200

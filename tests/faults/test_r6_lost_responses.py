"""R6: uploads that central commits but whose answer never reaches the agent → no duplicates.

A TCP proxy between ``fleetpulse agent flush`` and a real ``fleetpulse central serve``
lets each request through, throws the answer away and resets the connection. The agent
must retry the same batch id with the same bytes (central answers 200, idempotent) and
never re-export those readings under a new id.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
from pathlib import Path

import pyarrow.parquet as pq

from agent.buffer import Buffer
from schemas import Reading
from tests.brokers import free_port
from tests.central_support import CentralServer, cli, create_token
from tests.central_support import write_config as central_config
from tests.faults.figures_support import Figure, pick
from tests.faults.proxy_support import TcpProxy

T0_MS = 1_767_225_600_000
GATEWAY = "gw-r6"
ROWS_PER_BATCH = 20


def _readings(start: int, n: int) -> list[Reading]:
    return [
        Reading(device_id=f"dev-{i % 5}", site="site-a", kind="telemetry", ts_ms=T0_MS + i * 30_000,
                seq=i, received_ms=T0_MS + i * 30_000 + 40, metrics={"temp": 20.5})
        for i in range(start, start + n)
    ]  # fmt: skip


def _agent_config(tmp: Path, url: str, token: Path) -> Path:
    path = tmp / "agent.toml"
    path.write_text(
        f'gateway_id = "{GATEWAY}"\ndata_dir = "{tmp / "agent"}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {free_port()}\n'
        f'[central]\nurl = "{url}"\ntoken_file = "{token}"\nbatch_max_rows = {ROWS_PER_BATCH}\n'
        "timeout_s = 10\n"
    )
    return path


def test_lost_responses_make_no_duplicates(tmp_path: Path, figure: Figure) -> None:
    losses_wanted = pick(5, 50)
    rng = random.Random()
    port = free_port()
    ccfg = central_config(tmp_path / "central.toml", tmp_path / "central", port)
    token = tmp_path / "token"
    token.write_text(create_token(ccfg, GATEWAY) + "\n")
    server = CentralServer(ccfg, port, tmp_path / "central.log").start()
    proxy = TcpProxy(port).start()
    acfg = _agent_config(tmp_path, f"http://127.0.0.1:{proxy.port}", token)
    db = tmp_path / "agent" / "agent.sqlite3"
    written = 0
    flushes = 0
    try:
        while proxy.dropped_responses < losses_wanted:
            buf = Buffer.open(db)
            buf.write(_readings(written, ROWS_PER_BATCH))
            buf.close()
            written += ROWS_PER_BATCH
            # Mostly answers lost; now and then a good round lets the replays through.
            proxy.set("pass" if rng.random() < 0.25 else "drop_responses")
            cli("agent", "flush", "--config", str(acfg))
            flushes += 1
            assert flushes < losses_wanted * 4, "the flushes stopped reaching central"
        proxy.set("pass")
        final = cli("agent", "flush", "--config", str(acfg))
    finally:
        proxy.close()
        server.stop()
    files = sorted((tmp_path / "central" / "landing").rglob("*.parquet"))
    keys: list[tuple[str, str, int, int]] = []
    for f in files:
        t = pq.read_table(f, columns=["record_type", "device_id", "kind", "ts", "seq"])
        keys += [
            (r["device_id"], r["kind"], r["ts"], r["seq"])
            for r in t.to_pylist()
            if r["record_type"] == "reading"
        ]
    keys = [(d, k, int(ts.timestamp() * 1000) if hasattr(ts, "timestamp") else ts, s)
            for d, k, ts, s in keys]  # fmt: skip
    wanted = {(r.device_id, r.kind, r.ts_ms, r.seq) for r in _readings(0, written)}
    duplicates = len(keys) - len(set(keys))
    missing = len(wanted - set(keys))
    figure(
        f"{proxy.dropped_responses} uploads committed by central with the answer dropped"
        f" (connection reset), {flushes + 1} flushes: {len(files)} batches landed,"
        f" {duplicates} duplicate readings, {missing} of {written:,} missing after the"
        " final flush"
    )
    assert final.returncode == 0, final.stderr
    assert duplicates == 0 and missing == 0
    # every batch the agent wrote landed once, under its own id, and nothing else landed
    # (a batch holds its changed KPI rows first, so batches can outnumber written / 20)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        states = dict(conn.execute("SELECT batch_id, state FROM batches").fetchall())
    assert sorted(f.stem for f in files) == sorted(states)
    assert set(states.values()) == {"uploaded"}

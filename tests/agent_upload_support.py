"""Helpers for the agent's export/upload tests: configs with [central], readings, the ledger,
and a TCP proxy that can drop a response after the server has committed the request."""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agent.buffer import Buffer
from agent.config import AgentConfig, load_config
from tests.brokers import free_port

T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def agent_config(
    tmp: Path,
    *,
    url: str | None = None,
    token: str | None = None,
    mqtt_port: int | None = None,
    gateway_id: str = "gw-up",
    **sections: dict[str, Any],
) -> Path:
    """An agent TOML in ``tmp``; ``token`` is written to a token file ('' = registered later)."""
    lines = [
        f'gateway_id = "{gateway_id}"',
        f'data_dir = "{tmp / "data"}"',
        f'metrics_listen = "127.0.0.1:{free_port()}"',
        "[mqtt]",
        'host = "127.0.0.1"',
        f"port = {mqtt_port or free_port()}",
        "[central]",
    ]
    if url is not None:
        lines.append(f'url = "{url}"')
    if token is not None:
        (tmp / "central-token").write_text(token)
        lines.append(f'token_file = "{tmp / "central-token"}"')
    central = {"timeout_s": 5, **sections.pop("central", {})}
    for k, v in central.items():
        lines.append(f"{k} = {json.dumps(v)}")
    for name, keys in sections.items():
        lines.append(f"[{name}]")
        for k, v in keys.items():
            lines.append(f"{k} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}")
    path = tmp / "agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def cfg_of(path: Path) -> AgentConfig:
    return load_config(path, environ={})


def reading_row(i: int, device: str | None = None, **over: Any) -> tuple[Any, ...]:
    """Values for the buffer's readings insert: one telemetry reading per 30 s per device."""
    dev = device or f"dev-{i % 5}"
    ts = T0_MS + (i // 5) * 30_000
    row = {
        "ts_ms": ts, "device_id": dev, "kind": "telemetry", "seq": i, "site": "site-a",
        "received_ms": ts + 40, "state": None, "event_type": None, "fw": "1.0.0",
        "lat": None, "lon": None, "metrics": json.dumps({"temp": 20 + i % 3, "rssi": -61.5}),
        "detail": None,
    }  # fmt: skip
    row.update(over)
    return tuple(row.values())


def add_readings(cfg: AgentConfig, rows: Iterable[tuple[Any, ...]]) -> int:
    """Insert rows into the agent's buffer as ingest would; the count of new rows."""
    buf = Buffer.open(cfg.db_path)
    try:
        conn = buf.conn
        conn.execute("BEGIN")
        before = conn.total_changes
        conn.executemany(
            "INSERT OR IGNORE INTO readings (ts_ms, device_id, kind, seq, site, received_ms,"
            " state, event_type, fw, lat, lon, metrics, detail) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            list(rows),
        )
        n = conn.total_changes - before
        conn.execute("COMMIT")
        return n
    finally:
        buf.close()


def add_observation(cfg: AgentConfig, start_ms: int, end_ms: int | None, alive_ms: int) -> None:
    buf = Buffer.open(cfg.db_path)
    try:
        buf.conn.execute(
            "INSERT INTO observations (start_ms, end_ms, alive_ms) VALUES (?, ?, ?)",
            (start_ms, end_ms, alive_ms),
        )
    finally:
        buf.close()


def batches(cfg: AgentConfig) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{cfg.db_path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM batches ORDER BY seq")]
    finally:
        conn.close()


def ledger(central_data: Path) -> list[tuple[str, int, str]]:
    """(batch_id, row_count, sha256) of every batch central's ledger holds."""
    db = central_data / "ledger.sqlite3"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(
            "SELECT batch_id, row_count, sha256 FROM batches ORDER BY batch_id"
        ).fetchall()
    finally:
        conn.close()


def landed_readings(central_data: Path) -> list[tuple[Any, ...]]:
    """Every reading row in central's landing store: (device_id, kind, ts, seq)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out: list[tuple[Any, ...]] = []
    for f in sorted((central_data / "landing").rglob("*.parquet")):
        t = pq.read_table(f)
        t = t.filter(pc.equal(t["record_type"], "reading"))
        out += zip(
            t["device_id"].to_pylist(), t["kind"].to_pylist(),
            t["ts"].cast("int64").to_pylist(), t["seq"].to_pylist(), strict=True,
        )  # fmt: skip
    return out


class DroppingProxy:
    """A TCP proxy to ``target``; ``drop_next_response`` makes it forward one request whole,
    wait for the server's answer, and close the client's connection instead of answering."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.drop_next_response = False
        self.dropped = 0
        self._srv = socket.create_server(("127.0.0.1", self.port))
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self._srv.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._srv.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        drop = self.drop_next_response
        if drop:
            self.drop_next_response = False
        try:
            if drop:
                # one request: forward it, read the server's whole answer, then hang up
                request = _read_http_message(client)
                upstream.sendall(request)
                _read_http_message(upstream)
                self.dropped += 1
                return
            pumps = [
                threading.Thread(target=_pump, args=(client, upstream), daemon=True),
                threading.Thread(target=_pump, args=(upstream, client), daemon=True),
            ]
            for t in pumps:
                t.start()
            for t in pumps:
                t.join()
        finally:
            for s in (client, upstream):
                with contextlib.suppress(OSError):
                    s.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _read_http_message(sock: socket.socket) -> bytes:
    """One HTTP/1.1 message with a Content-Length body (what httpx and uvicorn send here)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body

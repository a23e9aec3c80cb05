"""Prometheus text exposition on ``metrics_listen``: a stdlib HTTP server on its own thread.

``GET /metrics`` renders whatever the ``collect`` callable returns at that moment (no
client library: the format is a few lines of text); ``GET /healthz`` answers 200 while
the ingest loop is healthy and 503 otherwise. A port that cannot be bound is logged and
the agent runs on without metrics: ingest matters more than its dashboard.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Metric:
    """One metric family with its samples (labels → value)."""

    name: str
    kind: Literal["counter", "gauge"]
    help: str
    value: float | None = None
    samples: dict[tuple[tuple[str, str], ...], float] = field(default_factory=dict)


def _num(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(metrics: Iterable[Metric]) -> str:
    """The text exposition format (version 0.0.4)."""
    lines: list[str] = []
    for m in metrics:
        lines.append(f"# HELP {m.name} {m.help}")
        lines.append(f"# TYPE {m.name} {m.kind}")
        if m.value is not None:
            lines.append(f"{m.name} {_num(m.value)}")
        for labels, value in sorted(m.samples.items()):
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{m.name}{{{text}}} {_num(value)}")
    return "\n".join(lines) + "\n"


class MetricsServer:
    """``/metrics`` and ``/healthz`` on a daemon thread."""

    def __init__(
        self,
        address: tuple[str, int],
        collect: Callable[[], Iterable[Metric]],
        healthy: Callable[[], bool] = lambda: True,
    ) -> None:
        self.address = address
        self._collect = collect
        self._healthy = healthy
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def start(self) -> bool:
        """Bind and serve; False (logged) when the address cannot be bound."""
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] == "/metrics":
                    try:
                        body = render(outer._collect()).encode()
                        status = 200
                    except Exception as exc:  # a scrape must never kill the thread
                        log.exception("collecting metrics failed")
                        body, status = f"collecting metrics failed: {exc}\n".encode(), 500
                    self._send(status, body, CONTENT_TYPE)
                elif self.path == "/healthz":
                    ok = outer._healthy()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"unhealthy\n")
                else:
                    self._send(404, b"not found: try /metrics or /healthz\n")

            def _send(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("metrics: " + format, *args)

        try:
            self._server = ThreadingHTTPServer(self.address, Handler)
        except OSError as exc:
            log.error(
                "cannot serve metrics on %s:%d (%s): set metrics_listen to a free HOST:PORT "
                'or "" to turn metrics off; ingest goes on without them',
                *self.address,
                exc.strerror or exc,
            )
            return False
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fleetpulse-metrics", daemon=True
        )
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics", self.address[0], self.port)
        return True

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def gather(
    db_path: object,
    counters: dict[str, int],
    stages: object | None,
    subscribed: bool,
    now_ms: int,
) -> list[Metric]:
    """The agent's metrics: ingest counters, backlog from the buffer, stage counters."""
    from pathlib import Path

    from .buffer import META_DROPPED_ROWS, META_UPLOADED_UPTO, get_meta, open_readonly
    from .scheduler import Stages
    from .status import META_AUTH_REFUSED_MS

    p = "fleetpulse_agent_"
    out = [
        Metric(p + "readings_received_total", "counter", "MQTT messages received",
               counters.get("received", 0)),
        Metric(p + "readings_stored_total", "counter", "new readings committed",
               counters.get("stored", 0)),
        Metric(p + "readings_duplicate_total", "counter", "redeliveries dropped by the dedup key",
               counters.get("duplicates", 0)),
        Metric(p + "quarantined_total", "counter", "messages that broke the contract",
               counters.get("quarantined", 0)),
        Metric(p + "subscribed", "gauge", "1 while connected and subscribed", int(subscribed)),
    ]  # fmt: skip
    conn = open_readonly(Path(str(db_path)))
    try:
        upto = get_meta(conn, META_UPLOADED_UPTO)
        backlog = conn.execute("SELECT count(*) FROM readings WHERE id > ?", (upto,)).fetchone()[0]
        outbox = conn.execute(
            "SELECT coalesce(sum(bytes), 0), count(*) FROM batches"
            " WHERE state IN ('exported', 'reserved')"
        ).fetchone()
        flagged = conn.execute("SELECT count(*) FROM batches WHERE state = 'flagged'").fetchone()[0]
        last_ok = conn.execute("SELECT max(uploaded_ms) FROM batches").fetchone()[0]
        dropped = get_meta(conn, META_DROPPED_ROWS)
        auth_refused = get_meta(conn, META_AUTH_REFUSED_MS)
    finally:
        conn.close()
    age = float("inf") if last_ok is None else max(0.0, (now_ms - last_ok) / 1000)
    out += [
        Metric(p + "backlog_rows", "gauge", "readings not uploaded yet", backlog),
        Metric(p + "backlog_bytes", "gauge", "bytes of exported batches waiting for upload",
               outbox[0]),
        Metric(p + "backlog_batches", "gauge", "exported batches waiting for upload", outbox[1]),
        Metric(p + "batches_flagged", "gauge",
               "batches central refused for good (409, 4xx): an operator must look", flagged),
        Metric(p + "last_upload_age_seconds", "gauge",
               "seconds since the last successful upload (+Inf: never)", age),
        Metric(p + "dropped_rows_total", "counter",
               "readings deleted by on_full = drop_oldest", dropped),
        Metric(p + "upload_auth_refused", "gauge",
               "1 while central refuses the token (401/403): uploads are paused until a new "
               "token is written to [central] token_file", int(auth_refused > 0)),
    ]  # fmt: skip
    if isinstance(stages, Stages):
        s, up = stages.stats, stages.uploader.stats
        usage = stages.disk.last_usage
        out += [
            Metric(p + "upload_success_total", "counter", "batches central accepted", up.successes),
            Metric(p + "upload_failures_total", "counter",
                   "upload attempts that failed and will be retried", up.failures),
            Metric(p + "upload_flagged_total", "counter", "batches flagged by this process",
                   up.flagged),
            Metric(p + "upload_auth_failures_total", "counter",
                   "uploads central refused for the token (401/403)", up.auth_failures),
            Metric(p + "export_batches_total", "counter", "batches exported", s.export_batches),
            Metric(p + "export_rows_total", "counter", "readings exported", s.export_rows),
            Metric(p + "dag_runs_total", "counter", "local KPI DAG runs", s.dag_runs),
            Metric(p + "dag_failures_total", "counter", "failed DAG runs", s.dag_failures),
            Metric(p + "dag_duration_seconds", "gauge", "duration of the last DAG run",
                   float("nan") if s.dag_last_s is None else s.dag_last_s),
            Metric(p + "disk_full", "gauge",
                   "1 while the disk budget is exhausted (ingest holds its acks)",
                   int(stages.disk.full.is_set())),
            Metric(p + "disk_budget_bytes", "gauge", "[storage] max_disk_bytes",
                   stages.cfg.storage.max_disk_bytes),
            Metric(p + "disk_early_checks_total", "counter",
                   "disk checks run early by the commit counter (ingest near the budget)",
                   stages.disk.early_checks),
        ]  # fmt: skip
        if usage is not None:
            out.append(Metric(p + "disk_bytes", "gauge", "buffer pages + WAL + outbox in use",
                              usage.total))  # fmt: skip
    return out

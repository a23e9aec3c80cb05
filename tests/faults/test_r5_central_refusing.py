"""R5: central refuses uploads (503 / 429, with and without ``Retry-After``) for a long stretch.

The real agent process uploads to a small HTTP front in the test (real HTTP over loopback)
that refuses every request for the stretch, then forwards to a real ``central serve``. The
front logs every request it answers. Counted: the gaps between the agent's requests
(backoff capped at ``[central] retry_max_s``, never shorter than a ``Retry-After`` asked),
requests per phase against the bound, and the drain afterwards (every accepted reading
landed once).
"""

from __future__ import annotations

import email.utils
import itertools
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from tests.agent_support import AgentProcess, count, fleet_messages, subscribed, wait_for
from tests.brokers import Broker
from tests.faults.central_link_support import (
    agent_keys,
    drained,
    landed_keys,
    start_central,
    uploading_agent_config,
)
from tests.faults.figures_support import Figure, pick
from tests.faults.mqtt_support import TimedPublisher

GATEWAY = "gw-r5"
UPLOAD_EVERY_S = 1.0
# Scheduling slack of a request: the scheduler's period plus thread wake-ups on a busy box.
SLACK_S = UPLOAD_EVERY_S + 1.0


@dataclass
class Request:
    at: float  # monotonic, when the front got it
    mode: str  # the phase that answered it
    status: int
    retry_after_s: float | None  # what the answer asked for (None: no header)


class RefusingFront:
    """``mode``: ``503`` (no Retry-After), ``429-delta`` (``Retry-After: N``), ``503-date``
    (``Retry-After: <HTTP date>``) or ``pass`` (forward to central)."""

    def __init__(self, central_url: str, retry_after_s: int) -> None:
        self.central = httpx.Client(base_url=central_url, timeout=30)
        self.retry_after_s = retry_after_s
        self.mode = "503"
        self.log: list[Request] = []
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                front.answer(self, body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> RefusingFront:
        self.thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.central.close()

    def answer(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        now, mode = time.monotonic(), self.mode
        headers: dict[str, str] = {"Content-Type": "application/json"}
        retry: float | None = None
        if mode == "pass":
            fwd = {k: v for k, v in h.headers.items() if k.lower() in (
                "authorization", "content-sha256", "content-type")}  # fmt: skip
            resp = self.central.put(h.path, content=body, headers=fwd)
            status, payload = resp.status_code, resp.content
        else:
            status = 429 if mode == "429-delta" else 503
            if mode == "429-delta":
                headers["Retry-After"] = str(self.retry_after_s)
                retry = float(self.retry_after_s)
            elif mode == "503-date":
                when = time.time() + self.retry_after_s + 1
                headers["Retry-After"] = email.utils.formatdate(when, usegmt=True)
                retry = int(when) - time.time()  # the date has whole seconds
            payload = b'{"detail": "refused by the R5 front"}'
        self.log.append(Request(now, mode, status, retry))
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)


def test_refusing_central_backoff_capped_rate_bounded_then_drains(
    broker: Broker, tmp_path: Path, figure: Figure
) -> None:
    phase_s = pick(4, 120)  # each of the three refusal phases
    cap_s = pick(2, 20)  # [central] retry_max_s
    retry_after = pick(2, 15)
    rate = pick(200, 100)
    phases = ["503", "429-delta", "503-date"]
    total = int(rate * phase_s * len(phases))
    central = start_central(tmp_path, GATEWAY)
    front = RefusingFront(central.url, retry_after).start()
    cfg = uploading_agent_config(
        tmp_path, broker.port, front.url, central.token_file, GATEWAY,
        central={"retry_max_s": cap_s, "timeout_s": 10},
        schedule={"export_interval_s": 1, "upload_interval_s": UPLOAD_EVERY_S,
                  "dag_interval_s": 600, "disk_check_s": 1},
    )  # fmt: skip
    db = tmp_path / "data" / "agent.sqlite3"
    agent = AgentProcess(cfg, tmp_path / "agent.log").start()
    pub: TimedPublisher | None = None
    try:
        wait_for("the agent to subscribe", lambda: subscribed(db), 30)
        pub = TimedPublisher(broker.port, "r5-pub")
        sender = threading.Thread(
            target=pub.publish, args=(fleet_messages(total), rate), daemon=True
        )
        sender.start()
        bounds: dict[str, tuple[float, float]] = {}
        for mode in phases:
            front.mode = mode
            began = time.monotonic()
            time.sleep(phase_s)
            bounds[mode] = (began, time.monotonic())
        front.mode = "pass"
        healed = time.monotonic()
        sender.join()
        pub.wait_all(timeout=120)
        wait_for("every reading in the buffer", lambda: count(db) >= total, 120, 0.1)
        wait_for("the backlog to drain", lambda: drained(db), cap_s + 60, 0.1)
        drain_s = time.monotonic() - healed
        code = agent.terminate()
    finally:
        if pub is not None:
            pub.close()
        if agent.alive():
            agent.kill()
        front.close()
        central.server.stop()
    log = front.log
    gaps = [(a, b.at - a.at) for a, b in itertools.pairwise(log) if a.mode != "pass"]
    over_cap = [(a.mode, round(g, 2)) for a, g in gaps
                if g > max(cap_s, a.retry_after_s or 0) + SLACK_S]  # fmt: skip
    too_soon = [(a.mode, round(g, 2)) for a, g in gaps
                if a.retry_after_s is not None and g < a.retry_after_s - 0.05]  # fmt: skip
    per_phase = {m: sum(r.mode == m for r in log) for m in phases}
    # the bound per phase: one request per upload period (no Retry-After), one per
    # Retry-After otherwise; +1 for the request already under way when the phase began
    limit = {m: int(phase_s / (UPLOAD_EVERY_S if m == "503" else retry_after)) + 1 for m in phases}
    max_gap = {m: max((g for a, g in gaps if a.mode == m), default=0.0) for m in phases}
    stored = agent_keys(db)
    landed = landed_keys(central.data)
    missing = len(set(stored) - set(landed))
    dupes = len(landed) - len(set(landed))
    phase_text = ", ".join(
        f"{m} {per_phase[m]} (bound {limit[m]}, longest gap {max_gap[m]:.1f} s)" for m in phases
    )
    figure(
        f"3 phases of {phase_s} s refused (503 no Retry-After, 429 Retry-After: {retry_after},"
        f" 503 Retry-After: HTTP date), retry_max_s {cap_s}: requests per phase {phase_text};"
        f" {len(over_cap)} gaps over the cap, {len(too_soon)} sooner than Retry-After;"
        f" drained {drain_s:.1f} s after the refusals ended: {missing} of {len(set(stored)):,}"
        f" accepted readings missing centrally, {dupes} landed twice"
    )
    assert code == 0, agent.log_text()[-3000:]
    assert not over_cap and not too_soon, (over_cap, too_soon)
    assert all(1 <= per_phase[m] <= limit[m] for m in phases), (per_phase, limit)
    assert missing == 0 and dupes == 0
    assert any(r.mode == "pass" and r.status == 201 for r in log)

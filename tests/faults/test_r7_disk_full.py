"""R7: the buffer's file system fills up for real (a small tmpfs) while messages stream in.

The agent's disk budget is left at its default (2 GiB), far above the 2 MiB tmpfs, so
what is tested is SQLite meeting ENOSPC: no acknowledgement while COMMITs fail, the alarm
(``/healthz`` 503), no corruption, and ingest back within 10 s once space returns.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.agent_support import Message, count, integrity, key_of, stored_keys, wait_for
from tests.agent_support import write_config as agent_config
from tests.brokers import Broker, free_port
from tests.faults.figures_support import Figure, pick
from tests.faults.mqtt_support import AgentThread, TimedPublisher, settle

RECOVERY_LIMIT_S = 10.0


def _messages(n: int) -> list[Message]:
    # ~600-byte payloads fill 2 MiB within a few thousand messages.
    out = []
    for i in range(n):
        dev = f"dev-{i % 20:02d}"
        body = {"device_id": dev, "ts": 1_767_225_600_000 + (i // 20) * 30_000, "seq": i // 20,
                "metrics": {f"m{j:02d}": float(i + j) for j in range(30)}}  # fmt: skip
        out.append((f"fleet/site-a/{dev}/telemetry", json.dumps(body).encode()))
    return out


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, text=True)  # fmt: skip
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()}): R7 needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _health(port: int) -> int:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code
    except httpx.HTTPError:
        return 0


def test_disk_full_holds_acks_and_recovers(broker: Broker, tmp_path: Path, figure: Figure) -> None:
    total = pick(8000, 20_000)
    disk = tmp_path / "disk"
    mport = free_port()
    with tmpfs(disk, "2m"):
        cfg = agent_config(tmp_path, broker.port, metrics_listen=f'"127.0.0.1:{mport}"')
        cfg.write_text(cfg.read_text().replace(str(tmp_path / "data"), str(disk)))
        db = disk / "agent.sqlite3"
        agent = AgentThread(cfg).start()
        pub: TimedPublisher | None = None
        try:
            wait_for("the agent to subscribe", lambda: agent.service.subscribed, 30)
            messages = _messages(total)
            pub = TimedPublisher(broker.port, "r7-pub")
            sender = threading.Thread(target=pub.publish, args=(messages, 3000), daemon=True)
            sender.start()
            wait_for("the disk to fill (healthz 503)", lambda: _health(mport) == 503, 120, 0.1)
            full_at = len(agent.accepted)
            time.sleep(3.0)
            acked_while_full = len(agent.accepted) - full_at
            still_alarm = _health(mport) == 503
            subprocess.run(["mount", "-o", "remount,size=256m", str(disk)], check=True)
            back = time.monotonic()
            wait_for("ingest to resume", lambda: len(agent.accepted) > full_at + 100, 60, 0.02)
            recovery = time.monotonic() - back
            wait_for("healthz 200", lambda: _health(mport) == 200, 30, 0.1)
            sender.join()
            pub.wait_all(timeout=300)
            settle(lambda: count(db), quiet_s=2.0, timeout=300)
        finally:
            if pub is not None:
                pub.close()
            agent.stop()
        keys = stored_keys(db)
        stored = set(keys)
        missing = len({key_of(m) for m in messages} - stored)
        duplicates = len(keys) - len(stored)
        verdict = integrity(db)
    figure(
        f"2 MiB tmpfs filled at {full_at:,} accepted msgs: {acked_while_full} acks while full"
        f" (3 s), alarm /healthz 503: {still_alarm}; recovery {recovery:.2f} s after space"
        f" returned (limit {RECOVERY_LIMIT_S:.0f} s); {missing} of {total:,} missing,"
        f" {duplicates} duplicates, integrity {verdict}"
    )
    assert acked_while_full == 0 and still_alarm
    assert recovery <= RECOVERY_LIMIT_S
    assert missing == duplicates == 0 and verdict == "ok"

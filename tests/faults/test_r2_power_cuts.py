"""R2: power cuts of the agent's SQLite buffer, simulated by a VFS that forgets unsynced writes.

With the agent's pragmas (WAL, ``synchronous=FULL``) no acknowledged row may be lost and
the database must pass ``PRAGMA integrity_check`` after every cut. The same run with
``synchronous=NORMAL`` must lose acknowledged rows: proof that the harness can fail.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.buffer import Buffer, Quarantined, reading_row
from agent.errors import StoreError
from schemas import Reading
from tests.faults.figures_support import Figure, pick
from tests.faults.powercut_support import VFS_NAME, CutVfs, Disk, agent_pragmas, open_buffer

T0_MS = 1_767_225_600_000
# Cuts land uniformly in the first MAX_OPS mutating I/Os of a cycle: far enough to cross
# SQLite's automatic checkpoint (1,000 WAL pages) in many cycles, so cuts also hit the
# checkpoint's writes to the main file, not only WAL appends.
MAX_OPS = 5000
CUTS_PER_FILE = 25  # a fresh buffer file now and then keeps every integrity_check cheap


@dataclass
class Tally:
    cuts: int = 0
    acked_rows: int = 0
    acked_quarantined: int = 0
    lost_rows: int = 0
    lost_quarantined: int = 0
    cycles_with_loss: int = 0
    integrity_failures: list[str] = field(default_factory=list)
    open_failures: list[str] = field(default_factory=list)
    cut_in: Counter[str] = field(default_factory=Counter)
    dropped_sectors: int = 0


def _reading(n: int, rng: random.Random) -> Reading:
    return Reading(
        device_id=f"dev-{n % 40:03d}",
        site="site-a",
        kind="telemetry",
        ts_ms=T0_MS + n * 1000,
        seq=n,
        received_ms=T0_MS + n * 1000 + 40,
        fw="1.2.3",
        lat=52.0 + rng.random(),
        lon=13.0 + rng.random(),
        metrics={"temp": round(rng.uniform(-20, 60), 3), "rssi": float(rng.randint(-90, -30))},
    )


def _check(buf: Buffer, acked: dict[tuple[int, str, str, int], tuple[object, ...]],
           quarantined: set[str], tally: Tally) -> None:  # fmt: skip
    """Every acknowledged row is there with its exact values; the file is sound."""
    verdict = buf.integrity_check()
    if verdict != "ok":
        tally.integrity_failures.append(verdict)
    conn = buf._conn
    rows = conn.execute(
        "SELECT ts_ms, device_id, kind, seq, site, received_ms, state, event_type, fw,"
        " lat, lon, metrics, detail, metric_keys, metric_vals FROM readings"
    ).fetchall()
    stored = {tuple(r[:4]): tuple(r) for r in rows}
    lost = sum(stored.get(k) != v for k, v in acked.items())
    topics = {r[0] for r in conn.execute("SELECT topic FROM quarantine").fetchall()}
    lost_q = len(quarantined - topics)
    tally.lost_rows += lost
    tally.lost_quarantined += lost_q
    tally.cycles_with_loss += bool(lost or lost_q)
    # What was lost is forgotten so each cycle counts only its own losses.
    for k in [k for k in acked if stored.get(k) != acked[k]]:
        del acked[k]
    quarantined &= topics


def run_cuts(tmp: Path, cuts: int, synchronous: str | None, seed: int) -> Tally:
    """``cuts`` power losses of a buffer that commits batches as the agent does."""
    rng = random.Random(seed)
    disk = Disk(rng)
    vfs = CutVfs(disk)
    tally = Tally()
    n = 0
    try:
        for cycle in range(cuts):
            path = tmp / f"buffer-{cycle // CUTS_PER_FILE}.sqlite3"
            if cycle % CUTS_PER_FILE == 0:
                acked: dict[tuple[int, str, str, int], tuple[object, ...]] = {}
                quarantined: set[str] = set()
            try:
                buf = open_buffer(path, VFS_NAME, synchronous)
            except StoreError as exc:
                tally.open_failures.append(str(exc))
                break
            _check(buf, acked, quarantined, tally)
            disk.arm(rng.randint(1, MAX_OPS))
            try:
                interval = buf.open_interval(T0_MS + n)
                while True:
                    batch = [_reading(n + i, rng) for i in range(rng.randint(1, 40))]
                    bad = [
                        Quarantined.of(T0_MS, f"fleet/q/{n}-{i}/telemetry", b"{not json", "bad")
                        for i in range(rng.choice((0, 0, 0, 1, 2)))
                    ]
                    n += len(batch)
                    buf.write(batch, bad, alive=(interval, T0_MS + n))
                    # write() returned: COMMIT is done, the agent would PUBACK now.
                    acked.update((r.key, reading_row(r)) for r in batch)
                    quarantined.update(q.topic for q in bad)
                    tally.acked_rows += len(batch)
                    tally.acked_quarantined += len(bad)
            except StoreError:
                pass  # the cut: this COMMIT (or open) failed, nothing of it was acknowledged
            assert disk.dead, "the workload ended without a cut"
            tally.cut_in[Path(disk.cut_file).suffix.lstrip(".").replace("sqlite3", "db")] += 1
            buf.close()
            tally.dropped_sectors += disk.restore()
            path.with_name(path.name + "-shm").unlink(missing_ok=True)  # RAM is gone
            tally.cuts += 1
        for last in sorted(tmp.glob("buffer-*.sqlite3"))[-1:]:
            buf = open_buffer(last, VFS_NAME, synchronous)
            _check(buf, acked, quarantined, tally)
            buf.close()
    finally:
        vfs.unregister()
    return tally


def _describe(t: Tally) -> str:
    where = ", ".join(f"{k} {v}" for k, v in sorted(t.cut_in.items()))
    return (
        f"{t.cuts} cuts (during writes to: {where}), {t.dropped_sectors:,} unsynced sectors"
        f" dropped; {t.lost_rows} of {t.acked_rows:,} acked rows and {t.lost_quarantined} of"
        f" {t.acked_quarantined:,} acked quarantine rows lost; {len(t.integrity_failures)}"
        " integrity failures"
    )


def test_harness_uses_the_agents_pragmas() -> None:
    pragmas = dict(agent_pragmas())
    assert pragmas == {"journal_mode": "WAL", "synchronous": "FULL"}, pragmas


def test_power_cuts_lose_no_acknowledged_row(tmp_path: Path, figure: Figure) -> None:
    cuts = pick(20, 250)
    seed = random.randrange(2**32)
    tally = run_cuts(tmp_path, cuts, None, seed)
    figure(f"synchronous=FULL (agent): {_describe(tally)} (seed {seed})")
    assert tally.cuts == cuts and not tally.open_failures, tally.open_failures
    assert tally.acked_rows > 0
    assert tally.lost_rows == tally.lost_quarantined == 0, _describe(tally)
    assert tally.integrity_failures == []
    # The cuts hit the main file too (checkpoints), not only WAL appends.
    if cuts >= 100:
        assert tally.cut_in["db"] > 0, tally.cut_in


def test_same_run_with_synchronous_normal_reports_losses(tmp_path: Path, figure: Figure) -> None:
    cuts = pick(10, 50)
    seed = random.randrange(2**32)
    tally = run_cuts(tmp_path, cuts, "NORMAL", seed)
    figure(
        f"control, synchronous=NORMAL: {tally.lost_rows:,} of {tally.acked_rows:,} acked rows"
        f" lost in {tally.cycles_with_loss} of {tally.cuts} cuts,"
        f" {len(tally.integrity_failures)} integrity failures (the harness can fail)"
    )
    assert tally.lost_rows > 0, "the harness did not catch synchronous=NORMAL losing commits"


@pytest.mark.parametrize("keep", [0.0, 1.0])
def test_extremes_of_the_disk_model(tmp_path: Path, keep: float) -> None:
    """All unsynced writes dropped, or all kept: both are legal power cuts, FULL survives."""
    rng = random.Random(7)
    disk = Disk(rng, keep=keep)
    vfs = CutVfs(disk)
    try:
        buf = open_buffer(tmp_path / "b.sqlite3", VFS_NAME)
        buf.write([_reading(i, rng) for i in range(10)])
        disk.arm(3)
        with pytest.raises(StoreError):
            for i in range(100):
                buf.write([_reading(100 + i, rng)])
        buf.close()
        disk.restore()
        buf = open_buffer(tmp_path / "b.sqlite3", VFS_NAME)
        got = buf._conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        assert buf.integrity_check() == "ok"
        buf.close()
    finally:
        vfs.unregister()
    assert got >= 10

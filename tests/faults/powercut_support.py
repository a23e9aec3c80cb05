"""Power-cut harness: an apsw VFS whose disk forgets every write that was not fsynced.

The model (what a power loss does to a disk with a volatile write cache):

- a write lands in the "page cache": reads see it at once (the real file holds it);
- ``xSync`` makes every earlier write of that file durable;
- at the cut, each write not yet synced survives or not, independently per 512-byte
  sector (so writes are torn and reordered, as SQLite must assume), a pending truncate
  survives or not; the -shm file (memory) is gone;
- after the cut the real files are rewritten to exactly what survived, and the buffer is
  opened again, which runs SQLite's WAL recovery.

Not modelled: loss of a directory entry (a new file is durable once created; the -wal
file is created once and reused) and media errors. ``xSync`` never calls fsync for real:
durability is what this layer says it is, which also makes hundreds of cuts cheap.

The buffer code under test is the agent's own: ``agent.buffer.Buffer.open`` and
``Buffer.write`` run unchanged on an apsw connection adapted to the slice of
``sqlite3.Connection`` they use; the pragmas are read from ``agent.buffer._connect``'s
source so the harness cannot drift from the agent.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import random
import re
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import apsw

import agent.buffer
from agent.buffer import Buffer

SECTOR = 512
VFS_NAME = "fleetpulse-powercut"


@dataclass
class _File:
    durable: bytearray
    pending: list[tuple[int, bytes] | int] = field(default_factory=list)  # write or truncate


class Disk:
    """The simulated storage behind the VFS: durable images and writes not yet synced."""

    def __init__(self, rng: random.Random, keep: float = 0.5) -> None:
        self.rng = rng
        self.keep = keep  # chance that one unsynced sector (or truncate) survives the cut
        self.files: dict[str, _File] = {}
        self.ops = 0
        self.cut_at: int | None = None
        self.dead = False
        self.cut_file = ""  # which file the cut interrupted, for the figures

    def arm(self, cut_at: int) -> None:
        """Cut the power just before the ``cut_at``-th write/sync/truncate from now."""
        self.ops, self.cut_at, self.dead, self.cut_file = 0, cut_at, False, ""

    def tick(self, name: str) -> None:
        """Count one mutating I/O; raise SQLITE_IOERR once the power is off."""
        if not self.dead:
            self.ops += 1
            if self.cut_at is not None and self.ops >= self.cut_at:
                self.dead, self.cut_file = True, name
        if self.dead:
            raise apsw.IOError("power is off")

    def state(self, name: str) -> _File:
        if name not in self.files:
            path = Path(name)
            self.files[name] = _File(bytearray(path.read_bytes() if path.exists() else b""))
        return self.files[name]

    def synced(self, name: str) -> None:
        st = self.state(name)
        for op in st.pending:
            _apply(st.durable, op)
        st.pending.clear()

    def restore(self) -> int:
        """After the cut: rewrite each file to what survived; the count of dropped sectors."""
        dropped = 0
        for name, st in self.files.items():
            image = bytearray(st.durable)
            for op in st.pending:
                if isinstance(op, int):
                    if self.rng.random() < self.keep:
                        _apply(image, op)
                    continue
                offset, data = op
                for start in range(offset - offset % SECTOR, offset + len(data), SECTOR):
                    lo, hi = max(start, offset), min(start + SECTOR, offset + len(data))
                    if self.rng.random() < self.keep:
                        _apply(image, (lo, data[lo - offset : hi - offset]))
                    else:
                        dropped += 1
            if os.path.exists(name):
                Path(name).write_bytes(bytes(image))
        self.files.clear()
        self.cut_at, self.dead = None, False
        return dropped


def _apply(image: bytearray, op: tuple[int, bytes] | int) -> None:
    if isinstance(op, int):
        del image[op:]
        return
    offset, data = op
    if len(image) < offset:
        image.extend(bytes(offset - len(image)))
    image[offset : offset + len(data)] = data


class _CutFile(apsw.VFSFile):
    def __init__(self, disk: Disk, name: Any, flags: list[int]) -> None:
        super().__init__("", name, flags)
        self.disk = disk
        self.name = name.filename() if hasattr(name, "filename") else str(name)
        disk.state(self.name)

    def xWrite(self, data: bytes, offset: int) -> None:
        self.disk.tick(self.name)
        super().xWrite(data, offset)
        self.disk.state(self.name).pending.append((offset, bytes(data)))

    def xTruncate(self, newsize: int) -> None:
        self.disk.tick(self.name)
        super().xTruncate(newsize)
        self.disk.state(self.name).pending.append(newsize)

    def xSync(self, flags: int) -> None:
        self.disk.tick(self.name)
        self.disk.synced(self.name)  # durability is the model's, not the host's fsync


class CutVfs(apsw.VFS):
    """The VFS SQLite sees; ``disk`` decides what survives."""

    def __init__(self, disk: Disk) -> None:
        self.disk = disk
        super().__init__(VFS_NAME, "")

    def xOpen(self, name: Any, flags: list[int]) -> apsw.VFSFile:
        return _CutFile(self.disk, name, flags)

    def xDelete(self, filename: str, syncdir: bool) -> None:
        if self.disk.dead:
            raise apsw.IOError("power is off")
        self.disk.files.pop(filename, None)
        super().xDelete(filename, syncdir)


def agent_pragmas() -> list[tuple[str, str]]:
    """The literal ``PRAGMA name = value`` statements of ``agent.buffer._connect``."""
    source = inspect.getsource(agent.buffer._connect)
    return re.findall(r"PRAGMA (\w+) = ([A-Za-z]+)\"", source)


class _Cursor:
    def __init__(self, conn: apsw.Connection, rows: list[Any]) -> None:
        self._rows = rows
        self.lastrowid = conn.last_insert_rowid()
        self.rowcount = conn.changes()

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Any]:
        return self._rows


@contextlib.contextmanager
def _sqlite_errors() -> Iterator[None]:
    # Buffer catches sqlite3.Error: apsw's errors are mapped so its own handling runs.
    try:
        yield
    except apsw.Error as exc:
        raise sqlite3.OperationalError(f"{type(exc).__name__}: {exc}") from exc


class ApswConnection:
    """The part of ``sqlite3.Connection`` that agent/buffer.py uses, on apsw."""

    def __init__(self, conn: apsw.Connection) -> None:
        self.raw = conn

    def execute(self, sql: str, args: Iterable[Any] = ()) -> _Cursor:
        with _sqlite_errors():
            return _Cursor(self.raw, list(self.raw.execute(sql, tuple(args))))

    def executemany(self, sql: str, rows: Iterable[Any]) -> _Cursor:
        with _sqlite_errors():
            return _Cursor(self.raw, list(self.raw.executemany(sql, rows)))

    def executescript(self, script: str) -> None:
        with _sqlite_errors():
            for _ in self.raw.execute(script):
                pass

    @property
    def total_changes(self) -> int:
        return int(self.raw.total_changes())

    def close(self) -> None:
        # A dead disk makes the closing checkpoint fail; the connection is gone either way.
        with contextlib.suppress(apsw.Error):
            self.raw.close()


def open_buffer(path: Path, vfs: str | None, synchronous: str | None = None) -> Buffer:
    """``Buffer.open`` itself, on an apsw connection through ``vfs`` with the agent's pragmas.

    ``synchronous`` overrides the agent's value (the control run uses NORMAL).
    """

    pragmas = agent_pragmas()  # read before the patch below replaces _connect
    assert dict(pragmas).get("journal_mode") == "WAL", pragmas

    def connect(p: Path, busy_timeout_ms: int) -> Any:
        raw = apsw.Connection(str(p), vfs=vfs or "")
        conn = ApswConnection(raw)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        for name, value in pragmas:
            if name == "synchronous" and synchronous:
                value = synchronous
            got = conn.execute(f"PRAGMA {name} = {value}").fetchone()
            if name == "journal_mode" and str(got[0]).lower() != value.lower():
                raise AssertionError(f"journal_mode {got[0]}, wanted {value}")
        return conn

    with mock.patch.object(agent.buffer, "_connect", connect):
        return Buffer.open(path)

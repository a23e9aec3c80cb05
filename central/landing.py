"""Write-once landing store for batches, on a local path or any ``pyarrow.fs`` filesystem.

Layout: ``gateway=<gw>/date=<yyyy-mm-dd>/<batch_id>.parquet`` under the store root.
Locally a batch is written to a temp file in its final directory, fsynced, hard-linked to
its final name (``link`` refuses to replace, so two uploads of one id cannot both land),
and the directory is fsynced. Object stores have no such primitive: there the file is
written straight to its final key after an existence check, and the ledger's primary key
is the only arbiter (see docs/central.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.fs as pafs

from .errors import StoreUnavailable

log = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"
SUFFIX = ".parquet"
# Test hook of the fault suite (docs/reliability.md, R1): with FLEETPULSE_FAULT set to
# ``central_mid_rename`` the server exits (status 86, no cleanup) once a batch is linked to
# its final name, before the temp file is removed, the directory fsynced and the ledger row
# written: what a crash mid-rename leaves. Startup reconciliation must adopt the file.
FAULT_ENV = "FLEETPULSE_FAULT"
FAULT_EXIT = 86


def _fault_point(name: str) -> None:
    if os.environ.get(FAULT_ENV) == name:
        log.critical("fault point %s reached: exiting with %d", name, FAULT_EXIT)
        logging.shutdown()
        os._exit(FAULT_EXIT)


def landing_path(gateway_id: str, batch_id: str, min_ts_ms: int | None, received_ms: int) -> str:
    """Relative path of a batch: dated by its earliest row's UTC day (receive day if empty)."""
    ms = min_ts_ms if min_ts_ms is not None else received_ms
    day = datetime.fromtimestamp(ms / 1000, tz=UTC).date().isoformat()
    return f"gateway={gateway_id}/date={day}/{batch_id}{SUFFIX}"


@dataclass(frozen=True)
class StoredFile:
    """A file found under the landing root; ``path`` is relative to it."""

    path: str
    size: int


class Exists(Exception):
    """The final path already holds a file (write-once)."""

    def __init__(self, sha256: str) -> None:
        super().__init__(sha256)
        self.sha256 = sha256


class LandingStore:
    """The landing root; every method raises ``StoreUnavailable`` for I/O failures."""

    def __init__(self, url: str) -> None:
        try:
            fs, root = pafs.FileSystem.from_uri(url)
        except (ValueError, OSError, TypeError):
            # a plain relative or absolute path
            fs, root = pafs.LocalFileSystem(), str(Path(url).absolute())
        self.url = url
        self.fs = fs
        self.root = root.rstrip("/")
        self.local = isinstance(fs, pafs.LocalFileSystem)

    def open(self) -> LandingStore:
        """Create the root if needed (called at startup)."""
        try:
            self.fs.create_dir(self.root, recursive=True)
        except OSError as exc:
            raise StoreUnavailable(f"landing store {self.url}: cannot create root: {exc}") from exc
        return self

    def full(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def write_once(self, rel: str, data: bytes, sha256: str) -> None:
        """Store ``data`` at ``rel``; raise ``Exists`` (with the stored sha256) if taken."""
        try:
            if self.local:
                self._write_local(rel, data)
            else:
                self._write_remote(rel, data)
        except Exists:
            raise
        except OSError as exc:
            raise StoreUnavailable(f"landing store {self.url}: cannot write {rel}: {exc}") from exc

    def _write_local(self, rel: str, data: bytes) -> None:
        final = Path(self.full(rel))
        _makedirs_durable(final.parent)
        tmp = final.parent / f"{TEMP_PREFIX}{final.name}.{secrets.token_hex(6)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb", closefd=True) as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, final)
            except FileExistsError:
                raise Exists(self.sha256(rel)) from None
            _fault_point("central_mid_rename")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        _fsync_dir(final.parent)

    def _write_remote(self, rel: str, data: bytes) -> None:
        path = self.full(rel)
        if self.fs.get_file_info(path).type != pafs.FileType.NotFound:
            raise Exists(self.sha256(rel))
        parent = path.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        with self.fs.open_output_stream(path) as out:
            out.write(data)

    def read(self, rel: str) -> bytes:
        try:
            with self.fs.open_input_file(self.full(rel)) as fh:
                return bytes(fh.read())
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StoreUnavailable(f"landing store {self.url}: cannot read {rel}: {exc}") from exc

    def sha256(self, rel: str) -> str:
        return hashlib.sha256(self.read(rel)).hexdigest()

    def exists(self, rel: str) -> bool:
        try:
            return self.fs.get_file_info(self.full(rel)).type == pafs.FileType.File
        except OSError as exc:
            raise StoreUnavailable(f"landing store {self.url}: {exc}") from exc

    def delete(self, rel: str) -> None:
        try:
            self.fs.delete_file(self.full(rel))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreUnavailable(f"landing store {self.url}: cannot delete {rel}: {exc}") from exc
        if self.local:
            _fsync_dir(Path(self.full(rel)).parent)

    def walk(self) -> Iterator[StoredFile]:
        """Every file under the root (batches, temp files, strays)."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True))
        except OSError as exc:
            raise StoreUnavailable(f"landing store {self.url}: cannot list: {exc}") from exc
        for info in infos:
            if info.type == pafs.FileType.File:
                rel = info.path[len(self.root) :].lstrip("/")
                yield StoredFile(rel, info.size or 0)

    def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the root is a readable directory."""
        try:
            info = self.fs.get_file_info(self.root)
        except OSError as exc:
            raise StoreUnavailable(f"landing store {self.url}: {exc}") from exc
        if info.type != pafs.FileType.Directory:
            raise StoreUnavailable(f"landing store {self.url}: root {self.root} is missing")


def _makedirs_durable(path: Path) -> None:
    """mkdir -p, fsyncing each parent whose entry was created so the path survives a crash."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir()
        _fsync_dir(d.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

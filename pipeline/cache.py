"""Content-keyed step cache: same code and same input fingerprints means the stored output."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import logging
import os
import pickle
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path, PurePath
from typing import Any

from .errors import CacheError
from .steps import Step

log = logging.getLogger(__name__)


class _Hasher:
    """A write-only file object that hashes what pyarrow's IPC writer streams into it."""

    def __init__(self) -> None:
        self.h = hashlib.blake2b(digest_size=20)
        self.closed = False

    def write(self, data: Any) -> int:
        self.h.update(data)
        return len(memoryview(data))

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _arrow_fingerprint(value: Any) -> str:
    import pyarrow as pa

    if isinstance(value, pa.Array | pa.ChunkedArray):
        value = pa.table({"_": value})
    if isinstance(value, pa.RecordBatch):
        value = pa.Table.from_batches([value])
    # One batch after combine_chunks: the same rows hash the same however they were chunked,
    # and the IPC writer drops slice offsets and padding bytes that are not content.
    table = value.combine_chunks()
    sink = _Hasher()
    with pa.ipc.new_stream(pa.PythonFile(sink, mode="w"), table.schema) as writer:
        for batch in table.to_batches():
            writer.write_batch(batch)
    return "arrow:" + sink.h.hexdigest()


def _feed(h: Any, value: Any) -> bool:
    """Hash value into h; False when the value has no stable content to hash."""
    custom = getattr(value, "__fingerprint__", None)
    if callable(custom):
        h.update(b"F" + str(custom()).encode())
        return True
    if value is None or isinstance(value, bool | int | float | complex | str | bytes):
        h.update(f"{type(value).__name__}:{value!r};".encode())
        return True
    if isinstance(value, datetime | date | time | timedelta | Decimal | PurePath | enum.Enum):
        h.update(f"{type(value).__name__}:{value!r};".encode())
        return True
    mod = type(value).__module__
    if mod.startswith("pyarrow") and hasattr(value, "schema"):
        h.update(_arrow_fingerprint(value).encode())
        return True
    if mod.startswith("pyarrow") and hasattr(value, "type") and hasattr(value, "chunks"):
        h.update(_arrow_fingerprint(value).encode())
        return True
    if mod.startswith("numpy") and hasattr(value, "tobytes") and hasattr(value, "dtype"):
        h.update(f"np:{value.dtype}:{getattr(value, 'shape', ())};".encode())
        h.update(value.tobytes())
        return True
    if isinstance(value, list | tuple | frozenset | set):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        h.update(f"{type(value).__name__}[{len(items)}](".encode())
        if not all(_feed(h, v) for v in items):
            return False
        h.update(b")")
        return True
    if isinstance(value, Mapping):
        h.update(f"map[{len(value)}](".encode())
        for k in sorted(value, key=repr):
            if not (_feed(h, k) and _feed(h, value[k])):
                return False
        h.update(b")")
        return True
    dump = getattr(value, "model_dump_json", None)
    if callable(dump):  # pydantic models
        h.update(f"{type(value).__qualname__}:".encode() + dump().encode())
        return True
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        h.update(f"dc:{type(value).__qualname__}(".encode())
        for f in dataclasses.fields(value):
            if not (_feed(h, f.name) and _feed(h, getattr(value, f.name))):
                return False
        h.update(b")")
        return True
    return False


def fingerprint(value: Any) -> str | None:
    """A stable content hash of a value, or None when it cannot be hashed by content.

    pyarrow tables hash their Arrow IPC stream (schema and data, chunking ignored);
    containers, dataclasses and pydantic models hash their parts; an object can
    provide ``__fingerprint__() -> str``. Anything else gets None and its
    consumers are simply not cached.
    """
    h = hashlib.blake2b(digest_size=20)
    return h.hexdigest() if _feed(h, value) else None


def cache_key(step: Step, input_fingerprints: Mapping[str, str]) -> str:
    """Key of one step execution: its name, its code version and its inputs' fingerprints."""
    h = hashlib.sha256()
    h.update(f"{step.name}\0{step.code_version}\0".encode())
    for name in sorted(input_fingerprints):
        h.update(f"{name}={input_fingerprints[name]}\0".encode())
    return h.hexdigest()


class Cache:
    """Base: counts hits and misses; subclasses store (output fingerprint, value) by key."""

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def lookup(self, step: str, key: str) -> tuple[bool, Any, str | None]:
        """(found, value, fingerprint of value) and count the hit or miss."""
        found, value, fp = self._get(step, key)
        with self._lock:
            if found:
                self.hits += 1
            else:
                self.misses += 1
        return found, value, fp

    def store(self, step: str, key: str, value: Any, fp: str | None) -> None:
        self._put(step, key, value, fp)

    def _get(self, step: str, key: str) -> tuple[bool, Any, str | None]:
        raise NotImplementedError

    def _put(self, step: str, key: str, value: Any, fp: str | None) -> None:
        raise NotImplementedError


class MemoryCache(Cache):
    """In-process cache; keeps the last ``keep_per_step`` results of each step."""

    def __init__(self, keep_per_step: int = 2) -> None:
        super().__init__()
        self.keep_per_step = keep_per_step
        self._data: dict[str, OrderedDict[str, tuple[Any, str | None]]] = {}

    def _get(self, step: str, key: str) -> tuple[bool, Any, str | None]:
        with self._lock:
            entries = self._data.get(step)
            if entries is None or key not in entries:
                return False, None, None
            entries.move_to_end(key)
            value, fp = entries[key]
            return True, value, fp

    def _put(self, step: str, key: str, value: Any, fp: str | None) -> None:
        with self._lock:
            entries = self._data.setdefault(step, OrderedDict())
            entries[key] = (value, fp)
            entries.move_to_end(key)
            while len(entries) > self.keep_per_step:
                entries.popitem(last=False)


class DiskCache(Cache):
    """Pickles under ``root/<step>/<key>.pkl`` (temp, fsync, rename); trusted directories only.

    Only the last ``keep_per_step`` results of a step are kept, which bounds the disk
    used to a few outputs per step: what "inputs did not change since last run" needs.
    """

    def __init__(self, root: str | os.PathLike[str], keep_per_step: int = 1) -> None:
        super().__init__()
        self.root = Path(root)
        self.keep_per_step = keep_per_step
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(
                f"cannot create cache directory {self.root}: {exc.strerror}; choose a writable path"
            ) from exc

    def _path(self, step: str, key: str) -> Path:
        # step names come from code, but name= allows anything: keep them to one path segment
        return self.root / re.sub(r"[^A-Za-z0-9_.-]", "_", step) / f"{key}.pkl"

    def _get(self, step: str, key: str) -> tuple[bool, Any, str | None]:
        path = self._path(step, key)
        try:
            with path.open("rb") as f:
                fp, value = pickle.load(f)
        except FileNotFoundError:
            return False, None, None
        except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
            # A torn or foreign file is a miss, not a failed run: the step just recomputes.
            log.warning("ignoring unreadable cache entry %s: %s", path, exc)
            return False, None, None
        os.utime(path)  # most recently used survives pruning
        return True, value, fp

    def _put(self, step: str, key: str, value: Any, fp: str | None) -> None:
        path = self._path(step, key)
        tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("wb") as f:
                pickle.dump((fp, value), f, protocol=pickle.HIGHEST_PROTOCOL)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except (OSError, pickle.PicklingError, TypeError, AttributeError) as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise CacheError(
                    f"cannot write cache entry {path}: {exc.strerror}; free space or "
                    "point the cache at a writable directory"
                ) from exc
            # An unpicklable output is simply not cached.
            log.info("step %s output not cached: %s", step, exc)
            return
        self._prune(path.parent)

    def _prune(self, folder: Path) -> None:
        entries = []
        for p in folder.glob("*.pkl"):
            try:
                entries.append((p.stat().st_mtime_ns, p))
            except FileNotFoundError:
                continue  # pruned by a concurrent run
        entries.sort(reverse=True)
        for _, old in entries[self.keep_per_step :]:
            old.unlink(missing_ok=True)

"""B2's batch-validator fuzz child: mangles real batches and validates them, one process per seed.

Run as ``python -m tests.faults.batch_fuzz_support OUT_DIR SEED COUNT``. Each input is
written to ``OUT_DIR/current.bin`` (and its seed and index to ``current.txt``) *before* it is
validated, so when pyarrow aborts the process (a native crash Python cannot catch) the parent
still has the bytes that did it. The last stdout line is a JSON tally of the outcomes.
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from pathlib import Path

from central.errors import UploadRefused
from central.validate import Limits, validate_batch
from tests.central_support import make_batch

LIMITS = Limits(max_rows=100_000, max_decompressed_bytes=16 * 1024 * 1024)
GATEWAY = "gw-1"


def bases() -> list[bytes]:
    """Valid batches to start from: one row group, and three (more footer structure)."""
    return [make_batch(GATEWAY, 1, n=50), make_batch(GATEWAY, 1, 300, row_group_size=100)]


def mangle(rng: random.Random, good: bytes) -> bytes:
    """1-4 random byte edits (most in the footer, where pyarrow's metadata is parsed), then
    perhaps bytes inserted or removed in the footer with its length kept honest, or a cut.
    Few edits at a time: most multi-byte damage to a footer stops at its Thrift parse."""
    body = bytearray(good)
    footer_len = int.from_bytes(good[-8:-4], "little")
    footer = len(good) - 8 - footer_len
    for _ in range(rng.choice((1, 1, 2, 3, 4))):
        in_footer = rng.random() < 0.6
        pos = rng.randrange(footer, len(good) - 8) if in_footer else rng.randrange(len(good))
        body[pos] = rng.randrange(256)
    roll = rng.random()
    if roll < 0.1:
        at = rng.randrange(footer, len(body) - 8)
        k = rng.randint(1, 4)
        if rng.random() < 0.5:
            body[at:at] = bytes(rng.randrange(256) for _ in range(k))
            footer_len += k
        else:
            del body[at : min(at + k, len(body) - 8)]
            footer_len = max(0, footer_len - k)
        body[-8:-4] = footer_len.to_bytes(4, "little")
    elif roll < 0.15:
        body = body[: rng.randrange(len(body))]
    return bytes(body)


def main(argv: list[str]) -> int:
    out, seed, count = Path(argv[0]), int(argv[1]), int(argv[2])
    rng = random.Random(seed)
    goods = bases()
    tally: Counter[str] = Counter()
    exceptions: list[str] = []
    for i in range(count):
        data = mangle(rng, rng.choice(goods))
        (out / "current.bin").write_bytes(data)
        (out / "current.txt").write_text(f"seed {seed} input {i}")
        try:
            validate_batch(data, GATEWAY, LIMITS, 1)
            tally["accepted"] += 1
        except UploadRefused as exc:
            tally[f"refused {exc.error}"] += 1
        except Exception as exc:  # a 500 in the API: kept with its input, failed by the parent
            (out / f"exception-{seed}-{i}.bin").write_bytes(data)
            exceptions.append(f"{type(exc).__name__}: {exc!s:.200} (seed {seed} input {i})")
    print(json.dumps({"tally": tally, "exceptions": exceptions}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

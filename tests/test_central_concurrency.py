"""Many gateways at once, and racing uploads of one id: every batch lands exactly once."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from central.ledger import open_ledger
from schemas.batch import batch_id
from tests.central_support import (
    CentralServer,
    central_server,
    create_token,
    files_under,
    make_batch,
    put,
    sha,
)

__all__ = ["central_server"]  # the fixture, imported for pytest

GATEWAYS = 8
BATCHES = 50


def ledger_of(server: CentralServer) -> dict[str, str]:
    ledger = open_ledger(f"sqlite:///{server.config.parent / 'central' / 'ledger.sqlite3'}")
    try:
        return {b.batch_id: b.sha256 for b in ledger.batches()}
    finally:
        ledger.close()


def landing_of(server: CentralServer) -> dict[str, str]:
    root = server.config.parent / "central" / "landing"
    return {p.stem: sha(p.read_bytes()) for p in files_under(root)}


def test_eight_gateways_fifty_batches_each(central_server: CentralServer) -> None:
    tokens = {f"gw-{g}": create_token(central_server.config, f"gw-{g}") for g in range(GATEWAYS)}
    bodies = {
        (gw, s): make_batch(gw, s, n=30, start_ms=1_767_225_600_000 + s * 3_600_000)
        for gw in tokens
        for s in range(1, BATCHES + 1)
    }

    def gateway(gw: str) -> list[int]:
        rng = random.Random(gw)
        statuses = []
        with httpx.Client(base_url=central_server.url, timeout=60) as client:
            for s in range(1, BATCHES + 1):
                r = put(client, batch_id(gw, s), bodies[(gw, s)], tokens[gw])
                statuses.append(r.status_code)
                if rng.random() < 0.2:  # a retry after a lost response
                    again = put(client, batch_id(gw, s), bodies[(gw, s)], tokens[gw])
                    statuses.append(again.status_code)
        return statuses

    with ThreadPoolExecutor(GATEWAYS) as pool:
        results = dict(zip(tokens, pool.map(gateway, tokens), strict=True))

    for gw, statuses in results.items():
        assert statuses.count(201) == BATCHES, (gw, statuses)
        assert set(statuses) <= {200, 201}, (gw, statuses)
    recorded = ledger_of(central_server)
    assert len(recorded) == GATEWAYS * BATCHES
    assert recorded == {batch_id(gw, s): sha(b) for (gw, s), b in bodies.items()}
    assert landing_of(central_server) == recorded


def race(server: CentralServer, token: str, bid: str, bodies: list[bytes]) -> list[int]:
    barrier = threading.Barrier(len(bodies))

    def one(body: bytes) -> int:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            barrier.wait()
            return put(client, bid, body, token).status_code

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(one, bodies))


def test_racing_identical_uploads_one_wins(central_server: CentralServer) -> None:
    token = create_token(central_server.config, "gw-r")
    for s in range(1, 6):
        body = make_batch("gw-r", s)
        statuses = race(central_server, token, batch_id("gw-r", s), [body] * 8)
        assert sorted(statuses) == [200] * 7 + [201], statuses
    assert len(ledger_of(central_server)) == 5
    assert landing_of(central_server) == ledger_of(central_server)


def test_racing_different_contents_only_one_lands(central_server: CentralServer) -> None:
    token = create_token(central_server.config, "gw-r")
    for s in range(1, 6):
        # different row counts and different days: different bytes and different paths
        bodies = [
            make_batch("gw-r", s, n=10 + i, start_ms=1_767_225_600_000 + i * 86_400_000)
            for i in range(6)
        ]
        statuses = race(central_server, token, batch_id("gw-r", s), bodies)
        assert statuses.count(201) == 1, statuses
        assert set(statuses) <= {201, 409}, statuses
        winner = bodies[statuses.index(201)]
        assert ledger_of(central_server)[batch_id("gw-r", s)] == sha(winner)
    # the losers' files were removed: the landing store is exactly the ledger
    assert landing_of(central_server) == ledger_of(central_server)
    root: Path = central_server.config.parent / "central" / "landing"
    assert not [p for p in files_under(root) if p.name.startswith(".tmp-")]

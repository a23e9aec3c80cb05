"""The ledger on the real PostgreSQL at 127.0.0.1:5432 (database ``test``), one schema per run."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from central.errors import LedgerConflict
from central.ledger import Ledger, LedgerBatch, TokenRecord, open_ledger
from schemas.batch import batch_id
from tests.brokers import free_port
from tests.central_support import CentralServer, create_token, make_batch, put, sha, write_config

pytestmark = pytest.mark.postgres

PG_USERS = ("root", "postgres")


def _admin() -> tuple[object, str]:
    psycopg = pytest.importorskip("psycopg")
    errors = []
    for user in PG_USERS:
        try:
            conn = psycopg.connect(
                host="127.0.0.1",
                port=5432,
                dbname="test",
                user=user,
                connect_timeout=3,
                autocommit=True,
            )
        except psycopg.OperationalError as exc:
            errors.append(f"{user}: {str(exc).strip().splitlines()[0]}")
            continue
        return conn, user
    pytest.skip(f"no PostgreSQL reachable on 127.0.0.1:5432 database 'test' ({'; '.join(errors)})")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL whose search_path is a fresh schema, dropped afterwards."""
    conn, user = _admin()
    schema = f"fp_central_{secrets.token_hex(6)}"
    conn.execute(f"CREATE SCHEMA {schema}")  # type: ignore[attr-defined]
    try:
        yield (
            f"postgresql://{user}@127.0.0.1:5432/test"
            f"?options=-csearch_path%3D{schema}&application_name={schema}"
        )
    finally:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")  # type: ignore[attr-defined]
        conn.close()  # type: ignore[attr-defined]


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    url = (
        f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
        if request.param == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    led = open_ledger(url)
    try:
        yield led
    finally:
        led.close()


def row(bid: str, received: int, gw: str = "gw-1", digest: str = "a" * 64) -> LedgerBatch:
    return LedgerBatch(
        bid, gw, digest, 100, 5, 1000, 2000, f"gateway={gw}/x/{bid}.parquet", received
    )


def test_ledger_contract_on_both_backends(ledger: Ledger) -> None:
    ledger.record_batch(row("gw-1-2", 20))
    ledger.record_batch(row("gw-1-1", 10))
    ledger.record_batch(row("gw-2-1", 20, gw="gw-2"))
    with pytest.raises(LedgerConflict):
        ledger.record_batch(row("gw-1-1", 30, digest="b" * 64))
    assert ledger.get_batch("gw-1-1") == row("gw-1-1", 10)
    assert ledger.get_batch("nope") is None
    assert [b.batch_id for b in ledger.batches()] == ["gw-1-1", "gw-1-2", "gw-2-1"]
    assert [b.batch_id for b in ledger.batches(gateway_id="gw-1")] == ["gw-1-1", "gw-1-2"]
    assert [b.batch_id for b in ledger.batches(received_after_ms=10, limit=1)] == ["gw-1-2"]
    assert ledger.batch_count() == 3
    assert ledger.get_batch("gw-1-1").min_ts.year == 1970  # type: ignore[union-attr]

    ledger.add_token(TokenRecord("t1", "gw-1", "h" * 64, 5, None))
    ledger.add_token(TokenRecord("t2", "gw-1", "i" * 64, 6, None))
    assert ledger.revoke_tokens("gw-1", 7, token_id="t2") == 1
    assert [(t.token_id, t.active) for t in ledger.tokens()] == [("t1", True), ("t2", False)]
    assert ledger.revoke_tokens("gw-1", 8) == 1
    assert ledger.revoke_tokens("gw-1", 9) == 0
    ledger.ping()


def _pg_terminate(application_name: str) -> int:
    conn, _ = _admin()
    try:
        cur = conn.execute(  # type: ignore[attr-defined]
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (application_name,),
        )
        return len(cur.fetchall())
    finally:
        conn.close()  # type: ignore[attr-defined]


def test_server_on_postgres_ledger(pg_url: str, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path / "central.toml", tmp_path / "data", port, ledger_url=pg_url)
    tokens = {f"gw-{g}": create_token(config, f"gw-{g}") for g in range(4)}
    server = CentralServer(config, port, tmp_path / "central.log").start()
    try:
        # 4 gateways x 25 batches at once, each sent twice
        def gateway(gw: str) -> list[int]:
            with httpx.Client(base_url=server.url, timeout=60) as c:
                out = []
                for s in range(1, 26):
                    body = make_batch(gw, s, n=10)
                    out += [put(c, batch_id(gw, s), body, tokens[gw]).status_code for _ in "ab"]
                return out

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(gateway, tokens))
        assert all(r == [201, 200] * 25 for r in results), results

        # racing different contents for one id: the primary key lets exactly one in
        bodies = [make_batch("gw-0", 99, n=5 + i) for i in range(6)]
        with ThreadPoolExecutor(6) as pool:
            statuses = list(
                pool.map(
                    lambda b: (
                        httpx.put(
                            f"{server.url}/v1/batches/{batch_id('gw-0', 99)}",
                            content=b,
                            headers={
                                "Authorization": f"Bearer {tokens['gw-0']}",
                                "Content-SHA256": sha(b),
                            },
                            timeout=60,
                        ).status_code
                    ),
                    bodies,
                )
            )
        assert sorted(statuses) == [201] + [409] * 5, statuses

        # the database drops our connection: 503 with Retry-After, then the retry works
        schema_app = pg_url.rsplit("application_name=", 1)[1]
        assert _pg_terminate(schema_app) >= 1
        body = make_batch("gw-1", 100)
        with httpx.Client(base_url=server.url, timeout=60) as c:
            down = put(c, batch_id("gw-1", 100), body, tokens["gw-1"])
            assert down.status_code == 503, down.text
            assert down.headers["retry-after"]
            assert put(c, batch_id("gw-1", 100), body, tokens["gw-1"]).status_code == 201
    finally:
        server.stop()

    led = open_ledger(pg_url)
    try:
        assert led.batch_count() == 4 * 25 + 1 + 1
        winner = led.get_batch(batch_id("gw-0", 99))
        assert winner is not None
        assert winner.sha256 == sha(bodies[statuses.index(201)])
    finally:
        led.close()

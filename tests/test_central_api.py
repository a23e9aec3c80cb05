"""Ingest API against a real ``fleetpulse central serve``: DESIGN §5 statuses, hostile uploads."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from schemas.batch import batch_id
from tests.brokers import free_port
from tests.central_support import (
    CentralServer,
    batch_rows,
    cli,
    create_token,
    files_under,
    make_batch,
    put,
    sha,
    write_config,
)

MAX_BYTES = 1024 * 1024


@dataclass
class Env:
    server: CentralServer
    client: httpx.Client
    tokens: dict[str, str]
    root: Path  # everything the test may touch lives under here
    landing: Path
    revoked: str


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("central_api")
    port = free_port()
    config = write_config(
        root / "central.toml",
        root / "data",
        port,
        max_batch_bytes=MAX_BYTES,
        max_batch_rows=100_000,
        max_decompressed_bytes=16 * 1024 * 1024,
    )
    tokens = {gw: create_token(config, gw) for gw in ("gw-1", "gw-2")}
    revoked = create_token(config, "gw-3")
    res = cli("central", "token", "revoke", "gw-3", "--config", str(config))
    assert res.returncode == 0, res.stderr
    server = CentralServer(config, port, root / "central.log").start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield Env(server, client, tokens, root, root / "data" / "landing", revoked)
    finally:
        server.stop()


def landed(env: Env) -> set[str]:
    return {str(p.relative_to(env.landing)) for p in files_under(env.landing)}


def outside_landing(env: Env) -> set[Path]:
    """Files under the test root that are neither landed batches nor central's own state."""
    known = {"central.toml", "central.log", "ledger.sqlite3", "ledger.sqlite3-wal"}
    known.add("ledger.sqlite3-shm")
    return {
        p
        for p in files_under(env.root)
        if not p.is_relative_to(env.landing) and p.name not in known
    }


def raw_put(env: Env, target: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """A PUT with the request target exactly as given (clients would normalise ``..``)."""
    head = f"PUT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection(("127.0.0.1", env.server.port), timeout=30) as s:
        s.sendall(head.encode("latin-1") + b"\r\n" + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def test_store_then_replay_then_conflict(env: Env) -> None:
    body = make_batch("gw-1", 1)
    bid = batch_id("gw-1", 1)
    r = put(env.client, bid, body, env.tokens["gw-1"])
    assert r.status_code == 201, r.text
    receipt = r.json()
    assert receipt["status"] == "stored"
    assert receipt["rows"] == 20
    assert receipt["landing_path"] == f"gateway=gw-1/date=2026-01-01/{bid}.parquet"
    assert (env.landing / receipt["landing_path"]).read_bytes() == body

    again = put(env.client, bid, body, env.tokens["gw-1"])
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert again.json()["received_at"] == receipt["received_at"]

    other = make_batch("gw-1", 1, n=21)
    clash = put(env.client, bid, other, env.tokens["gw-1"])
    assert clash.status_code == 409
    assert clash.json()["error"] == "conflict"
    assert sha(body) in clash.json()["detail"]
    assert (env.landing / receipt["landing_path"]).read_bytes() == body


def test_landing_date_is_utc_day_of_earliest_row(env: Env) -> None:
    # rows from 23:59 on Jan 4 into Jan 5 land under Jan 4
    start = 1_767_225_600_000 + 4 * 86_400_000 - 60_000
    body = make_batch("gw-1", 2, n=10, start_ms=start)
    r = put(env.client, batch_id("gw-1", 2), body, env.tokens["gw-1"])
    assert r.status_code == 201, r.text
    assert r.json()["landing_path"].startswith("gateway=gw-1/date=2026-01-04/")


def _bomb() -> bytes:
    cols = batch_rows("gw-1", 1)
    cols["detail"] = ["\0" * (64 * 1024 * 1024)]
    return make_batch("gw-1", 9, 1, cols=cols, use_dictionary=False)


def _foreign_rows() -> bytes:
    cols = batch_rows("gw-1", 10)
    cols["gateway_id"][5] = "gw-2"
    return make_batch("gw-1", 9, 10, cols=cols)


GOOD9 = make_batch("gw-1", 9)
HOSTILE = [
    # (name, batch id, body, token key or raw token, sha header, expected status, error)
    ("no token", "gw-1-0000000009", GOOD9, None, "auto", 401, "no_token"),
    ("garbage token", "gw-1-0000000009", GOOD9, "raw:abc", "auto", 401, "bad_token"),
    (
        "well-formed unknown token",
        "gw-1-0000000009",
        GOOD9,
        "raw:fp1.0123456789abcdef." + "A" * 43,
        "auto",
        401,
        "bad_token",
    ),
    ("revoked token", "gw-3-0000000009", make_batch("gw-3", 9), "revoked", "auto", 401, None),
    ("id of another gateway", "gw-1-0000000009", GOOD9, "gw-2", "auto", 403, "other_gateway"),
    ("metadata of another gateway", "gw-2-0000000009", GOOD9, "gw-2", "auto", 403, None),
    ("rows of another gateway", "gw-1-0000000009", _foreign_rows(), "gw-1", "auto", 403, None),
    ("id without sequence", "gw-1-abc", GOOD9, "gw-1", "auto", 400, "bad_batch_id"),
    ("sha mismatch", "gw-1-0000000009", GOOD9, "gw-1", "0" * 64, 400, "sha_mismatch"),
    ("sha missing", "gw-1-0000000009", GOOD9, "gw-1", None, 400, "no_sha256"),
    ("sha malformed", "gw-1-0000000009", GOOD9, "gw-1", "xyz", 400, "bad_sha256"),
    ("not parquet", "gw-1-0000000009", b"<html>hello</html>", "gw-1", "auto", 422, "not_parquet"),
    ("empty body", "gw-1-0000000009", b"", "gw-1", "auto", 422, "not_parquet"),
    ("parquet bomb", "gw-1-0000000009", _bomb(), "gw-1", "auto", 422, "too_large_decompressed"),
    (
        "over max_batch_bytes",
        "gw-1-0000000009",
        b"PAR1" + b"\0" * MAX_BYTES,
        "gw-1",
        "auto",
        413,
        "too_large",
    ),
]


@pytest.mark.parametrize(
    ("bid", "body", "who", "digest", "status", "error"),
    [case[1:] for case in HOSTILE],
    ids=[case[0] for case in HOSTILE],
)
def test_hostile_uploads(
    env: Env,
    bid: str,
    body: bytes,
    who: str | None,
    digest: str | None,
    status: int,
    error: str | None,
) -> None:
    before = landed(env)
    if who is None:
        token = None
    elif who.startswith("raw:"):
        token = who[4:]
    elif who == "revoked":
        token = env.revoked
    else:
        token = env.tokens[who]
    r = put(env.client, bid, body, token, digest)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error", "detail"}
    if error is not None:
        assert r.json()["error"] == error
    assert r.json()["detail"]
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"
    assert landed(env) == before
    assert outside_landing(env) == set()


TRAVERSAL = [
    ("/v1/batches/..", 400),
    ("/v1/batches/%2e%2e", 400),
    ("/v1/batches/%2E%2E", 400),
    ("/v1/batches/gw-1-0000000010%2e%2e", 400),
    ("/v1/batches/%252e%252e", 400),  # double-encoded: stays literal '%2e%2e' → refused
    ("/v1/batches/gw-1-%00", 400),
    ("/v1/batches/gw-1-%5C..%5Cx", 400),
    ("/v1/batches/gw-1-\\..\\x", 400),
    ("/v1/batches/" + "1" * 300, 400),
    ("/v1/batches/gw-1-" + "1" * 300, 400),
    # Starlette decodes %2F before routing, so the id spans segments and no route matches
    ("/v1/batches/gw-1-%2F..%2F..%2Fx", 404),
    ("/v1/batches/..%2F..%2Fetc%2Fpasswd", 404),
    ("/v1/batches/../../x", 404),
    ("/v1/batches/gw-1-0000000010/..%2F..", 404),
]


@pytest.mark.parametrize(("target", "status"), TRAVERSAL, ids=[t for t, _ in TRAVERSAL])
def test_traversal_looking_ids(env: Env, target: str, status: int) -> None:
    before = landed(env)
    body = make_batch("gw-1", 10)
    headers = {
        "Authorization": f"Bearer {env.tokens['gw-1']}",
        "Content-SHA256": sha(body),
        "Content-Length": str(len(body)),
    }
    got, payload = raw_put(env, target, body, headers)
    assert got == status, payload
    assert b'"error"' in payload
    assert landed(env) == before
    assert outside_landing(env) == set()
    assert not (env.root.parent / "x").exists()


def test_content_length_over_limit_refused_before_body(env: Env) -> None:
    """413 comes back although not one byte of the 10 GB body was sent."""
    headers = {
        "Authorization": f"Bearer {env.tokens['gw-1']}",
        "Content-SHA256": "0" * 64,
        "Content-Length": str(10 * 1024**3),
    }
    status, payload = raw_put(env, "/v1/batches/gw-1-0000000011", b"", headers)
    assert status == 413
    assert b"max_batch_bytes" in payload


def test_chunked_body_over_limit_refused_while_streaming(env: Env) -> None:
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        for _ in range(64):  # 4 MiB in total, limit is 1 MiB
            sent += 65536
            yield b"\0" * 65536

    r = env.client.put(
        "/v1/batches/gw-1-0000000012",
        content=chunks(),
        headers={"Authorization": f"Bearer {env.tokens['gw-1']}", "Content-SHA256": "0" * 64},
    )
    assert r.status_code == 413
    assert r.json()["error"] == "too_large"


def test_chunked_upload_within_limit_is_stored(env: Env) -> None:
    body = make_batch("gw-2", 1, n=500)
    r = env.client.put(
        f"/v1/batches/{batch_id('gw-2', 1)}",
        content=iter([body[i : i + 1000] for i in range(0, len(body), 1000)]),
        headers={"Authorization": f"Bearer {env.tokens['gw-2']}", "Content-SHA256": sha(body)},
    )
    assert r.status_code == 201, r.text
    assert r.json()["gateway_id"] == "gw-2"


def test_healthz_metrics_openapi(env: Env) -> None:
    assert env.client.get("/v1/healthz").json() == {"status": "ok", "ledger": "ok", "store": "ok"}
    text = env.client.get("/metrics").text
    assert 'fleetpulse_central_uploads_total{status="201"}' in text
    assert 'fleetpulse_central_uploads_total{status="401"}' in text
    assert "fleetpulse_central_upload_duration_seconds_bucket" in text
    assert "fleetpulse_central_upload_duration_seconds_count" in text
    doc = env.client.get("/openapi.json").json()
    op = doc["paths"]["/v1/batches/{batch_id}"]["put"]
    assert {"200", "201", "400", "401", "403", "409", "413", "422", "503"} <= set(op["responses"])


def test_unknown_route_is_json_404(env: Env) -> None:
    r = env.client.get("/v1/nope")
    assert r.status_code == 404
    assert r.json()["error"] == "not_found"

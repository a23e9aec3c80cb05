"""``fleetpulse central token …`` and ``serve`` as a person runs them; the store going away."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx

from schemas.batch import batch_id
from tests.central_support import (
    CentralServer,
    central_server,
    cli,
    create_token,
    make_batch,
    put,
    write_config,
)

__all__ = ["central_server"]  # the fixture, imported for pytest


def test_token_create_list_revoke(tmp_path: Path) -> None:
    config = write_config(tmp_path / "central.toml", tmp_path / "data")
    created = cli("central", "token", "create", "gw-7", "--config", str(config))
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("fp1.")
    token_id, secret = token.split(".")[1:]

    listed = cli("central", "token", "list", "--config", str(config))
    assert listed.returncode == 0
    line = next(ln for ln in listed.stdout.splitlines() if ln.startswith("gw-7"))
    assert token_id in line
    assert line.rstrip().endswith("-")  # not revoked

    # only a hash is stored: the secret appears nowhere in the database
    db = tmp_path / "data" / "ledger.sqlite3"
    with sqlite3.connect(db) as conn:
        dump = "\n".join(conn.iterdump())
    assert secret not in dump
    assert token_id in dump

    revoked = cli("central", "token", "revoke", "gw-7", "--config", str(config))
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked 1 token" in revoked.stdout
    listed = cli("central", "token", "list", "--config", str(config))
    line = next(ln for ln in listed.stdout.splitlines() if ln.startswith("gw-7"))
    assert not line.rstrip().endswith("-")


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path / "central.toml", tmp_path / "data")
    cases = [
        (("central", "token", "revoke", "gw-none", "--config", str(config)), 1, "no active token"),
        (("central", "token", "create", "../etc", "--config", str(config)), 1, "gateway id"),
        (("central", "token", "list", "--config", str(tmp_path / "nope.toml")), 2, "--config"),
    ]
    bad = tmp_path / "bad.toml"
    bad.write_text('listen = "127.0.0.1:80"\nmax_batch_bytez = 5\n')
    cases.append((("central", "serve", "--config", str(bad)), 2, "max_batch_bytez"))
    for args, code, needle in cases:
        res = cli(*args)
        assert res.returncode == code, (args, res.stderr)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, res.stderr
        assert needle in lines[0]
        assert lines[0].startswith("fleetpulse central:")


def test_env_override_reaches_serve(tmp_path: Path) -> None:
    config = write_config(tmp_path / "central.toml", tmp_path / "data")
    res = cli("central", "serve", "--config", str(config), env={"FLEETPULSE_LISTEN": "nonsense"})
    assert res.returncode == 2
    assert "'listen'" in res.stderr


def test_store_unavailable_is_503_then_recovers(central_server: CentralServer) -> None:
    token = create_token(central_server.config, "gw-u")
    landing = central_server.config.parent / "central" / "landing"
    with httpx.Client(base_url=central_server.url, timeout=30) as client:
        assert put(client, batch_id("gw-u", 1), make_batch("gw-u", 1), token).status_code == 201
        moved = landing.with_name("landing.away")
        landing.rename(moved)
        landing.write_text("not a directory")  # the mount is gone, something else is there
        try:
            body = make_batch("gw-u", 2)
            r = put(client, batch_id("gw-u", 2), body, token)
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "unavailable"
            assert r.headers["retry-after"]
            health = client.get("/v1/healthz")
            assert health.status_code == 503
            assert health.json()["store"] != "ok"
        finally:
            landing.unlink()
            moved.rename(landing)
        assert put(client, batch_id("gw-u", 2), body, token).status_code == 201
        assert client.get("/v1/healthz").status_code == 200


def test_public_api_and_commands_documented() -> None:
    import central

    for name in central.__all__:
        assert getattr(central, name) is not None, name
    doc = (Path(__file__).resolve().parent.parent / "docs" / "central.md").read_text()
    for command in ("central serve", "central token create", "token revoke", "token list"):
        assert command in doc, f"{command} is not documented in docs/central.md"
    for status in (200, 201, 400, 401, 403, 409, 413, 422, 503):
        assert f"| {status} |" in doc, f"status {status} is not documented"

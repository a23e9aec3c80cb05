"""Property-based API fuzzing with schemathesis against the served OpenAPI document: no 5xx."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.strategies import SearchStrategy
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from central.api import create_app
from central.config import CentralConfig
from central.ledger import open_ledger
from central.tokens import create_token
from tests.central_support import make_batch

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_schemathesis_finds_no_server_error(tmp_path: Path) -> None:
    config = CentralConfig(
        data_dir=tmp_path / "data",
        max_batch_bytes=256 * 1024,
        max_decompressed_bytes=4 * 1024 * 1024,
    )
    ledger = open_ledger(config.ledger_dsn)
    token, _ = create_token(ledger, "gw-1", 0)
    app = create_app(config, ledger=ledger)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    put = schema["/v1/batches/{batch_id}"]["PUT"]
    statuses: Counter[int] = Counter()
    runs: Counter[str] = Counter()
    good = make_batch("gw-1", 1)

    def run(name: str, strategy: SearchStrategy[Any], examples: int, fix_sha: bool = False) -> None:
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def one(case: schemathesis.Case) -> None:
            body = getattr(case.body, "data", case.body)  # binary bodies come wrapped
            if fix_sha and isinstance(body, bytes):
                # let random bodies reach the Parquet validator instead of the sha check
                assert case.headers is not None  # the stage fixes Authorization
                case.headers["Content-SHA256"] = hashlib.sha256(body).hexdigest()
            response = case.call()
            statuses[response.status_code] += 1
            runs[name] += 1
            case.validate_response(response, checks=CHECKS)

        one()

    auth = {"Authorization": f"Bearer {token}"}
    for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
        run(f"put-anything-{mode.value}", put.as_strategy(mode), 75)
        run(f"put-token-{mode.value}", put.as_strategy(mode, headers=auth), 75)
    run(
        "put-token-id-body",
        put.as_strategy(headers=auth, path_parameters={"batch_id": "gw-1-0000000001"}),
        150,
        fix_sha=True,
    )
    # a real batch under random ids: refused by id checks, never a crash
    run(
        "put-real-batch",
        put.as_strategy(
            headers={**auth, "Content-SHA256": hashlib.sha256(good).hexdigest()},
            body=good,
            media_type="application/octet-stream",
        ),
        50,
    )
    for path in ("/v1/healthz", "/metrics"):
        run(path, schema[path]["GET"].as_strategy(), 5)  # no inputs: one distinct case

    total = sum(runs.values())
    assert total >= 500, runs
    assert not [s for s in statuses if s >= 500], statuses
    # the fuzzing got past authentication into id, sha and Parquet validation
    assert statuses[401] and statuses[400] and statuses[422], statuses
    print(f"schemathesis: {total} cases, statuses {dict(sorted(statuses.items()))}")

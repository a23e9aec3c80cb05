"""B2: schemathesis on every ingest API endpoint; decoder and batch validator fuzzed a while.

The API runs in-process (ASGI) on a real SQLite ledger and landing directory; every
response is checked for 5xx and for conformance to the served OpenAPI document. The
decoder (``schemas.decode``) may answer a Reading or ``InvalidMessage``, nothing else; the
batch validator (``central.validate``) a valid batch or ``UploadRefused``, in child processes
that may not die.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from requests.structures import CaseInsensitiveDict
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
from schemas import InvalidMessage, Reading, decode
from tests.central_support import make_batch
from tests.faults.figures_support import ROOT, Figure, pick

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


_ascii = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20)
_token = st.from_regex(r"\A[A-Za-z0-9-]{1,20}\Z").filter(lambda k: k.lower() != "host")
_noise = st.dictionaries(_token, _ascii, max_size=4)


def _with_noise(
    case: schemathesis.Case, headers: dict[str, str], query: dict[str, str]
) -> schemathesis.Case:
    if case.headers is None:
        case.headers = CaseInsensitiveDict()
    case.headers.update(headers)
    case.query = {**(case.query or {}), **query}
    return case


def test_schemathesis_cases_per_endpoint_find_no_server_error(
    tmp_path: Path, figure: Figure
) -> None:
    per_endpoint = pick(200, 1000)
    config = CentralConfig(
        data_dir=tmp_path / "data",
        max_batch_bytes=256 * 1024,
        max_decompressed_bytes=4 * 1024 * 1024,
    )
    ledger = open_ledger(config.ledger_dsn)
    token, _ = create_token(ledger, "gw-1", 0)
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(config, ledger=ledger))
    statuses: dict[str, Counter[int]] = {}
    cases: Counter[str] = Counter()
    failures: list[str] = []

    def run(endpoint: str, strategy: SearchStrategy[Any], examples: int, fix_sha: bool) -> None:
        @settings(max_examples=examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=strategy)
        def one(case: schemathesis.Case) -> None:
            body = getattr(case.body, "data", case.body)
            if fix_sha and isinstance(body, bytes) and case.headers is not None:
                case.headers["Content-SHA256"] = hashlib.sha256(body).hexdigest()
            response = case.call()
            statuses.setdefault(endpoint, Counter())[response.status_code] += 1
            cases[endpoint] += 1
            try:
                case.validate_response(response, checks=CHECKS)
            except Exception as exc:  # counted and reported below, never swallowed
                failures.append(f"{endpoint}: {type(exc).__name__}: {str(exc)[:200]}")

        one()

    auth = {"Authorization": f"Bearer {token}"}
    good = make_batch("gw-1", 1)
    put = schema["/v1/batches/{batch_id}"]["PUT"]
    share = per_endpoint // 6 + 1
    for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
        run("PUT /v1/batches/{id}", put.as_strategy(mode), share, False)
        run("PUT /v1/batches/{id}", put.as_strategy(mode, headers=auth), share, False)
    run("PUT /v1/batches/{id}", put.as_strategy(
        headers=auth, path_parameters={"batch_id": "gw-1-0000000001"}), share, True)  # fmt: skip
    run("PUT /v1/batches/{id}", put.as_strategy(
        headers={**auth, "Content-SHA256": hashlib.sha256(good).hexdigest()},
        body=good, media_type="application/octet-stream"), share, False)  # fmt: skip
    # Endpoints without parameters: schemathesis has one distinct request to send (its
    # negative mode has nothing to break), so hypothesis adds random headers and query.
    for path in ("/v1/healthz", "/metrics"):
        hostile = st.builds(_with_noise, schema[path]["GET"].as_strategy(), _noise, _noise)
        run(f"GET {path}", hostile, per_endpoint, False)

    server_errors = sum(n for c in statuses.values() for s, n in c.items() if s >= 500)
    summary = ", ".join(f"{e} {cases[e]:,}" for e in cases)
    figure(
        f"schemathesis: {sum(cases.values()):,} cases ({summary}); {server_errors} server errors,"
        f" {len(failures)} conformance failures"
    )
    assert server_errors == 0, statuses
    assert failures == [], failures[:5]
    assert cases["PUT /v1/batches/{id}"] >= per_endpoint, cases
    assert statuses["PUT /v1/batches/{id}"][422] and statuses["PUT /v1/batches/{id}"][401]


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=6)
    ),
    max_leaves=20,
)
_fields = st.fixed_dictionaries(
    {},
    optional={
        "device_id": st.one_of(st.text(max_size=12), st.integers(), st.just("d1")),
        "ts": st.one_of(
            st.integers(), st.floats(), st.text(max_size=30), st.just("2026-01-01T00:00:00+00:00")
        ),
        "seq": st.one_of(st.integers(), st.floats(), st.text(max_size=4)),
        "state": st.one_of(st.sampled_from(["online", "offline"]), st.text(max_size=8)),
        "type": st.one_of(st.sampled_from(["boot", "crash"]), st.text(max_size=8), _json),
        "metrics": st.one_of(st.dictionaries(st.text(max_size=6), st.floats()), _json),
        "lat": st.one_of(st.floats(), _json),
        "lon": st.one_of(st.floats(), _json),
        "fw": st.one_of(st.text(max_size=80), _json),
        "detail": _json,
        "reason": _json,
    },
)
_topic = st.one_of(
    st.builds(lambda s, d, k: f"fleet/{s}/{d}/{k}", st.text(max_size=8),
              st.sampled_from(["d1", "d2"]) | st.text(max_size=8),
              st.sampled_from(["telemetry", "status", "event"]) | st.text(max_size=8)),
    st.text(max_size=40),
)  # fmt: skip
_payload = st.one_of(
    st.binary(max_size=200),
    _fields.map(lambda d: json.dumps(d, allow_nan=True).encode()),
    _json.map(lambda v: json.dumps(v).encode()),
)


@st.composite
def _near_valid(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid message of each kind, then perhaps some fields overwritten at random."""
    kind = draw(st.sampled_from(["telemetry", "status", "event"]))
    body: dict[str, Any] = {"device_id": "d1", "ts": draw(st.integers(0, 2**42)), "seq": 1}
    body |= {"status": {"state": "online"}, "event": {"type": "boot"}}.get(kind, {})
    if draw(st.booleans()):
        body |= draw(_fields)
    return f"fleet/site-a/d1/{kind}", json.dumps(body, allow_nan=True).encode()


_message = st.one_of(st.tuples(_topic, _payload), _near_valid())


@pytest.mark.timeout(900)  # the full budget is 600 s of fuzzing alone
def test_decoder_fuzzed_for_a_while_never_crashes(figure: Figure) -> None:
    budget_s = pick(10, 600)
    deadline = time.monotonic() + budget_s
    outcomes: Counter[str] = Counter()
    crashes: list[str] = []

    @settings(max_examples=500, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(message=_message, received=st.integers(-(2**63), 2**63 - 1))
    def one(message: tuple[str, bytes], received: int) -> None:
        if time.monotonic() > deadline:
            return  # the budget is spent: let this round end quickly
        topic, payload = message
        try:
            result = decode(topic, payload, received)
            outcomes["reading" if isinstance(result, Reading) else "other"] += 1
        except InvalidMessage:
            outcomes["invalid"] += 1
        except Exception as exc:  # a crash: counted, reported, fails the test below
            crashes.append(f"{type(exc).__name__}: {exc!s:.200} on {topic!r} {payload[:80]!r}")

    rounds = 0
    while time.monotonic() < deadline:
        one()
        rounds += 1
    total = sum(outcomes.values()) + len(crashes)
    figure(
        f"decoder fuzzed {budget_s} s (hypothesis): {total:,} inputs, {outcomes['reading']:,}"
        f" accepted, {outcomes['invalid']:,} refused, {len(crashes)} crashes"
    )
    assert crashes == [], crashes[:5]
    assert outcomes["other"] == 0
    assert outcomes["reading"] > 0 and outcomes["invalid"] > 0, outcomes


@pytest.mark.timeout(900)  # the full budget is 600 s of fuzzing alone
def test_batch_validator_fuzzed_for_a_while_never_crashes(tmp_path: Path, figure: Figure) -> None:
    """Mangled batches (footer-heavy) may be accepted or refused, never raise or abort.

    Each seed runs in a child process: pyarrow has aborted the whole process on a mangled
    footer before (central/footer.py), which in-process fuzzing could only report by dying.
    """
    budget_s = pick(10, 600)
    deadline = time.monotonic() + budget_s
    first_seed = int.from_bytes(os.urandom(3), "big")
    tally: Counter[str] = Counter()
    exceptions: list[str] = []
    aborts: list[str] = []
    seed = first_seed
    while time.monotonic() < deadline:
        proc = subprocess.run(
            [sys.executable, "-m", "tests.faults.batch_fuzz_support", str(tmp_path), str(seed),
             "3000"],
            cwd=ROOT, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if proc.returncode != 0:
            kept = tmp_path / f"abort-{seed}.bin"
            shutil.copyfile(tmp_path / "current.bin", kept)
            where = (tmp_path / "current.txt").read_text()
            tail = " | ".join(proc.stderr.strip().splitlines()[-2:])
            aborts.append(f"rc {proc.returncode} on {where} (bytes kept in {kept}): {tail:.300}")
        else:
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            tally.update(result["tally"])
            exceptions += result["exceptions"]
        seed += 1
    refused = {k.removeprefix("refused "): n for k, n in tally.items() if k != "accepted"}
    figure(
        f"batch validator fuzzed {budget_s} s (mangled footers and pages, a child per seed,"
        f" seeds {first_seed} to {seed - 1}): {sum(tally.values()):,} inputs,"
        f" {tally['accepted']:,} accepted, {sum(refused.values()):,} refused"
        f" ({', '.join(f'{k} {n:,}' for k, n in sorted(refused.items()))}),"
        f" {len(exceptions)} exceptions, {len(aborts)} process aborts"
    )
    assert aborts == [], aborts[:3]
    assert exceptions == [], exceptions[:5]
    assert tally["accepted"] > 0 and refused.get("corrupt", 0) > 0, tally

"""The ingest HTTP API (DESIGN §5): ``PUT /v1/batches/{batch_id}``, health, metrics, OpenAPI.

Everything that can be refused without the body is refused before it is read: token (401),
batch id (400/403), Content-SHA256 (400), Content-Length (413). The body is then read with a
running bound (chunked uploads cannot bypass the limit) and handed to ``Ingest`` in a worker
thread, so validation and fsync never block the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from schemas.batch import BATCH_ID_RE

from . import metrics as prom
from .config import CentralConfig
from .errors import (
    BadRequest,
    CentralError,
    Forbidden,
    TooLarge,
    UnavailableError,
    UploadRefused,
)
from .ingest import Ingest, Outcome, batch_sequence
from .landing import LandingStore
from .ledger import Ledger, LedgerBatch, open_ledger
from .recover import reconcile
from .tokens import bearer_token, verify_token
from .validate import Limits, warm_up

log = logging.getLogger(__name__)

_SHA_RE = re.compile(r"^[0-9a-fA-F]{64}$")
RETRY_AFTER_S = "5"


class ErrorBody(BaseModel):
    """Every refusal: a short machine code and a sentence naming what was wrong and the fix."""

    error: str
    detail: str


class BatchReceipt(BaseModel):
    """The ledger row of a stored batch."""

    status: Literal["stored", "duplicate"]
    batch_id: str
    gateway_id: str
    sha256: str
    size_bytes: int
    rows: int
    min_ts: datetime | None
    max_ts: datetime | None
    landing_path: str
    received_at: datetime


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    ledger: str
    store: str


def _receipt(outcome: Outcome) -> dict[str, Any]:
    b: LedgerBatch = outcome.batch
    return BatchReceipt(
        status="stored" if outcome.status == 201 else "duplicate",
        batch_id=b.batch_id,
        gateway_id=b.gateway_id,
        sha256=b.sha256,
        size_bytes=b.size_bytes,
        rows=b.rows,
        min_ts=b.min_ts,
        max_ts=b.max_ts,
        landing_path=b.landing_path,
        received_at=b.received_at,
    ).model_dump(mode="json")


def error_response(status: int, error: str, detail: str) -> JSONResponse:
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if status == 503:
        headers["Retry-After"] = RETRY_AFTER_S
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "bad batch id, missing or mismatching Content-SHA256"},
    401: {"model": ErrorBody, "description": "no, unknown or revoked gateway token"},
    403: {"model": ErrorBody, "description": "batch id, metadata or rows of another gateway"},
    409: {"model": ErrorBody, "description": "batch id already stored with other content"},
    413: {"model": ErrorBody, "description": "body over max_batch_bytes"},
    422: {"model": ErrorBody, "description": "not Parquet, wrong schema, bad checksum, too big"},
    503: {"model": ErrorBody, "description": "landing store or ledger unavailable; retry"},
}

_BODY_DOC = {
    "requestBody": {
        "required": True,
        "description": "the Parquet batch file, byte for byte",
        "content": {
            ct: {"schema": {"type": "string", "format": "binary"}}
            for ct in ("application/vnd.apache.parquet", "application/octet-stream")
        },
    }
}


def create_app(
    config: CentralConfig,
    *,
    ledger: Ledger | None = None,
    store: LandingStore | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """Open (or take) the store and ledger, reconcile them, and build the app."""
    limits = Limits(config.max_batch_rows, config.max_decompressed_bytes)
    store = store if store is not None else LandingStore(config.landing_url).open()
    owns_ledger = ledger is None
    ledger = ledger if ledger is not None else open_ledger(config.ledger_dsn)
    reconcile(store, ledger, limits, clock)
    warm_up()
    ingest = Ingest(store, ledger, limits, clock)
    stats = prom.IngestMetrics()
    gate = asyncio.Semaphore(config.max_concurrent_uploads)
    max_bytes = config.max_batch_bytes

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if owns_ledger:
            ledger.close()

    app = FastAPI(
        title="fleetpulse central ingest",
        version="1",
        description="Gateways upload Parquet batches; each is stored exactly once.",
        lifespan=lifespan,
    )
    app.state.ingest = ingest
    app.state.metrics = stats

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_req: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> Response:
        where = "; ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors())
        return error_response(400, "bad_request", f"request is malformed at {where}")

    @app.put(
        "/v1/batches/{batch_id}",
        status_code=201,
        responses={
            201: {"model": BatchReceipt, "description": "stored"},
            200: {"model": BatchReceipt, "description": "identical replay"},
            **_ERRORS,
        },
        openapi_extra=_BODY_DOC,
        summary="Upload one Parquet batch (write-once, idempotent)",
    )
    async def put_batch(
        request: Request,
        batch_id: str,
        authorization: Annotated[str | None, Header()] = None,
        content_sha256: Annotated[str | None, Header(alias="Content-SHA256")] = None,
        content_length: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> Response:
        started = time.perf_counter()
        received = 0
        outcome: Outcome | None = None
        try:
            gateway_id = await run_in_threadpool(verify_token, ledger, bearer_token(authorization))
            sha = _check_request(gateway_id, batch_id, content_sha256, content_length, max_bytes)
            async with gate:
                body = await _read_bounded(request, max_bytes)
                received = len(body)
                actual = await run_in_threadpool(_sha256, body)
                if actual != sha:
                    raise BadRequest(
                        f"Content-SHA256 {sha} does not match the body's sha256 "
                        f"{actual}: the upload was altered or truncated; resend it",
                        "sha_mismatch",
                    )
                outcome = await run_in_threadpool(ingest.accept, gateway_id, batch_id, body, sha)
            response: Response = JSONResponse(_receipt(outcome), status_code=outcome.status)
        except UploadRefused as exc:
            response = error_response(exc.status, exc.error, exc.detail)
        except UnavailableError as exc:
            log.error("upload of %s: %s", batch_id, exc)
            response = error_response(503, "unavailable", f"{exc}; retry later")
        except ClientDisconnect:
            response = Response(status_code=499)
        stored = outcome.batch.size_bytes if outcome and outcome.status == 201 else 0
        rows = outcome.batch.rows if outcome and outcome.status == 201 else 0
        stats.observe(response.status_code, time.perf_counter() - started, received, stored, rows)
        return response

    def openapi() -> dict[str, Any]:
        # The handler checks id and digest itself (to answer 401 before 400 and to name the
        # fix); the document still states the formats so clients and fuzzers know them.
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            for param in doc["paths"]["/v1/batches/{batch_id}"]["put"]["parameters"]:
                if param["name"] == "batch_id":
                    param["schema"].update(pattern=BATCH_ID_RE.pattern, maxLength=128)
                elif param["name"] == "Content-SHA256":
                    param["schema"] = {"type": "string", "pattern": _SHA_RE.pattern}
                    param["required"] = True
                elif param["name"] == "authorization":
                    param["schema"] = {"type": "string", "pattern": "^Bearer .+$"}
                    param["required"] = True
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/v1/healthz", response_model=Health, responses={503: {"model": Health}})
    async def healthz() -> Response:
        parts = {}
        for name, probe in (("ledger", ledger.ping), ("store", store.ping)):
            try:
                await run_in_threadpool(probe)
                parts[name] = "ok"
            except CentralError as exc:
                parts[name] = str(exc)
        ok = all(v == "ok" for v in parts.values())
        body = Health(status="ok" if ok else "unavailable", **parts).model_dump()
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        return PlainTextResponse(stats.render(), media_type=prom.CONTENT_TYPE)

    return app


def _sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _check_request(
    gateway_id: str,
    batch_id: str,
    content_sha256: str | None,
    content_length: str | None,
    max_bytes: int,
) -> str:
    """Everything decidable from the request line and headers; returns the expected sha256."""
    if not BATCH_ID_RE.match(batch_id):
        raise BadRequest(
            f"batch id {batch_id[:80]!r} is not valid: 1-128 letters, digits, '-' or '_' "
            f"(expected {gateway_id}-<sequence>)",
            "bad_batch_id",
        )
    if not batch_id.startswith(f"{gateway_id}-"):
        raise Forbidden(
            f"batch id {batch_id!r} is not of gateway {gateway_id!r}, the token's gateway: "
            f"ids are {gateway_id}-<sequence>",
            "other_gateway",
        )
    if batch_sequence(gateway_id, batch_id) is None:
        raise BadRequest(
            f"batch id {batch_id!r} is not {gateway_id}-<decimal sequence>", "bad_batch_id"
        )
    if content_sha256 is None:
        raise BadRequest(
            "Content-SHA256 header missing: send the hex sha256 of the body", "no_sha256"
        )
    if not _SHA_RE.match(content_sha256.strip()):
        raise BadRequest(
            f"Content-SHA256 {content_sha256[:80]!r} is not 64 hex digits", "bad_sha256"
        )
    if content_length is not None:
        if not content_length.strip().isdigit():
            raise BadRequest(f"Content-Length {content_length[:40]!r} is not a number")
        if int(content_length) > max_bytes:
            raise TooLarge(
                f"body of {int(content_length)} bytes is over max_batch_bytes = {max_bytes}: "
                "export smaller batches",
            )
    return content_sha256.strip().lower()


async def _read_bounded(request: Request, max_bytes: int) -> bytes:
    """The body, refusing (413) as soon as it grows past ``max_bytes``."""
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > max_bytes:
            raise TooLarge(
                f"body is over max_batch_bytes = {max_bytes} bytes: export smaller batches"
            )
    return bytes(buf)

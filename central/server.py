"""Run the ingest API on uvicorn with the config's listen address and optional TLS."""

from __future__ import annotations

import logging

import uvicorn

from .api import create_app
from .config import CentralConfig

log = logging.getLogger(__name__)


def uvicorn_config(config: CentralConfig) -> uvicorn.Config:
    """The uvicorn settings for ``config``; the app is built (store, ledger opened) here."""
    app = create_app(config)
    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        ssl_certfile=str(config.tls_cert) if config.tls_cert else None,
        ssl_keyfile=str(config.tls_key) if config.tls_key else None,
        # our own logging setup (fleetpulse CLI) rather than uvicorn's handlers
        log_config=None,
        access_log=False,
        server_header=False,
        lifespan="on",
    )


def serve(config: CentralConfig) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn finishes in-flight requests first)."""
    server = uvicorn.Server(uvicorn_config(config))
    scheme = "https" if config.tls_cert else "http"
    log.info("central ingest listening on %s://%s", scheme, config.listen)
    server.run()

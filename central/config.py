"""Central configuration: pydantic models with defaults, from TOML plus FLEETPULSE_* overrides.

Precedence (highest first): ``FLEETPULSE_<KEY>`` / ``FLEETPULSE_<SECTION>__<KEY>`` environment
variables, the TOML file, the defaults below. Everything is validated before any I/O; an
unknown key in the file is an error naming the key, so a typo never passes silently.

To add a section (e.g. ``[sources]``): define a ``BaseModel`` with ``extra="forbid"`` and add
it as a field of ``CentralConfig`` with a default instance; TOML and environment overrides
(``FLEETPULSE_SOURCES__DIR=...``) then work with no other change.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.settings import SettingsError, load_settings

from .errors import ConfigError

DEFAULT_DATA_DIR = Path("/var/lib/fleetpulse-central")
MiB = 1024 * 1024
_MEMORY_RE = re.compile(r"\d+(\.\d+)?\s*([KMGT]i?B)", re.IGNORECASE)


class SourcesConfig(BaseModel):
    """``[sources]``: what consolidation merges with the landed batches (paths; none needed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    registry: Path | None = Field(None, description="device registry, CSV or Parquet")
    firmware: Path | None = Field(None, description="firmware history: an Avro file or folder")
    alerts: Path | None = Field(None, description="alerts: an Avro file or a folder of them")


class SparkConfig(BaseModel):
    """``[spark]``: where ``consolidate --engine spark`` runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    master: str = Field("local[*]", description="spark://HOST:7077, yarn, k8s://..., local[N]")
    conf: dict[str, str] = Field(
        default_factory=dict, description="extra Spark settings, e.g. spark.executor.memory"
    )


class ConsolidateConfig(BaseModel):
    """``[consolidate]``: KPI defaults and the engine of ``fleetpulse central consolidate``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: Literal["duckdb", "spark"] = Field("duckdb", description="default --engine")
    gap_k: float = Field(2.5, ge=1, description="gap tolerance k where the registry has none")
    uptime_target: float = Field(
        0.99, ge=0, le=1, description="device_uptime counted as meeting the target"
    )
    # 1500MB keeps a 10M-reading run under 2 GiB of RSS (1.8 GiB measured, and no slower
    # than unlimited: BENCHMARKS.md); DuckDB spills past it. "" = DuckDB's 80 % of RAM.
    duckdb_memory_limit: str = Field(
        "1500MB",
        description="DuckDB memory_limit, e.g. '1500MB', '8GB'; '' for DuckDB's 80% of RAM",
    )

    @field_validator("duckdb_memory_limit")
    @classmethod
    def _memory_size(cls, value: str) -> str:
        if value and not _MEMORY_RE.fullmatch(value.strip()):
            raise ValueError(
                f"{value!r} is not a memory size: write e.g. '1500MB' or '8GB' (units KB, MB,"
                " GB, TB, KiB, MiB, GiB, TiB), or '' for DuckDB's default of 80% of RAM"
            )
        return value.strip()


class CentralConfig(BaseModel):
    """The whole central config file (``central.toml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path = Field(
        DEFAULT_DATA_DIR, description="state directory: default home of landing store and ledger"
    )
    listen: str = Field("127.0.0.1:8080", description="HOST:PORT the ingest API binds ([::1]:PORT)")
    max_batch_bytes: int = Field(64 * MiB, gt=0, description="largest accepted upload body")
    max_batch_rows: int = Field(
        5_000_000, gt=0, description="largest row count a batch footer may declare"
    )
    max_decompressed_bytes: int = Field(
        1024 * MiB, gt=0, description="largest uncompressed size a batch footer may declare"
    )
    max_concurrent_uploads: int = Field(
        8, gt=0, description="uploads held at once; memory use is about this x max_batch_bytes"
    )
    store_url: str | None = Field(
        None, description="landing store: path or pyarrow.fs URI; default data_dir/landing"
    )
    ledger_url: str | None = Field(
        None,
        description="sqlite:////ABS/PATH or postgresql://...; default data_dir/ledger.sqlite3",
    )
    tls_cert: Path | None = Field(None, description="PEM certificate; serve HTTPS with tls_key")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    sources: SourcesConfig = Field(default_factory=SourcesConfig)
    spark: SparkConfig = Field(default_factory=SparkConfig)
    consolidate: ConsolidateConfig = Field(default_factory=ConsolidateConfig)

    @field_validator("listen")
    @classmethod
    def _listen_is_host_port(cls, value: str) -> str:
        split_listen(value)
        return value

    @field_validator("ledger_url")
    @classmethod
    def _ledger_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(
            ("sqlite:///", "postgresql://", "postgres://")
        ):
            raise ValueError(
                f"{value!r} is not a ledger URL: use sqlite:////ABSOLUTE/PATH or "
                "postgresql://USER@HOST:PORT/DB (or leave it out for SQLite in data_dir)"
            )
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> CentralConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both for HTTPS or neither")
        return self

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]

    @property
    def landing_url(self) -> str:
        """Where batches land: ``store_url`` or ``<data_dir>/landing``."""
        return self.store_url or str(self.data_dir / "landing")

    @property
    def ledger_dsn(self) -> str:
        """The ledger URL, defaulting to SQLite in ``data_dir``."""
        return self.ledger_url or f"sqlite:///{(self.data_dir / 'ledger.sqlite3').absolute()}"


def split_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` → ``("127.0.0.1", 8080)``; ``"[::1]:8080"`` → ``("::1", 8080)``."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:8080 or [::1]:8080)")
    return host.strip("[]"), int(port_text)


def load_config(
    path: Path | None = None, environ: Mapping[str, str] | None = None
) -> CentralConfig:
    """Read ``path`` (TOML; optional), apply environment overrides, validate."""
    try:
        return load_settings(
            CentralConfig,
            path,
            os.environ if environ is None else environ,
            service="central",
            docs="docs/central.md",
        )
    except SettingsError as exc:
        raise ConfigError(str(exc)) from exc

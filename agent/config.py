"""Agent configuration: pydantic models with defaults, from TOML plus FLEETPULSE_* overrides.

Precedence (highest first): ``FLEETPULSE_<KEY>`` / ``FLEETPULSE_<SECTION>__<KEY>`` environment
variables (``FLEETPULSE_GATEWAY_ID``, ``FLEETPULSE_MQTT__PORT=1884``), the TOML file, the
defaults below. Everything is validated before any I/O; an unknown key in the file or in a
known section is an error naming the key, so a typo never passes silently.

To add a section (e.g. ``[central]``): define a ``BaseModel`` with ``extra="forbid"`` and add
it as a field of ``AgentConfig`` with a default instance; TOML and environment overrides
(``FLEETPULSE_CENTRAL__URL=...``) then work with no other change.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from schemas import DEFAULT_GAP_K
from schemas.settings import SettingsError, load_settings

from .errors import ConfigError

DEFAULT_DATA_DIR = Path("/var/lib/fleetpulse")
DB_NAME = "agent.sqlite3"
# Gateway ids become batch ids and file names (DESIGN §5): letters, digits, '-', '_' only.
GATEWAY_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def _split_list(value: Any) -> Any:
    # Environment values are text: accept a JSON list or "a,b,c".
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                raise ValueError(f"{value!r} is not a JSON list of strings") from None
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


def _check_filter(topic: str) -> str:
    """An MQTT topic filter: '#' only as the last level, '+' only as a whole level."""
    if not topic or "\x00" in topic:
        raise ValueError(f"topic filter {topic!r} is empty or holds a NUL character")
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"topic filter {topic!r}: '#' must be a whole, last level")
        if "+" in level and level != "+":
            raise ValueError(f"topic filter {topic!r}: '+' must be a whole level")
    return topic


class MqttConfig(BaseModel):
    """``[mqtt]``: where the broker is and how the agent's persistent session behaves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", min_length=1, description="broker host name or address")
    port: int = Field(1883, ge=1, le=65535, description="broker TCP port (8883 for TLS)")
    topics: Annotated[list[str], BeforeValidator(_split_list)] = Field(
        default_factory=lambda: ["fleet/#"],
        min_length=1,
        description="topic filters subscribed with QoS 1",
    )
    client_id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="stable client id of the persistent session; default fleetpulse-<gateway_id>",
    )
    protocol: Literal["mqttv5", "mqttv311"] = Field(
        "mqttv5", description="MQTT 5 (session expiry, Receive Maximum) or 3.1.1"
    )
    keepalive_s: int = Field(30, ge=5, le=65535, description="MQTT keepalive")
    session_expiry_s: int = Field(
        7 * 86400,
        ge=60,
        le=0xFFFFFFFE,
        description="MQTT 5: how long the broker keeps queueing for us while we are away",
    )
    receive_maximum: int = Field(
        1000,
        ge=1,
        le=65535,
        description="MQTT 5: unacknowledged QoS 1 messages the broker may have in flight to us",
    )
    username: str | None = Field(None, min_length=1)
    password_file: Path | None = Field(None, description="file holding the password (one line)")
    tls_ca: Path | None = Field(None, description="CA bundle; setting it turns TLS on")
    tls_cert: Path | None = Field(None, description="client certificate (with tls_key)")
    tls_key: Path | None = Field(None, description="client private key (with tls_cert)")
    reconnect_min_s: float = Field(0.5, gt=0, le=3600, description="first reconnect delay")
    reconnect_max_s: float = Field(30.0, gt=0, le=3600, description="reconnect delay ceiling")

    @field_validator("topics")
    @classmethod
    def _filters(cls, value: list[str]) -> list[str]:
        return [_check_filter(t) for t in value]

    @model_validator(mode="after")
    def _pairs(self) -> MqttConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        if self.tls_cert is not None and self.tls_ca is None:
            raise ValueError("tls_cert needs tls_ca: set the CA that signed the broker")
        if self.password_file is not None and self.username is None:
            raise ValueError("password_file needs username: set [mqtt] username too")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(
                f"reconnect_min_s {self.reconnect_min_s} is above reconnect_max_s "
                f"{self.reconnect_max_s}: lower the first or raise the second"
            )
        return self


class IngestConfig(BaseModel):
    """``[ingest]``: how messages are grouped into one SQLite COMMIT before their PUBACKs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_max: int = Field(500, ge=1, le=65535, description="messages per COMMIT at most")
    batch_interval_ms: int = Field(
        50, ge=1, le=10_000, description="oldest uncommitted message waits at most this long"
    )


class CentralConfig(BaseModel):
    """``[central]``: where batches are uploaded and with which token."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = Field(
        None, description="central ingest API base URL; unset: batches are kept, not uploaded"
    )
    token_file: Path | None = Field(
        None, description="file holding this gateway's upload token; empty: not registered yet"
    )
    timeout_s: float = Field(30.0, gt=0, le=3600, description="one upload request at most")
    batch_max_rows: int = Field(
        50_000, ge=1, le=10_000_000, description="rows per batch at most (central's limit)"
    )
    retry_max_s: float = Field(
        300.0, gt=0, le=86_400, description="ceiling of the upload backoff (full jitter)"
    )
    auth_retry_s: float = Field(
        300.0,
        ge=1,
        le=86_400,
        description="while central refuses the token (401/403): try again this often, "
        "and at once when token_file changes",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("use an http:// or https:// URL such as https://central:8443")
        return value.rstrip("/")


class ScheduleConfig(BaseModel):
    """``[schedule]``: how often the local DAG, the export and the upload run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dag_interval_s: float = Field(300.0, ge=1, le=86_400, description="local KPI DAG period")
    export_interval_s: float = Field(60.0, ge=1, le=86_400, description="Parquet export period")
    upload_interval_s: float = Field(30.0, ge=1, le=86_400, description="upload period")
    disk_check_s: float = Field(5.0, ge=0.1, le=3600, description="disk budget check period")


class StorageConfig(BaseModel):
    """``[storage]``: the disk budget of buffer and outbox, retention, what to do when full."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_disk_bytes: int = Field(
        2 * 1024**3, ge=1024 * 1024, description="buffer + WAL + outbox files at most"
    )
    retention_hours: float = Field(
        48.0, ge=0, le=24 * 365, description="uploaded readings stay this long (local KPIs)"
    )
    on_full: Literal["backpressure", "drop_oldest"] = Field(
        "backpressure",
        description="backpressure: stop acking (the broker keeps messages); "
        "drop_oldest: delete the oldest data and count it",
    )


class RegistryConfig(BaseModel):
    """``[registry]``: the device registry file cached in the buffer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path | None = Field(None, description="registry CSV or Parquet (schemas.Device columns)")
    gap_k: float = Field(
        DEFAULT_GAP_K, ge=1, le=100, description="gap tolerance k x heartbeat (registry overrides)"
    )


def _listen(value: str) -> str:
    if value == "":
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError('use HOST:PORT such as 127.0.0.1:9108, or "" to turn metrics off')
    return value


class AgentConfig(BaseModel):
    """The whole agent config file (``agent.toml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gateway_id: str = Field(
        ..., description="this gateway's id: letters, digits, '-', '_' (it names upload batches)"
    )
    data_dir: Path = Field(DEFAULT_DATA_DIR, description="state directory (SQLite buffer)")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    metrics_listen: Annotated[str, AfterValidator(_listen)] = Field(
        "127.0.0.1:9108", description="Prometheus /metrics HOST:PORT; empty string: off"
    )
    central: CentralConfig = Field(default_factory=CentralConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)

    @field_validator("gateway_id")
    @classmethod
    def _gateway_id(cls, value: str) -> str:
        if not GATEWAY_ID_RE.match(value):
            raise ValueError(
                "use 1-64 letters, digits, '-' or '_', starting with a letter or digit "
                "(it becomes part of upload batch ids and file names)"
            )
        return value

    @model_validator(mode="after")
    def _batch_fits_window(self) -> AgentConfig:
        # The broker stops sending when our unacknowledged window is full; a batch larger
        # than the window would only ever be flushed by the timer.
        if self.mqtt.protocol == "mqttv5" and self.ingest.batch_max > self.mqtt.receive_maximum:
            raise ValueError(
                f"ingest.batch_max {self.ingest.batch_max} is above mqtt.receive_maximum "
                f"{self.mqtt.receive_maximum}: lower batch_max or raise receive_maximum"
            )
        return self

    @property
    def client_id(self) -> str:
        """The MQTT client id: ``[mqtt] client_id`` or ``fleetpulse-<gateway_id>``."""
        return self.mqtt.client_id or f"fleetpulse-{self.gateway_id}"

    @property
    def db_path(self) -> Path:
        """The SQLite buffer inside ``data_dir``."""
        return self.data_dir / DB_NAME

    @property
    def outbox(self) -> Path:
        """Exported Parquet batches waiting for upload."""
        return self.data_dir / "outbox"

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """``metrics_listen`` as (host, port), or None when metrics are off."""
        if not self.metrics_listen:
            return None
        host, _, port = self.metrics_listen.rpartition(":")
        return host.strip("[]"), int(port)


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read ``path`` (TOML; optional), apply environment overrides, validate. No other I/O."""
    try:
        return load_settings(
            AgentConfig,
            path,
            os.environ if environ is None else environ,
            service="agent",
            docs="docs/agent.md",
        )
    except SettingsError as exc:
        raise ConfigError(str(exc)) from exc


def check_files(cfg: AgentConfig) -> None:
    """Check that the files the config names exist; run before connecting, not at load.

    Kept apart from ``load_config`` so an example config can be validated on a machine that
    lacks the gateway's certificates.
    """
    for key in ("password_file", "tls_ca", "tls_cert", "tls_key"):
        value = getattr(cfg.mqtt, key)
        if value is not None and not Path(value).is_file():
            raise ConfigError(
                f"config key 'mqtt.{key}' = {str(value)!r}: no such file; "
                "fix the path or remove the key"
            )


def read_password(cfg: AgentConfig) -> str | None:
    """The broker password from ``[mqtt] password_file`` (first line), or None."""
    if cfg.mqtt.password_file is None:
        return None
    try:
        text = Path(cfg.mqtt.password_file).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"config key 'mqtt.password_file' = {str(cfg.mqtt.password_file)!r}: "
            f"cannot read it ({exc.strerror})"
        ) from exc
    return text.splitlines()[0] if text else ""

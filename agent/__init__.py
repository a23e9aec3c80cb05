"""The gateway agent: MQTT ingest, SQLite buffer, local uptime DAG, Parquet export, upload."""

from .buffer import Buffer, Quarantined, open_readonly
from .config import AgentConfig, IngestConfig, MqttConfig, load_config
from .errors import AgentError, BrokerError, ConfigError, StoreError, StoreMissing
from .notify import Notifier
from .status import read_status

__all__ = [
    "AgentConfig",
    "AgentError",
    "BrokerError",
    "Buffer",
    "ConfigError",
    "IngestConfig",
    "MqttConfig",
    "Notifier",
    "Quarantined",
    "StoreError",
    "StoreMissing",
    "load_config",
    "open_readonly",
    "read_status",
]

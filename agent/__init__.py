"""The gateway agent: MQTT ingest, SQLite buffer, local uptime DAG, Parquet export, upload."""

from .buffer import Buffer, Quarantined, open_readonly
from .config import (
    AgentConfig,
    CentralConfig,
    IngestConfig,
    MqttConfig,
    RegistryConfig,
    ScheduleConfig,
    StorageConfig,
    load_config,
)
from .dag import run_dag
from .errors import (
    AgentError,
    BatchRejected,
    BrokerError,
    ConfigError,
    ExportError,
    KpiInputError,
    RegistryError,
    StoreError,
    StoreMissing,
    UploadError,
)
from .export import export_pending
from .faults import FAULT_ENV
from .notify import Notifier
from .scheduler import Stages
from .status import read_status
from .upload import Uploader

__all__ = [
    "FAULT_ENV",
    "AgentConfig",
    "AgentError",
    "BatchRejected",
    "BrokerError",
    "Buffer",
    "CentralConfig",
    "ConfigError",
    "ExportError",
    "IngestConfig",
    "KpiInputError",
    "MqttConfig",
    "Notifier",
    "Quarantined",
    "RegistryConfig",
    "RegistryError",
    "ScheduleConfig",
    "Stages",
    "StorageConfig",
    "StoreError",
    "StoreMissing",
    "UploadError",
    "Uploader",
    "export_pending",
    "load_config",
    "open_readonly",
    "read_status",
    "run_dag",
]

"""The gateway agent: MQTT ingest, SQLite buffer, local uptime DAG, Parquet export, upload."""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
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

# ``python -m agent.worker`` (the export and DAG worker) imports this package first:
# eager, it paid ~0.2 s for httpx, pydantic, the scheduler and the rest it never uses.
# Each name is imported on first use instead (PEP 562).
_WHERE = {
    "Buffer": "buffer",
    "Quarantined": "buffer",
    "open_readonly": "buffer",
    "AgentConfig": "config",
    "CentralConfig": "config",
    "IngestConfig": "config",
    "MqttConfig": "config",
    "RegistryConfig": "config",
    "ScheduleConfig": "config",
    "StorageConfig": "config",
    "load_config": "config",
    "run_dag": "dag",
    "AgentError": "errors",
    "BatchRejected": "errors",
    "BrokerError": "errors",
    "ConfigError": "errors",
    "ExportError": "errors",
    "KpiInputError": "errors",
    "RegistryError": "errors",
    "StoreError": "errors",
    "StoreMissing": "errors",
    "UploadError": "errors",
    "export_pending": "export",
    "FAULT_ENV": "faults",
    "Notifier": "notify",
    "Stages": "scheduler",
    "read_status": "status",
    "Uploader": "upload",
}

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


def __getattr__(name: str) -> _typing.Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

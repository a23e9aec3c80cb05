"""Exceptions of the agent; one root so callers catch ``AgentError`` and nothing else.

Tree::

    AgentError                  any failure the agent reports
    ├── ConfigError             a config file or FLEETPULSE_* variable is wrong (names the key)
    ├── StoreError              the SQLite buffer cannot be opened, read or written
    │   └── StoreMissing        no buffer database yet (the agent never ran with this data_dir)
    ├── BrokerError             the MQTT broker refused us (bad credentials, not authorised,
    │                           subscription refused); network loss is not an error, it is
    │                           retried with backoff
    ├── KpiInputError           the KPI computation got inputs it cannot use (names the column
    │                           or device)
    ├── RegistryError           the [registry] file is missing or has a bad row (names the row
    │                           and column; the cached registry stays in use)
    ├── ExportError             a batch file cannot be written to the outbox
    └── UploadError             central cannot take the batches now (unreachable, token
        │                       missing or refused); retried with backoff
        └── BatchRejected       central refused a batch for good (409, 400, 413, 422...);
                                flagged for the operator, not retried

Errors of the layers below (sqlite3, paho-mqtt, OSError) are translated where they are
raised: ``raise StoreError(...) from exc``. Only the CLI turns these into one line on stderr.
"""

from __future__ import annotations


class AgentError(Exception):
    """The agent failed."""


class ConfigError(AgentError):
    """The agent configuration is invalid."""


class StoreError(AgentError):
    """The SQLite buffer cannot be used."""


class StoreMissing(StoreError):
    """The buffer database does not exist yet."""


class BrokerError(AgentError):
    """The MQTT broker refused the agent."""


class KpiInputError(AgentError):
    """The KPI computation cannot use its inputs."""


class RegistryError(AgentError):
    """The device registry file cannot be used."""


class ExportError(AgentError):
    """A batch file cannot be written."""


class DagError(AgentError):
    """The local KPI DAG failed (its worker process says why)."""


class UploadError(AgentError):
    """Batches cannot be uploaded now."""


class BatchRejected(UploadError):
    """Central refused a batch for good."""

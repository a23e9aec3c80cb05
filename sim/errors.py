"""Exceptions of the simulator; one root so callers catch ``SimError`` and nothing else.

Tree::

    SimError                  any failure the simulator reports
    ├── ScenarioError         a scenario file or override is wrong (names the key and the fix)
    ├── BrokerError           the MQTT broker cannot be reached or stopped acknowledging
    └── OutputError           an output file (registry, Avro, truth) cannot be written

Errors of the layers below (paho-mqtt, OSError, pyarrow, fastavro) are translated where they
are raised: ``raise BrokerError(...) from exc``.
"""

from __future__ import annotations


class SimError(Exception):
    """The simulator failed."""


class ScenarioError(SimError):
    """The scenario is invalid."""


class BrokerError(SimError):
    """The MQTT broker cannot be used."""


class OutputError(SimError):
    """An output file cannot be written."""

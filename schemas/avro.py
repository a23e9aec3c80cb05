"""Paths of the Avro schemas (.avsc) of firmware history and alerts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_HERE = Path(__file__).parent
FIRMWARE_AVSC = _HERE / "firmware.avsc"
ALERTS_AVSC = _HERE / "alerts.avsc"


def load_avsc(path: Path) -> dict[str, Any]:
    """The schema as a JSON object (parse it with fastavro.parse_schema where needed)."""
    schema: dict[str, Any] = json.loads(path.read_text())
    return schema

"""The device registry model: where a device is, how often it speaks, when it counts."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .topics import IDENT_RE

DEFAULT_HEARTBEAT_S = 30.0
DEFAULT_GAP_K = 2.5


class Device(BaseModel):
    """One registry row (CSV or Parquet columns of the same names)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    device_id: Annotated[str, Field(pattern=IDENT_RE.pattern)]
    site: Annotated[str, Field(pattern=IDENT_RE.pattern)]
    lat: Annotated[float, Field(ge=-90, le=90)] | None = None
    lon: Annotated[float, Field(ge=-180, le=180)] | None = None
    heartbeat_s: Annotated[float, Field(gt=0)] = DEFAULT_HEARTBEAT_S
    gap_k: Annotated[float, Field(ge=1)] | None = None
    commissioned_at: datetime | None = None
    decommissioned_at: datetime | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Device:
        c, d = self.commissioned_at, self.decommissioned_at
        if c is not None and d is not None and d < c:
            raise ValueError(f"decommissioned_at {d} is before commissioned_at {c}")
        return self

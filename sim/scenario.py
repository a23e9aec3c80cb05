"""The scenario file (TOML) as pydantic models: sites, heartbeats, failure models, rollouts.

A scenario is data, not config: defaults live here, the file overrides them, and the CLI's
``--devices/--days/--seed`` override the file. Unknown keys are errors naming the key, so a
typo (``mtbf_hours``) never silently falls back to a default. See docs/simulator.md.
"""

from __future__ import annotations

import math
import re
import tomllib
from datetime import UTC, datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.topics import IDENT_RE

from .errors import ScenarioError

DEFAULT_SCENARIO = "firmware-regression"
_OFFSET_RE = re.compile(r"^[+-](?:[01]\d|2[0-3]):[0-5]\d$")

Ident = Annotated[str, Field(pattern=IDENT_RE.pattern)]
Share = Annotated[float, Field(ge=0, le=1)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Heartbeat(_Model):
    """One heartbeat interval and the share of devices that use it."""

    seconds: Annotated[int, Field(gt=0, le=3600)]
    share: Annotated[float, Field(gt=0)]


class Site(_Model):
    """A place with devices; ``gateway`` is the gateway whose agent serves it."""

    name: Ident
    gateway: Ident
    lat: Annotated[float, Field(ge=-90, le=90)]
    lon: Annotated[float, Field(ge=-180, le=180)]
    devices: Annotated[int, Field(ge=0)]
    radius_km: Annotated[float, Field(ge=0, le=100)] = 2.0
    utc_offset: str = "+00:00"

    @field_validator("utc_offset")
    @classmethod
    def _offset(cls, value: str) -> str:
        if not _OFFSET_RE.match(value):
            raise ValueError(f"{value!r} is not a UTC offset like +01:00 or -05:30")
        return value

    @property
    def tzinfo(self) -> timezone:
        sign = -1 if self.utc_offset[0] == "-" else 1
        hours, minutes = int(self.utc_offset[1:3]), int(self.utc_offset[4:6])
        return timezone(sign * timedelta(hours=hours, minutes=minutes))


class CrashLoop(_Model):
    """A failure may start a loop of quick crashes: the firmware boots, runs briefly, dies."""

    probability: Share
    crashes: Annotated[float, Field(ge=1)] = 8.0
    up_s: Annotated[float, Field(gt=0)] = 120.0
    down_s: Annotated[float, Field(gt=0)] = 180.0


class Firmware(_Model):
    """A firmware version and its failure model (exponential up and down times)."""

    version: Annotated[str, Field(min_length=1, max_length=64)]
    share: Share = 0.0
    mtbf_h: Annotated[float, Field(gt=0)] = 12.0
    mttr_s: Annotated[float, Field(gt=0)] = 420.0
    crash_event: Share = 0.6
    crash_loop: CrashLoop | None = None

    def expected_uptime(self) -> float:
        """Long-run share of time up implied by the model (renewal-reward argument)."""
        up, down = self.mtbf_h * 3600.0, self.mttr_s
        if self.crash_loop is not None:
            loop = self.crash_loop
            # a looping failure costs loop.down_s instead of mttr_s, then `crashes - 1` more cycles
            down = (1 - loop.probability) * self.mttr_s + loop.probability * loop.down_s
            extra = loop.probability * (loop.crashes - 1)
            up += extra * loop.up_s
            down += extra * loop.down_s
        return up / (up + down)


class Rollout(_Model):
    """A firmware update pushed to a share of the fleet during a window."""

    firmware: str
    start_h: Annotated[float, Field(ge=0)]
    duration_h: Annotated[float, Field(ge=0)] = 6.0
    share: Share = 0.35
    install_s: Annotated[int, Field(gt=0, le=3600)] = 90
    sites: list[Ident] = Field(default_factory=list)


class Links(_Model):
    """Lossy radio links: telemetry is dropped while the device is up."""

    lossy_devices: Annotated[int, Field(ge=0)] = 0
    loss_rate: Annotated[float, Field(ge=0, lt=1)] = 0.05


class Roaming(_Model):
    """Devices that publish under another site's topic for a while."""

    devices: Annotated[int, Field(ge=0)] = 0
    duration_h: Annotated[float, Field(gt=0)] = 8.0


class Clock(_Model):
    """Devices whose clock is off by a constant amount."""

    skewed_devices: Annotated[int, Field(ge=0)] = 0
    skew_s: float = -90.0


class Messages(_Model):
    """Message-level imperfections and formats."""

    duplicate_rate: Share = 0.0
    malformed_rate: Share = 0.0
    rfc3339_share: Share = 0.0
    lwt_on_crash: Share = 1.0


class Lifecycle(_Model):
    """Devices commissioned or decommissioned while the scenario runs."""

    commissioned_late: Share = 0.0
    decommissioned_early: Share = 0.0


class Alerts(_Model):
    """Alert generation: correlated alerts always, unrelated noise at this rate."""

    noise_per_device_day: Annotated[float, Field(ge=0)] = 0.3


class Scenario(_Model):
    """A whole scenario file."""

    name: Ident
    description: str = ""
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    days: Annotated[int, Field(gt=0, le=366)] = 4
    seed: int = 1
    devices: Annotated[int, Field(gt=0)] | None = None
    heartbeats: list[Heartbeat] = Field(default_factory=lambda: [Heartbeat(seconds=30, share=1)])
    sites: Annotated[list[Site], Field(min_length=1)]
    firmware: Annotated[list[Firmware], Field(min_length=1)]
    rollouts: list[Rollout] = Field(default_factory=list)
    links: Links = Links()
    roaming: Roaming = Roaming()
    clock: Clock = Clock()
    messages: Messages = Messages()
    lifecycle: Lifecycle = Lifecycle()
    alerts: Alerts = Alerts()

    @field_validator("start")
    @classmethod
    def _utc_midnight(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError(f"{value} has no UTC offset; write e.g. 2026-01-01T00:00:00Z")
        value = value.astimezone(UTC)
        if (value.hour, value.minute, value.second, value.microsecond) != (0, 0, 0, 0):
            raise ValueError(f"{value.isoformat()} is not a UTC midnight; days are UTC days")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        names = [s.name for s in self.sites]
        if len(set(names)) != len(names):
            raise ValueError(f"sites: duplicate site name in {names}")
        versions = [f.version for f in self.firmware]
        if len(set(versions)) != len(versions):
            raise ValueError(f"firmware: duplicate version in {versions}")
        shares = sum(f.share for f in self.firmware)
        if not math.isclose(shares, 1.0, abs_tol=1e-6):
            raise ValueError(
                f"firmware: the shares of the initial versions add up to {shares:g}; "
                "they must add up to 1"
            )
        for i, r in enumerate(self.rollouts):
            if r.firmware not in versions:
                raise ValueError(
                    f"rollouts[{i}].firmware: {r.firmware!r} is not a firmware version; "
                    f"known: {versions}"
                )
            unknown = sorted(set(r.sites) - set(names))
            if unknown:
                raise ValueError(f"rollouts[{i}].sites: unknown site(s) {unknown}; known: {names}")
        if sum(s.devices for s in self.sites) == 0 and self.devices is None:
            raise ValueError("sites: every site has devices = 0; give some devices")
        return self

    @property
    def total_devices(self) -> int:
        return self.devices if self.devices is not None else sum(s.devices for s in self.sites)

    @property
    def start_s(self) -> int:
        return int(self.start.timestamp())

    @property
    def end_s(self) -> int:
        return self.start_s + self.days * 86400

    @property
    def faulty_firmware(self) -> str | None:
        """The version with crash loops and the lowest expected uptime, if any has loops."""
        looping = [f for f in self.firmware if f.crash_loop is not None]
        if not looping:
            return None
        return min(looping, key=lambda f: f.expected_uptime()).version

    def expected_messages_per_device_day(self) -> float:
        """Telemetry per device-day implied by the heartbeat mix (statuses/events add ~1 %)."""
        total = sum(h.share for h in self.heartbeats)
        return sum(h.share / total * 86400 / h.seconds for h in self.heartbeats)

    def gateways(self) -> dict[str, list[str]]:
        """Gateway → the sites it serves (each agent subscribes ``fleet/<site>/#``)."""
        out: dict[str, list[str]] = {}
        for s in self.sites:
            out.setdefault(s.gateway, []).append(s.name)
        return out

    def topic_filters(self) -> dict[str, list[str]]:
        """Gateway → its MQTT topic filters."""
        return {gw: [f"fleet/{s}/#" for s in sites] for gw, sites in self.gateways().items()}

    def with_overrides(
        self, devices: int | None = None, days: int | None = None, seed: int | None = None
    ) -> Scenario:
        """The scenario with the CLI's overrides applied and validated."""
        data = self.model_dump()
        for key, value in (("devices", devices), ("days", days), ("seed", seed)):
            if value is not None:
                data[key] = value
        return _validate(data, f"scenario {self.name!r} with overrides")


def builtin_names() -> list[str]:
    """Names of the scenarios shipped in sim/scenarios/."""
    files = resources.files("sim").joinpath("scenarios").iterdir()
    return sorted(f.name.removesuffix(".toml") for f in files if f.name.endswith(".toml"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A built-in scenario by name, or a TOML file by path; errors name the key."""
    text, where = _read(name_or_path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{where}: not valid TOML: {exc}") from None
    return _validate(data, where)


def _read(name_or_path: str | Path) -> tuple[str, str]:
    path = Path(name_or_path)
    if isinstance(name_or_path, str) and name_or_path in builtin_names():
        res = resources.files("sim").joinpath("scenarios", f"{name_or_path}.toml")
        return res.read_text(encoding="utf-8"), f"scenario {name_or_path!r}"
    if path.suffix == ".toml" or path.exists():
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except OSError as exc:
            raise ScenarioError(f"cannot read scenario file {path}: {exc.strerror}") from None
    raise ScenarioError(
        f"unknown scenario {str(name_or_path)!r}: give a built-in name "
        f"({', '.join(builtin_names())}) or the path of a .toml file"
    )


def _validate(data: dict[str, Any], where: str) -> Scenario:
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(f"{where}: {_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    """The first error as ``key.path: what is wrong`` with a hint for unknown keys."""
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        loc = ""
        for p in err["loc"]:
            loc += f"[{p}]" if isinstance(p, int) else (f".{p}" if loc else str(p))
        if err["type"] == "extra_forbidden":
            parts.append(f"{loc}: unknown key (typo?); see docs/simulator.md for the keys")
        elif err["type"] == "missing":
            parts.append(f"{loc}: required key is missing")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = err.get("input")
            shown = f" (got {got!r})" if isinstance(got, str | int | float) else ""
            parts.append(f"{loc or 'scenario'}: {msg}{shown}")
    more = len(exc.errors()) - len(parts)
    return "; ".join(parts) + (f"; and {more} more error(s)" if more > 0 else "")

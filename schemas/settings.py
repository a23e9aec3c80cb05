"""The config contract agent and central share: a TOML file, FLEETPULSE_* overrides, pydantic.

Precedence (highest first): ``FLEETPULSE_<KEY>`` / ``FLEETPULSE_<SECTION>__<KEY>`` environment
variables, the TOML file, the model's defaults. Each service's ``load_config`` calls
:func:`load_settings` with its model and turns :class:`SettingsError` into its own
``ConfigError``.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

log = logging.getLogger(__name__)

ENV_PREFIX = "FLEETPULSE_"
# Variables with the prefix that are not config keys (the config path itself).
ENV_NOT_KEYS = frozenset({"FLEETPULSE_CONFIG"})

_M = TypeVar("_M", bound=BaseModel)


class SettingsError(ValueError):
    """A config file or FLEETPULSE_* variable is unreadable or invalid; the text names the key."""


def load_settings(
    model: type[_M], path: Path | None, environ: Mapping[str, str], *, service: str, docs: str
) -> _M:
    """Read ``path`` (TOML; optional), apply ``environ``'s overrides, validate as ``model``.

    ``service`` ("agent", "central") and ``docs`` (where its keys are listed) go into the
    messages; nothing else is read or written.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise SettingsError(f"config file {path} does not exist: pass --config PATH") from exc
        except OSError as exc:
            raise SettingsError(f"cannot read config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {path} is not valid TOML: {exc}") from exc
    overrides = env_overrides(environ, model, service)
    if overrides:
        source += " + FLEETPULSE_* environment"
    try:
        return model.model_validate(_merge(data, overrides))
    except ValidationError as exc:
        raise SettingsError(_describe(exc, source, docs)) from exc


def env_overrides(
    environ: Mapping[str, str], model: type[BaseModel], service: str
) -> dict[str, Any]:
    """Nested dict of the ``FLEETPULSE_*`` variables that name keys of ``model``.

    Variables whose first part is no key of this model are skipped with a warning: agent and
    central share the prefix (``FLEETPULSE_GATEWAY_ID`` is the agent's), so they cannot be
    errors here; a wrong key *inside* a known section (``FLEETPULSE_MQTT__PROT``) is still an
    error at validation.
    """
    out: dict[str, Any] = {}
    fields = model.model_fields
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in ENV_NOT_KEYS:
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if path[0] not in fields:
            log.warning(
                "ignoring %s: %r is no %s config key (known: %s)",
                name,
                path[0],
                service,
                ", ".join(fields),
            )
            continue
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SettingsError(f"{name}: {part!r} is a plain key, not a section")
            node = child
        node[path[-1]] = value
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(exc: ValidationError, source: str, docs: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if not key:
            lines.append(msg)  # a model validator's message names its keys itself
        elif err["type"] == "extra_forbidden":
            lines.append(f"unknown config key {key!r}: check for typos (see {docs})")
        elif err["type"] == "missing":
            env = ENV_PREFIX + "__".join(str(p) for p in err["loc"]).upper()
            lines.append(f"config key {key!r} is required: set it in the file or as {env}")
        else:
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f" = {value!r}"
            lines.append(f"config key {key!r}{shown}: {msg}")
    return f"{source}: " + "; ".join(lines)

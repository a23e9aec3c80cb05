"""The example configs in deploy/ load through the real loaders and document every key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from tests.deploy_support import DEPLOY

AGENT_EXAMPLE = DEPLOY / "agent.example.toml"
CENTRAL_EXAMPLE = DEPLOY / "central.example.toml"

# `key = value`, or the same commented out (`# key = value`) for optional keys without a
# default a TOML file could spell.
_KEY_RE = re.compile(r"^(?P<off># )?(?P<key>[a-z_][a-z0-9_]*) = \S")
_SECTION_RE = re.compile(r"^\[(?P<name>[a-z_]+)\]$")


def example_keys(path: Path) -> list[tuple[str, bool, int]]:
    """(dotted key, commented out?, line number) for every key line of an example file."""
    keys, section = [], ""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if m := _SECTION_RE.match(line):
            section = m["name"] + "."
        elif m := _KEY_RE.match(line):
            keys.append((section + m["key"], bool(m["off"]), number))
    return keys


def model_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    out = set()
    for name, info in model.model_fields.items():
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out |= model_keys(sub, f"{prefix}{name}.")
        else:
            out.add(prefix + name)
    return out


def uncommented(path: Path, tmp_path: Path) -> Path:
    """The example with its commented-out keys switched on: they must be valid too."""
    text = "\n".join(
        line[2:] if (m := _KEY_RE.match(line)) and m["off"] else line
        for line in path.read_text().splitlines()
    )
    out = tmp_path / f"all-{path.name}"
    out.write_text(text + "\n")
    return out


def test_agent_example_loads() -> None:
    from agent.config import load_config

    cfg = load_config(AGENT_EXAMPLE, environ={})
    assert cfg.gateway_id == "gw-example-01"
    assert cfg.data_dir == Path("/var/lib/fleetpulse")
    # it talks to the gateway broker as deploy/mosquitto sets it up: TLS on 8883, password
    assert (cfg.mqtt.port, cfg.mqtt.username) == (8883, "fleetpulse-agent")
    assert cfg.mqtt.tls_ca == Path("/etc/mosquitto/certs/ca.crt")
    assert cfg.mqtt.password_file == Path("/etc/fleetpulse/mqtt-password")


def test_central_example_loads() -> None:
    from central.config import load_config

    cfg = load_config(CENTRAL_EXAMPLE, environ={})
    assert cfg.data_dir == Path("/var/lib/fleetpulse-central")
    assert (cfg.host, cfg.port) == ("127.0.0.1", 8080)


def test_commented_out_keys_are_valid_too(tmp_path: Path) -> None:
    from agent.config import load_config as load_agent
    from central.config import load_config as load_central

    agent = load_agent(uncommented(AGENT_EXAMPLE, tmp_path), environ={})
    assert agent.mqtt.tls_cert is not None and agent.mqtt.client_id is not None
    central = load_central(uncommented(CENTRAL_EXAMPLE, tmp_path), environ={})
    assert central.ledger_url is not None and central.tls_cert is not None


@pytest.mark.parametrize(
    ("example", "model_path"),
    [
        (AGENT_EXAMPLE, "agent.config:AgentConfig"),
        (CENTRAL_EXAMPLE, "central.config:CentralConfig"),
    ],
    ids=["agent", "central"],
)
def test_example_names_every_key_and_comments_it(example: Path, model_path: str) -> None:
    """A key added to the model must be added to the example (and documented) too."""
    import importlib

    module, _, name = model_path.partition(":")
    model = getattr(importlib.import_module(module), name)
    keys = example_keys(example)
    named = [k for k, _, _ in keys]
    assert sorted(set(named)) == sorted(named), "a key appears twice"
    missing = model_keys(model) - set(named)
    assert not missing, f"{example.name} lacks {sorted(missing)}: add them with a comment"
    unknown = set(named) - model_keys(model)
    assert not unknown, f"{example.name} names keys the loader does not know: {sorted(unknown)}"
    lines = example.read_text().splitlines()
    for key, _, number in keys:
        # walk up over the neighbouring key lines of the same group to its prose comment
        i = number - 2
        while i >= 0 and _KEY_RE.match(lines[i]):
            i -= 1
        assert i >= 0 and lines[i].startswith("# "), f"{example.name}:{number} {key} has no comment"


def test_a_typo_in_the_example_would_be_caught(tmp_path: Path) -> None:
    from agent.config import load_config
    from agent.errors import ConfigError

    bad = tmp_path / "agent.toml"
    bad.write_text(AGENT_EXAMPLE.read_text().replace("keepalive_s =", "keepalive =", 1))
    with pytest.raises(ConfigError, match=r"unknown config key 'mqtt\.keepalive'"):
        load_config(bad, environ={})

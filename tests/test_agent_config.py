"""Agent config: TOML keys, FLEETPULSE_* overrides, unknown keys and bad values refused."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.config import AgentConfig, check_files, load_config
from agent.errors import ConfigError

MINIMAL = 'gateway_id = "gw-01"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_issue_keys_load_with_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, """
gateway_id = "gw-01"
data_dir = "/var/lib/fleetpulse"
[mqtt]
host = "127.0.0.1"
port = 1883
topics = ["fleet/#"]
client_id = "fleetpulse-gw-01"
"""), environ={})  # fmt: skip
    assert cfg.gateway_id == "gw-01" and cfg.mqtt.port == 1883 and cfg.mqtt.topics == ["fleet/#"]
    assert cfg.db_path == Path("/var/lib/fleetpulse/agent.sqlite3")
    assert cfg.mqtt.protocol == "mqttv5" and cfg.ingest.batch_max <= cfg.mqtt.receive_maximum


def test_client_id_defaults_to_gateway(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, MINIMAL), environ={}).client_id == "fleetpulse-gw-01"


def test_environment_overrides_file(tmp_path: Path) -> None:
    env = {
        "FLEETPULSE_MQTT__PORT": "1884",
        "FLEETPULSE_GATEWAY_ID": "gw-env",
        "FLEETPULSE_MQTT__TOPICS": "fleet/a/#, fleet/b/+/status",
        "FLEETPULSE_INGEST__BATCH_INTERVAL_MS": "20",
    }
    cfg = load_config(write(tmp_path, MINIMAL + "[mqtt]\nport = 1000\n"), environ=env)
    assert cfg.mqtt.port == 1884
    assert cfg.gateway_id == "gw-env"
    assert cfg.mqtt.topics == ["fleet/a/#", "fleet/b/+/status"]
    assert cfg.ingest.batch_interval_ms == 20


def test_environment_alone_is_enough() -> None:
    cfg = load_config(None, environ={"FLEETPULSE_GATEWAY_ID": "gw-9"})
    assert cfg == AgentConfig(gateway_id="gw-9")


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'mqtt\.prot'.*typos"):
        load_config(write(tmp_path, MINIMAL + "[mqtt]\nprot = 1\n"), environ={})
    with pytest.raises(ConfigError, match=r"unknown config key 'gatway_id'"):
        load_config(write(tmp_path, MINIMAL + 'gatway_id = "x"\n'), environ={})


def test_unknown_key_in_known_section_from_environment(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'mqtt\.hots'"):
        load_config(write(tmp_path, MINIMAL), environ={"FLEETPULSE_MQTT__HOTS": "x"})


def test_other_sides_variables_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        load_config(write(tmp_path, MINIMAL), environ={"FLEETPULSE_LISTEN": "0.0.0.0:1"})
    assert "FLEETPULSE_LISTEN" in caplog.text


def test_bad_value_names_key_value_and_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, MINIMAL), environ={"FLEETPULSE_MQTT__PORT": "eighty"})
    assert "'mqtt.port' = 'eighty'" in str(err.value)
    assert "FLEETPULSE_* environment" in str(err.value)
    with pytest.raises(ConfigError, match=r"'mqtt\.port' = 70000.*less than or equal to 65535"):
        load_config(write(tmp_path, MINIMAL + "[mqtt]\nport = 70000\n"), environ={})
    with pytest.raises(ConfigError, match=r"'gateway_id' = 'gw 01'.*letters, digits"):
        load_config(write(tmp_path, 'gateway_id = "gw 01"\n'), environ={})


def test_missing_gateway_id_says_where_to_set_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'gateway_id' is required.*FLEETPULSE_GATEWAY_ID"):
        load_config(write(tmp_path, "[mqtt]\n"), environ={})


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[mqtt]\ntopics = ['fleet/#/x']\n", "'#' must be a whole, last level"),
        ("[mqtt]\ntopics = []\n", "mqtt.topics"),
        ("[mqtt]\ntls_cert = '/c'\n", "tls_cert and tls_key go together"),
        ("[mqtt]\npassword_file = '/p'\n", "password_file needs username"),
        ("[mqtt]\nreconnect_min_s = 10\nreconnect_max_s = 1\n", "reconnect_min_s 10.0 is above"),
        ("[ingest]\nbatch_max = 2000\n", "batch_max 2000 is above mqtt.receive_maximum 1000"),
        ("[mqtt]\nprotocol = 'mqttv3'\n", "'mqtt.protocol' = 'mqttv3'"),
    ],
)
def test_inconsistent_settings_are_refused(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, MINIMAL + text), environ={})


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist: pass --config PATH"):
        load_config(tmp_path / "nope.toml", environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "gateway_id = \n"), environ={})


def test_files_named_by_config_are_checked_before_connecting(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, MINIMAL + f"[mqtt]\ntls_ca = '{tmp_path / 'ca.pem'}'\n"), environ={}
    )
    with pytest.raises(ConfigError, match=r"'mqtt\.tls_ca'.*no such file"):
        check_files(cfg)
    (tmp_path / "ca.pem").write_text("x")
    check_files(cfg)

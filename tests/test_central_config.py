"""Central config: TOML keys, FLEETPULSE_* overrides, unknown keys and bad values refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from central.config import CentralConfig, load_config, split_listen
from central.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "central.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    cfg = load_config(None, environ={})
    assert cfg == CentralConfig()
    assert cfg.listen == "127.0.0.1:8080"
    assert cfg.max_batch_bytes == 64 * 1024 * 1024
    assert cfg.landing_url == "/var/lib/fleetpulse-central/landing"
    assert cfg.ledger_dsn == "sqlite:////var/lib/fleetpulse-central/ledger.sqlite3"


def test_file_keys_and_env_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f'data_dir = "{tmp_path}"\nlisten = "[::1]:9000"\nmax_batch_bytes = 1000\n',
    )
    env = {"FLEETPULSE_MAX_BATCH_BYTES": "2000", "FLEETPULSE_GATEWAY_ID": "gw-1"}
    cfg = load_config(path, environ=env)
    assert cfg.max_batch_bytes == 2000  # environment beats the file
    assert (cfg.host, cfg.port) == ("::1", 9000)
    assert cfg.landing_url == str(tmp_path / "landing")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("max_batch_byte = 3\n", "unknown config key 'max_batch_byte'"),
        ('listen = "localhost"\n', "'listen'"),
        ("max_batch_bytes = 0\n", "'max_batch_bytes'"),
        ('ledger_url = "mysql://x"\n', "sqlite:///"),
        ('tls_cert = "/c.pem"\n', "tls_cert and tls_key go together"),
        ("listen = [\n", "not valid TOML"),
    ],
)
def test_bad_files_name_the_key(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    assert needle in str(info.value)


def test_bad_env_value_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_batch_rows"):
        load_config(None, environ={"FLEETPULSE_MAX_BATCH_ROWS": "lots"})


def test_missing_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--config"):
        load_config(tmp_path / "nope.toml", environ={})


@pytest.mark.parametrize("bad", ["8080", ":8080", "host:", "h:70000", "h:x"])
def test_split_listen_refuses(bad: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        split_listen(bad)


def test_duckdb_memory_limit_defaults_to_a_bound_and_names_a_bad_size(tmp_path: Path) -> None:
    assert load_config(None, environ={}).consolidate.duckdb_memory_limit == "1500MB"
    unlimited = load_config(None, environ={"FLEETPULSE_CONSOLIDATE__DUCKDB_MEMORY_LIMIT": ""})
    assert unlimited.consolidate.duckdb_memory_limit == ""
    big = load_config(None, environ={"FLEETPULSE_CONSOLIDATE__DUCKDB_MEMORY_LIMIT": "8GB"})
    assert big.consolidate.duckdb_memory_limit == "8GB"
    bad = tmp_path / "central.toml"
    bad.write_text('[consolidate]\nduckdb_memory_limit = "lots"\n')
    with pytest.raises(ConfigError, match=r"consolidate\.duckdb_memory_limit.*'lots'.*1500MB"):
        load_config(bad, environ={})

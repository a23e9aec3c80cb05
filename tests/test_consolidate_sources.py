"""Consolidation sources: Avro (fastavro and Apache avro), a file or a folder; the registry."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from central.consolidate.errors import SourceError
from central.consolidate.sources import (
    ALERTS_SCHEMA,
    FIRMWARE_SCHEMA,
    read_alerts,
    read_firmware,
    read_registry,
)
from schemas.avro import ALERTS_AVSC, FIRMWARE_AVSC
from tests.consolidate_support import make_fleet, write_avro, write_registry_csv

T = datetime(2026, 1, 1, 12, 0, 0, 123000, tzinfo=UTC)


def _alerts() -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "alert_id": "a1",
                "device_id": "d1",
                "severity": "major",
                "type": "offline",
                "raised_at": T,
                "cleared_at": None,
            },
            {
                "alert_id": "a2",
                "device_id": "d2",
                "severity": "minor",
                "type": "battery",
                "raised_at": T,
                "cleared_at": datetime(2026, 1, 2, tzinfo=UTC),
            },
        ],
        schema=ALERTS_SCHEMA,
    )


@pytest.mark.parametrize("reference_lib", [False, True], ids=["fastavro", "apache-avro"])
def test_alerts_written_by_either_library_read_back_exactly(
    tmp_path: Path, reference_lib: bool
) -> None:
    path = write_avro(tmp_path / "alerts.avro", _alerts(), ALERTS_AVSC, reference_lib=reference_lib)
    got = read_alerts(path)
    assert got.schema.equals(ALERTS_SCHEMA)
    assert got.to_pylist() == _alerts().to_pylist()  # millisecond instants, nulls kept


def test_firmware_from_a_folder_of_files_apache_and_fastavro_mixed(tmp_path: Path) -> None:
    fw = make_fleet(n_devices=10, hours=2).firmware
    half = fw.num_rows // 2
    write_avro(tmp_path / "fw" / "a.avro", fw.slice(0, half), FIRMWARE_AVSC, reference_lib=True)
    write_avro(tmp_path / "fw" / "b.avro", fw.slice(half), FIRMWARE_AVSC)
    (tmp_path / "fw" / "README.txt").write_text("not Avro, not read")
    got = read_firmware(tmp_path / "fw")
    assert got.schema.equals(FIRMWARE_SCHEMA)
    assert got.to_pylist() == fw.to_pylist()


def test_avro_with_another_schema_names_the_file(tmp_path: Path) -> None:
    path = write_avro(tmp_path / "alerts.avro", _alerts(), ALERTS_AVSC)
    with pytest.raises(SourceError, match=r"alerts\.avro cannot be read as firmware\.avsc"):
        read_firmware(path)


def test_missing_avro_path_says_which(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        read_alerts(tmp_path / "nope.avro")


def test_no_source_configured_is_empty() -> None:
    assert read_alerts(None).num_rows == 0
    assert read_firmware(None).schema.equals(FIRMWARE_SCHEMA)


def test_registry_csv_and_parquet_read_the_same(tmp_path: Path) -> None:
    reg = make_fleet(n_devices=12, hours=2).registry
    from_csv = read_registry(write_registry_csv(tmp_path / "r.csv", reg))
    pq.write_table(reg, tmp_path / "r.parquet")
    from_parquet = read_registry(tmp_path / "r.parquet")
    assert from_csv.to_pylist() == from_parquet.to_pylist() == reg.to_pylist()


def test_registry_error_names_line_column_and_value(tmp_path: Path) -> None:
    p = tmp_path / "r.csv"
    p.write_text(
        "device_id,site,lat,lon,heartbeat_s,gap_k,commissioned_at,decommissioned_at\n"
        "d1,s1,52.5,13.4,30,,,\n"
        "d2,s1,95.0,13.4,30,,,\n"
    )
    with pytest.raises(SourceError, match=r"line 3: column 'lat' = '95\.0'"):
        read_registry(p)


def test_registry_with_a_device_twice_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "r.csv"
    p.write_text("device_id,site\nd1,s1\nd1,s2\n")
    with pytest.raises(SourceError, match=r"d1.*twice"):
        read_registry(p)

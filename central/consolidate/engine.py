"""The two backends of the one Ibis definition: embedded DuckDB and PySpark, both in UTC.

Only this module knows which engine runs: it opens the connection, registers Arrow inputs
and landed Parquet files as tables, materialises step outputs and turns engine errors into
``EngineError``. Everything else is an Ibis expression that runs on either.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import ibis
import ibis.expr.types as ir
import pyarrow as pa

from .errors import EngineError

log = logging.getLogger(__name__)

EngineName = Literal["duckdb", "spark"]

# Warnings the libraries raise about each other, not about our use of them: Ibis 12 still
# calls DuckDB 1.x names that DuckDB 2 deprecates, and PySpark's Arrow bridge warns about
# pandas internals. Silenced only around engine calls.
_KNOWN_WARNINGS = (
    r".*fetch_arrow_table\(\) is deprecated",
    r".*fetch_record_batch\(\) is deprecated",
)
ENGINES: tuple[str, ...] = ("duckdb", "spark")

# Settings every session gets; user conf may add to them but not change the time zone.
SPARK_DEFAULT_CONF: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.shuffle.partitions": "8",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    # Ibis compiles one SQL text per step; a small fleet must not pay broadcast timeouts.
    "spark.sql.adaptive.enabled": "true",
}
SPARK_LOCAL_CONF: dict[str, str] = {
    # Local mode stays on the loopback interface (no traffic leaves 127.0.0.1).
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
}


@dataclass
class Relation:
    """A materialised step output: the engine table, its row count and its schema.

    ``num_rows`` and ``schema`` let the pipeline runtime record lineage without knowing
    the engine. It has no content fingerprint: engine tables live for one run only, so the
    steps that make them are never cached.
    """

    table: ir.Table
    num_rows: int
    label: str

    @property
    def schema(self) -> dict[str, str]:
        return {name: str(dtype) for name, dtype in self.table.schema().items()}


class Engine:
    """An Ibis connection plus the few operations that differ between backends."""

    name: str = "?"

    def __init__(self, con: Any) -> None:
        self.con = con
        self._counter = 0
        self._cached: list[ir.Table] = []

    def _fresh(self, prefix: str) -> str:
        self._counter += 1
        return f"fp_{prefix}_{os.getpid()}_{id(self):x}_{self._counter}"

    # -- inputs ---------------------------------------------------------------------------

    def register(self, label: str, table: pa.Table) -> ir.Table:
        """An Arrow table as an engine table."""
        raise NotImplementedError

    def read_parquet(
        self,
        paths: Sequence[str],
        columns: Sequence[str],
        optional: Mapping[str, str] | None = None,
    ) -> ir.Table:
        """Landed batch files as one table with a ``filename`` column (the file's path).

        Files may differ in their columns (schema versions): a column some files lack is
        null in their rows; an ``optional`` column (name → Ibis type) no file has is null.
        """
        raise NotImplementedError

    @staticmethod
    def _with_optional(
        t: ir.Table, columns: Sequence[str], optional: Mapping[str, str] | None
    ) -> ir.Table:
        types = optional or {}
        missing = {c: ibis.null(types[c]) for c in columns if c not in t.columns and c in types}
        if missing:
            t = t.mutate(**missing)
        return t.select(*columns, "filename")

    # -- execution ------------------------------------------------------------------------

    def materialize(self, label: str, expr: ir.Table) -> Relation:
        """Compute ``expr`` once and keep it for the steps that read it."""
        with self.errors(f"step {label}"):
            cached = expr.cache()
            self._cached.append(cached)
            rows = int(cached.count().to_pyarrow().as_py())
        return Relation(cached, rows, label)

    def to_arrow(self, expr: ir.Table, label: str) -> pa.Table:
        """Run ``expr`` and return its rows."""
        with self.errors(f"step {label}"):
            return expr.to_pyarrow()

    def scalar(self, expr: ir.Scalar, label: str) -> Any:
        """Run a scalar expression."""
        with self.errors(label):
            return expr.to_pyarrow().as_py()

    def release(self) -> None:
        """Drop the materialised tables of this run (Spark keeps them in executor memory)."""
        while self._cached:
            t = self._cached.pop()
            try:
                t.release()
            except Exception as exc:  # the run is over: a leak is worth a warning, no more
                log.warning("could not release a cached %s table: %s", self.name, exc)

    def close(self) -> None:
        self.release()

    @contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """Turn the engine's exceptions into EngineError naming the engine and the step."""
        try:
            with warnings.catch_warnings():
                for pattern in _KNOWN_WARNINGS:
                    warnings.filterwarnings("ignore", message=pattern)
                yield
        except EngineError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EngineError(f"{self.name} failed in {what}: {first}") from exc


class DuckDBEngine(Engine):
    """Embedded DuckDB: the default, one process, spills to ``temp_dir`` when memory is short."""

    name = "duckdb"

    def __init__(
        self,
        temp_dir: Path | None = None,
        memory_limit: str | None = None,
        threads: int | None = None,
    ) -> None:
        con = ibis.duckdb.connect()
        con.raw_sql("SET TimeZone = 'UTC'")
        # Insertion order is not a result of any step (every window has a full tie-breaker):
        # dropping it lets DuckDB stream and spill more freely.
        con.raw_sql("SET preserve_insertion_order = false")
        if temp_dir is not None:
            temp_dir.mkdir(parents=True, exist_ok=True)
            con.raw_sql(f"SET temp_directory = '{_sql_quote(str(temp_dir))}'")
        if memory_limit:
            con.raw_sql(f"SET memory_limit = '{_sql_quote(memory_limit)}'")
        if threads:
            con.raw_sql(f"SET threads = {int(threads)}")
        super().__init__(con)

    def register(self, label: str, table: pa.Table) -> ir.Table:
        with self.errors(f"loading {label}"):
            return self.con.create_table(self._fresh(label), table, temp=True)

    def read_parquet(
        self,
        paths: Sequence[str],
        columns: Sequence[str],
        optional: Mapping[str, str] | None = None,
    ) -> ir.Table:
        with self.errors("reading landed batches"):
            t = self.con.read_parquet(
                list(paths), table_name=self._fresh("landing"), filename=True, union_by_name=True
            )
            return self._with_optional(t, columns, optional)

    def close(self) -> None:
        super().close()
        self.con.disconnect()


class SparkEngine(Engine):
    """PySpark through Ibis: a local session or a cluster through ``master``."""

    name = "spark"

    def __init__(self, session: Any, owns_session: bool = False) -> None:
        self.session = session
        self.owns_session = owns_session
        with self.errors("connecting"):
            con = ibis.pyspark.connect(session)
        super().__init__(con)

    def register(self, label: str, table: pa.Table) -> ir.Table:
        name = self._fresh(label)
        with self.errors(f"loading {label}"):
            df = self.session.createDataFrame(_spark_ready(table))
            df.createOrReplaceTempView(name)
            return self.con.table(name)

    def read_parquet(
        self,
        paths: Sequence[str],
        columns: Sequence[str],
        optional: Mapping[str, str] | None = None,
    ) -> ir.Table:
        from pyspark.sql import functions as F

        name = self._fresh("landing")
        with self.errors("reading landed batches"):
            df = self.session.read.option("mergeSchema", "true").parquet(*paths)
            present = [c for c in columns if c in df.columns]
            df = df.select(*present).withColumn("filename", F.input_file_name())
            df.createOrReplaceTempView(name)
            return self._with_optional(self.con.table(name), columns, optional)

    def to_arrow(self, expr: ir.Table, label: str) -> pa.Table:
        # Ibis goes through pandas here, which loses column order and UTC timestamps;
        # Spark 4 hands Arrow over directly.
        with self.errors(f"step {label}"):
            table = self.session.sql(self.con.compile(expr)).toArrow()
            return _as_schema(table, expr.schema().to_pyarrow())

    def scalar(self, expr: ir.Scalar, label: str) -> Any:
        with self.errors(label):
            row = self.session.sql(self.con.compile(expr)).collect()[0]
            return row[0]

    def close(self) -> None:
        super().close()
        if self.owns_session:
            self.session.stop()


def _as_schema(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Spark's Arrow result in the types the Ibis expression declares (e.g. UTC timestamps)."""
    cols = []
    for f in schema:
        col = table[f.name]
        if pa.types.is_timestamp(f.type):
            col = col.cast(pa.timestamp("us", tz="UTC"))
        elif col.type != f.type:
            col = col.cast(f.type)
        cols.append(col)
    return pa.table(cols, names=schema.names)


def _sql_quote(text: str) -> str:
    return text.replace("'", "''")


def _spark_ready(table: pa.Table) -> pa.Table:
    # Spark has no millisecond timestamps, no null type and no large strings; give it what
    # it takes so createDataFrame does not guess from pandas.
    fields = []
    for f in table.schema:
        t = f.type
        if pa.types.is_timestamp(t):
            t = pa.timestamp("us", tz="UTC")
        elif pa.types.is_null(t) or pa.types.is_large_string(t):
            t = pa.string()
        fields.append(pa.field(f.name, t, nullable=True))
    # One record batch: PySpark 4.x built DataFrames from multi-batch Arrow tables whose
    # projections came back all null (found with the golden cases; see docs/gold-tables.md).
    return table.cast(pa.schema(fields)).combine_chunks()


def spark_session(
    master: str = "local[*]", conf: Mapping[str, str] | None = None, app_name: str = "fleetpulse"
) -> Any:
    """A SparkSession in UTC with fleetpulse's defaults plus ``conf``."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise EngineError(
            "--engine spark needs PySpark: pip install 'fleetpulse[spark]' (and a JDK 17+)"
        ) from exc
    settings = dict(SPARK_DEFAULT_CONF)
    if master.startswith("local"):
        settings.update(SPARK_LOCAL_CONF)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    user = dict(conf or {})
    tz = user.get("spark.sql.session.timeZone", "UTC")
    if tz != "UTC":
        raise EngineError(
            f"[spark] conf spark.sql.session.timeZone = {tz!r}: consolidation runs in UTC; "
            "remove the key"
        )
    settings.update(user)
    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in settings.items():
        builder = builder.config(key, value)
    try:
        session = builder.getOrCreate()
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EngineError(f"cannot start Spark (master {master!r}): {first}") from exc
    session.sparkContext.setLogLevel("ERROR")
    return session


def connect(
    name: str,
    *,
    work_dir: Path | None = None,
    spark_master: str = "local[*]",
    spark_conf: Mapping[str, str] | None = None,
    spark: Any = None,
    duckdb_memory_limit: str | None = None,
) -> Engine:
    """Open the named engine; ``spark`` passes an existing session (tests share one)."""
    if name == "duckdb":
        return DuckDBEngine(
            temp_dir=None if work_dir is None else work_dir / "duckdb-tmp",
            memory_limit=duckdb_memory_limit,
        )
    if name == "spark":
        if spark is not None:
            return SparkEngine(spark)
        return SparkEngine(spark_session(spark_master, spark_conf), owns_session=True)
    raise EngineError(f"unknown engine {name!r}: use one of {', '.join(ENGINES)}")

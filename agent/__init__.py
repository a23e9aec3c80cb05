"""The gateway agent: MQTT ingest, SQLite buffer, local uptime DAG, Parquet export, upload."""

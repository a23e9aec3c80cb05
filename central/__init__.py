"""Central: ingest API, landing store and ledger, fan-in consolidation, Delta gold, report."""

"""The DAG runtime agent and central share: steps, graph, events, lineage, gates, cache."""

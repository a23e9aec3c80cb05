"""Small DAG modules used as test fixtures (Hamilton style)."""

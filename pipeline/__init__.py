"""The DAG runtime agent and central share: steps, graph, events, lineage, gates, cache."""

from .cache import Cache, DiskCache, MemoryCache, cache_key, fingerprint
from .errors import (
    CacheError,
    CycleError,
    DuplicateOutputError,
    GateFailed,
    GraphError,
    MissingInputError,
    PipelineError,
    StepDefinitionError,
    StepFailed,
    UnknownOutputError,
)
from .events import EVENT_KINDS, Event, EventBus, Subscriber
from .gates import Gate, GateResult, RowFailure, evaluate, gate
from .graph import Graph
from .lineage import Shape, describe, schema_diff
from .record import RunRecord, StepRecord
from .run import Pipeline, RunResult
from .steps import Step, make_step, step

__all__ = [
    "EVENT_KINDS",
    "Cache",
    "CacheError",
    "CycleError",
    "DiskCache",
    "DuplicateOutputError",
    "Event",
    "EventBus",
    "Gate",
    "GateFailed",
    "GateResult",
    "Graph",
    "GraphError",
    "MemoryCache",
    "MissingInputError",
    "Pipeline",
    "PipelineError",
    "RowFailure",
    "RunRecord",
    "RunResult",
    "Shape",
    "Step",
    "StepDefinitionError",
    "StepFailed",
    "StepRecord",
    "Subscriber",
    "UnknownOutputError",
    "cache_key",
    "describe",
    "evaluate",
    "fingerprint",
    "gate",
    "make_step",
    "schema_diff",
    "step",
]

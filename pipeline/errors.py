"""Exceptions of the DAG runtime, rooted at ``PipelineError``.

::

    PipelineError
    ├── GraphError              the steps do not form a runnable DAG
    │   ├── DuplicateOutputError    two steps produce the same name
    │   ├── CycleError              steps depend on each other in a loop
    │   ├── MissingInputError       a step needs a name nobody produces or passes in
    │   └── UnknownOutputError      an output was requested that no step produces
    ├── StepDefinitionError     a function cannot be a step (e.g. *args), or a bad gate
    ├── StepFailed              a step raised; the original is ``__cause__``
    ├── GateFailed              a validation gate found bad rows; downstream did not run
    └── CacheError              the cache directory cannot be read or written

``StepFailed`` and ``GateFailed`` carry the run record (``.record``) so a caller
can see what ran, what was blocked and why, even though the run raised.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .record import RunRecord


class PipelineError(Exception):
    """Root of every error the pipeline runtime raises."""


class GraphError(PipelineError):
    """The steps do not form a runnable DAG."""


class DuplicateOutputError(GraphError):
    """Two steps produce the same output name."""


class CycleError(GraphError):
    """Steps depend on each other in a loop."""

    def __init__(self, message: str, cycle: list[str]) -> None:
        super().__init__(message)
        self.cycle = cycle


class MissingInputError(GraphError):
    """A step needs an input that no step produces and the caller did not pass."""

    def __init__(self, message: str, missing: dict[str, list[str]]) -> None:
        super().__init__(message)
        # input name -> the steps that need it
        self.missing = missing


class UnknownOutputError(GraphError):
    """An output was requested that no step produces."""


class StepDefinitionError(PipelineError):
    """A function cannot serve as a step or a gate as written."""


class _RunError(PipelineError):
    def __init__(self, message: str, record: RunRecord | None = None) -> None:
        super().__init__(message)
        self.record = record


class StepFailed(_RunError):
    """A step raised an exception; the original is chained as ``__cause__``."""

    def __init__(self, message: str, step: str, record: RunRecord | None = None) -> None:
        super().__init__(message, record)
        self.step = step


class GateFailed(_RunError):
    """A validation gate rejected rows; the steps downstream of it did not run."""

    def __init__(self, message: str, results: list[Any], record: RunRecord | None = None) -> None:
        super().__init__(message, record)
        # the failed GateResult objects
        self.results = results


class CacheError(PipelineError):
    """The step cache cannot be read or written."""

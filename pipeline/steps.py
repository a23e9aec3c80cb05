"""Steps: plain functions whose name is their output and whose parameters are their inputs."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from types import ModuleType
from typing import Any

from .errors import StepDefinitionError

_STEP_ATTR = "__pipeline_step__"
_GATE_ATTR = "__pipeline_gate__"


@dataclass(frozen=True)
class Step:
    """One node of the DAG: ``fn(**{param: value_of(input)})`` produces ``name``."""

    name: str
    fn: Callable[..., Any]
    # parameter name -> the node whose value is passed for it (usually the same name)
    bindings: Mapping[str, str]
    # inputs whose parameter has a default: used when no step or caller provides them
    optional: frozenset[str] = frozenset()
    cache: bool = True
    version: str | None = None
    doc: str = ""

    @property
    def inputs(self) -> tuple[str, ...]:
        """The node names this step reads, in parameter order."""
        return tuple(self.bindings.values())

    @cached_property
    def code_version(self) -> str:
        """What the cache keys on besides the inputs: the explicit version or the code's hash."""
        if self.version is not None:
            return f"v:{self.version}"
        return _code_hash(self.fn)

    def call(self, values: Mapping[str, Any]) -> Any:
        """Run the function with the values of its inputs (missing optional ones use defaults)."""
        kwargs = {p: values[n] for p, n in self.bindings.items() if n in values}
        return self.fn(**kwargs)


def _code_hash(fn: Callable[..., Any]) -> str:
    # Source text survives re-imports and is what a person edits; bytecode is the fallback
    # for functions without source (lambdas in a REPL, C functions).
    try:
        text = inspect.getsource(fn).encode()
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        text = repr(fn).encode() if code is None else code.co_code + repr(code.co_consts).encode()
    return "src:" + hashlib.sha256(text).hexdigest()[:16]


def _first_line(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def make_step(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    inputs: Mapping[str, str] | None = None,
    cache: bool = True,
    version: str | None = None,
) -> Step:
    """Build a Step from a function; ``inputs`` maps a parameter to a differently named node."""
    step_name = name or getattr(fn, "__name__", None)
    if not step_name or step_name == "<lambda>":
        raise StepDefinitionError(f"{fn!r} has no usable name; pass name= to step()")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise StepDefinitionError(
            f"step {step_name!r}: cannot read its signature ({exc})"
        ) from None
    renames = dict(inputs or {})
    unknown = sorted(set(renames) - set(sig.parameters))
    if unknown:
        raise StepDefinitionError(
            f"step {step_name!r}: inputs= names parameters {unknown} that "
            f"{step_name}() does not have; its parameters are {list(sig.parameters)}"
        )
    bindings: dict[str, str] = {}
    optional: set[str] = set()
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise StepDefinitionError(
                f"step {step_name!r}: parameter {p.name!r} is *args/**kwargs; a step's inputs "
                "must be named parameters so the graph can be built from them"
            )
        node = renames.get(p.name, p.name)
        bindings[p.name] = node
        if p.default is not p.empty:
            optional.add(node)
    return Step(
        name=step_name,
        fn=fn,
        bindings=bindings,
        optional=frozenset(optional),
        cache=cache,
        version=version,
        doc=_first_line(fn),
    )


def step(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    inputs: Mapping[str, str] | None = None,
    cache: bool = True,
    version: str | None = None,
) -> Any:
    """Decorator that tunes a step; the function stays a plain, directly callable function.

    ``@step(cache=False)`` for steps with side effects (writing files, publishing):
    the cache would otherwise skip them when their inputs did not change.
    ``version=`` replaces the code hash in cache keys (bump it to invalidate).
    """

    def mark(f: Callable[..., Any]) -> Callable[..., Any]:
        spec = make_step(f, name=name, inputs=inputs, cache=cache, version=version)
        setattr(f, _STEP_ATTR, spec)
        return f

    return mark if fn is None else mark(fn)


def as_step(obj: Step | Callable[..., Any]) -> Step:
    """A Step as given, the spec a @step decorator attached, or a plain function's default spec."""
    if isinstance(obj, Step):
        return obj
    spec = getattr(obj, _STEP_ATTR, None)
    if isinstance(spec, Step):
        return spec
    if not callable(obj):
        raise StepDefinitionError(f"{obj!r} is not a function and cannot be a step")
    return make_step(obj)


def collect(modules: Iterable[ModuleType]) -> tuple[list[Step], list[Any]]:
    """Steps and gates defined in modules: public functions defined there (not imported)."""
    steps: list[Step] = []
    gates: list[Any] = []
    for module in modules:
        for attr, obj in vars(module).items():
            if attr.startswith("_") or not inspect.isfunction(obj):
                continue
            if obj.__module__ != module.__name__:
                continue  # imported helpers are not nodes of this module's graph
            gate = getattr(obj, _GATE_ATTR, None)
            if gate is not None:
                gates.append(gate)
            else:
                steps.append(as_step(obj))
    return steps, gates

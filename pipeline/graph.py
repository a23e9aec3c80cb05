"""The DAG built from step names with graphlib: validation, pruning and ordering."""

from __future__ import annotations

import difflib
import graphlib
from collections.abc import Collection, Iterable, Mapping

from .errors import CycleError, DuplicateOutputError, MissingInputError, UnknownOutputError
from .steps import Step


def _where(step: Step) -> str:
    fn = step.fn
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', step.name)}"


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


class Graph:
    """Steps keyed by output name; raises GraphError subclasses that name the steps at fault."""

    def __init__(self, steps: Iterable[Step]) -> None:
        self.steps: dict[str, Step] = {}
        for s in steps:
            other = self.steps.get(s.name)
            if other is not None:
                raise DuplicateOutputError(
                    f"steps {_where(other)} and {_where(s)} both produce {s.name!r}; "
                    "an output name must be unique: rename one of the functions "
                    "(or pass name= to step())"
                )
            self.steps[s.name] = s
        self._check_cycles()

    def _deps(self, name: str, provided: Collection[str] = ()) -> list[str]:
        # An input the caller provides overrides the step of that name: no edge to it.
        return [i for i in self.steps[name].inputs if i in self.steps and i not in provided]

    def _check_cycles(self) -> None:
        sorter = graphlib.TopologicalSorter({n: self._deps(n) for n in self.steps})
        try:
            sorter.prepare()
        except graphlib.CycleError as exc:
            cycle = list(exc.args[1])
            raise CycleError(
                f"steps {' -> '.join(cycle)} form a cycle: each needs the output of the next. "
                "A step cannot depend on its own output, directly or through others; "
                "rename an input or split a step to break the loop",
                cycle,
            ) from None

    def plan(self, outputs: Iterable[str] | None, provided: Collection[str]) -> list[str]:
        """The steps needed for ``outputs`` (all steps when None), in a valid order."""
        wanted = list(self.steps) if outputs is None else list(outputs)
        unknown = [o for o in wanted if o not in self.steps and o not in provided]
        if unknown:
            hints = "".join(_did_you_mean(u, self.steps) for u in unknown)
            raise UnknownOutputError(
                f"Unknown outputs {unknown} requested. Check for typos?{hints} "
                f"Known steps: {sorted(self.steps)}"
            )
        needed: set[str] = set()
        stack = [o for o in wanted if o in self.steps and o not in provided]
        while stack:
            n = stack.pop()
            if n in needed:
                continue
            needed.add(n)
            stack.extend(self._deps(n, provided))
        missing: dict[str, list[str]] = {}
        for n in sorted(needed):
            s = self.steps[n]
            for i in s.inputs:
                if i not in self.steps and i not in provided and i not in s.optional:
                    missing.setdefault(i, []).append(n)
        if missing:
            parts = []
            for name, needers in sorted(missing.items()):
                hint = _did_you_mean(name, set(self.steps) | set(provided))
                parts.append(f"{name!r} (needed by {', '.join(needers)}){hint}")
            raise MissingInputError(
                f"missing inputs: {'; '.join(parts)}. No step produces them and run() was "
                "not given them: pass them in inputs={...} or add steps named after them",
                missing,
            )
        sorter = graphlib.TopologicalSorter({n: self._deps(n, provided) for n in needed})
        return list(sorter.static_order())

    def dependencies(self, provided: Collection[str], plan: Iterable[str]) -> dict[str, list[str]]:
        """For each planned step, the planned steps it waits for."""
        planned = set(plan)
        return {n: [d for d in self._deps(n, provided) if d in planned] for n in planned}

    def downstream(self, name: str, plan: Iterable[str]) -> set[str]:
        """Planned steps that read node ``name`` (a step or an input), directly or not."""
        planned = list(plan)
        out: set[str] = set()
        stack = [name]
        while stack:
            x = stack.pop()
            for n in planned:
                if n not in out and x in self.steps[n].inputs:
                    out.add(n)
                    stack.append(n)
        return out

    def consumers(self) -> Mapping[str, list[str]]:
        """Node name -> the steps that read it (external inputs included)."""
        out: dict[str, list[str]] = {}
        for s in self.steps.values():
            for i in s.inputs:
                out.setdefault(i, []).append(s.name)
        return out

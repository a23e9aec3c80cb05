"""A progress bar for long consolidation runs, fed by the pipeline's lifecycle events.

On a terminal it redraws one line (``[#####.....] 12/40 covered 3.2s``); elsewhere (a
systemd timer, a pipe) it writes a plain line per finished step, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from pipeline import Event

WIDTH = 30


class Progress:
    """Counts finished steps out of ``total``; call it with pipeline events."""

    def __init__(
        self,
        total: int = 0,
        stream: TextIO | None = None,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.total = total
        self.done = 0
        self.clock = clock
        self.started = clock()

    def __call__(self, event: Event) -> None:
        if event.kind == "pipeline_start":
            self.total += len(event.data.get("steps", []))
        elif event.kind in ("step_complete", "step_failed"):
            self.advance(event.step or "?")
        elif event.kind == "pipeline_complete":
            self.finish(str(event.data.get("status", "")))

    def advance(self, label: str) -> None:
        self.done += 1
        elapsed = self.clock() - self.started
        total = max(self.total, self.done)
        if self.tty:
            filled = int(WIDTH * self.done / total) if total else WIDTH
            bar = "#" * filled + "." * (WIDTH - filled)
            self.stream.write(f"\r[{bar}] {self.done}/{total} {label:<28.28} {elapsed:6.1f}s")
        else:
            self.stream.write(f"consolidate: {self.done}/{total} {label} ({elapsed:.1f}s)\n")
        self.stream.flush()

    def finish(self, status: str) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

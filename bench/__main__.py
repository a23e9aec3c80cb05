"""Run the benchmarks and write BENCHMARKS.md.

Each ``bench/bench_<name>.py`` defines ``run() -> str`` returning a Markdown section;
the section is kept in ``bench/results/<name>.md`` so one benchmark can be re-run
alone (``python -m bench NAME``) without losing the others' figures.
"""

from __future__ import annotations

import importlib
import platform
import sys
import time
from pathlib import Path

import psutil

HERE = Path(__file__).parent
RESULTS = HERE / "results"
OUT = HERE.parent / "BENCHMARKS.md"


def machine() -> str:
    mem = psutil.virtual_memory().total / 2**30
    cpu = platform.processor() or platform.machine()
    return (
        f"{platform.system()} {platform.release()}, {cpu}, {psutil.cpu_count()} cores, "
        f"{mem:.0f} GiB RAM, Python {platform.python_version()}"
    )


def main(argv: list[str]) -> int:
    names = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    wanted = argv or names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        print(f"unknown benchmark(s) {unknown}; known: {names}", file=sys.stderr)
        return 2
    RESULTS.mkdir(exist_ok=True)
    for name in wanted:
        print(f"== bench {name}", file=sys.stderr, flush=True)
        started = time.monotonic()
        section = importlib.import_module(f"bench.bench_{name}").run()
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        took = time.monotonic() - started
        (RESULTS / f"{name}.md").write_text(
            f"{section.rstrip()}\n\n_Measured {stamp} on {machine()}; took {took:.0f} s._\n"
        )
    parts = ["# Benchmarks\n", "Written by `make bench` (`python -m bench [NAME ...]`).\n"]
    parts += [(RESULTS / f"{n}.md").read_text() for n in names if (RESULTS / f"{n}.md").exists()]
    OUT.write_text("\n".join(parts))
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

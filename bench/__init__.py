"""Benchmarks run by ``make bench``; each ``bench_*.py`` writes a section of BENCHMARKS.md."""

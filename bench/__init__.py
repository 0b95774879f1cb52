"""vitcore's benchmarks: pytest-benchmark suites (``bench_*.py``), report scripts and the one-call GPU suite.

Run from the repository root as modules: ``python -m bench.attention_report``, ``python -m bench.gpu_suite``;
``pytest bench/bench_msa.py --benchmark-only``. All of them time with ``vitcore.bench`` (the harness).
"""

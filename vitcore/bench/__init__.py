"""vitcore's one benchmark harness, and the MSA scaling sweep that ``vitcore bench`` runs.

- ``timers``: windows of back-to-back calls, ``do_bench`` (CUDA events), CUDA-graph replay, host µs per call,
  one synchronised call;
- ``env``: the environment record of every results file and the device tag of file names;
- ``ceilings``: the measured matmul and copy ceilings;
- ``writer``: results that never overwrite a finished run;
- ``scaling``, ``scaling_fit``, ``scaling_report``, ``options``: the MSA sweep, its fit and report, and
  the ``vitcore bench`` options.

The library core (model, space, ops, proxies, ranking, cost, runs, CLI) imports nothing from here at import
time; nothing here is imported by ``import vitcore``.
"""

"""Triton device code for vitcore: ``@triton.jit`` kernels and their launchers.

Installed as ``vitcore.kernels``. Importing a module here imports Triton, so only
``vitcore.ops`` imports them, and only after ``vitcore.ops.dispatch.use_triton`` said yes.
"""

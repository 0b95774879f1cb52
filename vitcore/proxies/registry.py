"""The explicit list of proxies ``vitcore.score`` knows, in the order ``PROXIES`` lists them.

Adding a proxy is one file and one test:

1. ``vitcore/proxies/<name>.py`` defines ``PROXY = Proxy(name="<name>", ...)`` (``vitcore.proxies.base``)
   and, in its docstring, the paper, the formula and every choice made for ViTs:

   - ``passes``: the shared passes it reads, from ``vitcore.passes.PASSES``. "data" is one forward and
     backward over the whole batch (split into ``chunks`` to fit memory); ``taps`` says what it records:
     "grads" (``ctx.data.grads``: dL/dθ per tensor of ``ctx.counted``, None where unused), "fisher"
     (``ctx.data.fisher``), "jacobian" (``ctx.data.jacobian``, (B, input features)), "codes"
     (``ctx.data.codes``: per ReLU/GELU call, (B, units) bool, input > 0). "halves" runs the batch's
     two halves as separate minibatches (``ctx.halves.group_grads[h][i]``: the mean-loss gradient of
     half h for ``ctx.halves.params[i]``, every Linear/Conv weight included). "synflow" gives
     ``ctx.synflow = (|θ|, dR/d|θ|)``; "hessian" gives ``ctx.hessian`` (H·g per counted tensor).
     Each pass runs once per ``score`` call, whatever set was asked.
   - ``reduce(ctx)``: the device-side reduction, a tensor of any shape or a tuple of tensors, and no
     host read in it (no ``.item()``, ``float(t)``, ``bool(t)``, ``.cpu()``, data-dependent Python
     ``if``, nor ops that check their result with a host sync on CUDA: ``torch.linalg.eigvalsh``,
     ``svdvals``, ``torch.unique``, boolean-mask indexing, ``nonzero``). A proxy
     that needs something no pass records may run its own forward/backward here (a private pass,
     split into ``ctx.chunks`` with ``vitcore.passes.split`` and ``vitcore.passes.loss_on`` for the loss):
     before every pass and every ``reduce`` the planner puts back the model's buffers (BatchNorm
     statistics), its train mode and the RNG state, so no proxy sees another one's side effects.
   - ``finish(values) -> float``: the host-side step after the one sync, on reduce's tensor as a float64
     numpy array (a tuple of arrays for a tuple; default: ``float``). Eigenvalues, singular values,
     log-determinants and other small host steps go here.
   - ``host(ctx) -> float`` instead of ``reduce`` for a value that needs no device data (params).
   - ``min_batch``: the fewest examples the proxy is defined for.
2. Add the module to ``REGISTRY`` below (a test fails for a file in ``vitcore/proxies/`` that is not
   listed, and for a listed unit whose name is not its file's).
3. One test file ``tests/test_proxy_<name>.py``: the proxy against a straightforward float64
   implementation written in the test, on odd sizes; ``tests/test_proxy_registry.py`` then checks it
   syncs with the host once and does not change another proxy's value.
"""
from typing import Dict, Tuple

from vitcore.proxies import (az_expressivity, az_trainability, dss, fisher, flops, grad_norm, grasp, jacob_cov, lswag,
                             meco, nwot, params, plain, snip, swap, synflow, zico)
from vitcore.proxies.base import Proxy

REGISTRY: Tuple[Proxy, ...] = tuple(module.PROXY for module in (
    grad_norm, snip, plain, grasp, synflow, fisher, jacob_cov, nwot, zico, params, flops, dss, swap, meco, lswag,
    az_expressivity, az_trainability,
))
UNITS: Dict[str, Proxy] = {unit.name: unit for unit in REGISTRY}
PROXIES: Tuple[str, ...] = tuple(UNITS)
INFRASTRUCTURE = ("__init__", "base", "registry", "plan")  # the modules of vitcore/proxies/ that are not proxies

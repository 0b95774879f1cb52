"""jacob_cov: -Σ_k [log(λ_k + k) + 1/(λ_k + k)], k = 1e-5, λ the eigenvalues of the correlation matrix
of the examples' input gradients of Σ f(x) (Mellor et al., "Neural Architecture Search without
Training", arXiv 2006.04647 v1; k is foresight's offset). The (B, B) correlation is computed on the
device; the eigenvalues on the host, after the one sync. A constant gradient row has no correlation:
NaN, as foresight gives.
"""
import numpy as np
import torch

from vitcore.proxies.base import Context, Proxy

_K = 1e-5  # foresight's eigenvalue offset


def corrcoef(x: torch.Tensor) -> torch.Tensor:
    """Correlation of the rows of x (B, F), as np.corrcoef: NaN for a constant row. Written out
    because torch.corrcoef checks its degrees of freedom with a host sync on CUDA."""
    centred = x - x.mean(1, keepdim=True)  # (B, F)
    norms = centred.norm(dim=1)  # (B,)
    return (centred @ centred.T) / (norms[:, None] * norms[None, :])  # (B, B)


def _reduce(ctx: Context) -> torch.Tensor:
    if ctx.data.jacobian is None:
        raise ValueError("the model's output does not depend on its inputs through autograd (a detach, or "
                         "torch.no_grad() inside forward): jacob_cov has no input gradient to read")
    return corrcoef(ctx.data.jacobian)  # (B, B) float64


def _finish(corr: np.ndarray) -> float:
    if not np.isfinite(corr).all():
        return float("nan")
    v = np.linalg.eigvalsh(corr)
    return float(-np.sum(np.log(v + _K) + 1.0 / (v + _K)))


PROXY = Proxy(name="jacob_cov", passes=("data",), taps=("jacobian",), reduce=_reduce, finish=_finish,
              min_batch=2)

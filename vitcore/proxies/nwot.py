"""nwot: log|det K|, K_ij the number of ReLU/GELU inputs whose signs agree for examples i and j
(NASWOT: Mellor et al., ICML 2021). The activations' inputs come from the data pass ("codes" tap);
NASLib hooks ReLU only, so a GELU ViT would score a constant; vitcore reads GELU modules too. K is
built on the device in float64, its log-determinant taken on the host after the one sync. A NaN
input to any activation gives NaN (the sign test alone would read it as "off").
"""
import numpy as np
import torch

from vitcore.proxies.base import Context, Proxy, activation_codes


def kernel(codes) -> torch.Tensor:
    """K (B, B) float64 from per-call codes, each (B, units) bool: units where two examples agree."""
    K = None
    for c in codes:
        c = c.double()  # (B, units), 0/1
        term = c @ c.T + (1 - c) @ (1 - c).T  # (B, B)
        K = term if K is None else K + term
    return K


def _reduce(ctx: Context) -> torch.Tensor:
    return torch.where(ctx.data.codes_nan, torch.nan, kernel(activation_codes(ctx, "nwot")))  # (B, B)


def _finish(K: np.ndarray) -> float:
    return float(np.linalg.slogdet(K)[1]) if np.isfinite(K).all() else float("nan")


PROXY = Proxy(name="nwot", passes=("data",), taps=("codes",), reduce=_reduce, finish=_finish)

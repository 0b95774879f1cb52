"""Multi-head self-attention: the eager reference (the Triton flash kernel lands behind the same call)."""
import math
from typing import Optional

import torch


def attention_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float] = None
) -> torch.Tensor:
    """softmax(q k^T * scale) v, non-causal; q, k, v (..., N', d), scale defaults to 1/sqrt(d).

    Computes in the inputs' dtype (upcast them for a float64 reference).
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # (..., N', N')
    return torch.matmul(scores.softmax(dim=-1), v)  # (..., N', d)

"""swap: SWAP, sample-wise activation patterns (Peng et al., "SWAP-NAS: Sample-Wise Activation Patterns
for Ultra-fast NAS", ICLR 2024; for Transformers, Peng et al., "Zero-Shot Neural Network Evaluation with
Sample-Wise Activation Patterns", IEEE TPAMI 2026, arXiv 2605.07378).

    SWAP = |{ (1[a_1u > 0], ..., 1[a_Bu > 0]) : u a neuron }|

the number of distinct patterns that the B examples of a batch draw on the network's neurons: each
neuron u of every activation layer has a B-bit pattern saying on which examples it is active, and
SWAP counts the distinct patterns. It is at most min(#neurons, 2^B).

The authors' code, read for this file (reference only):
- pym1024/SWAP @ 8d6225609ea3cf1c08980250d9b68113c34a0474, src/metrics/swap.py and correlation.py
  (CNNs): forward hooks on every nn.ReLU whose input is 4-D keep the outputs; each is flattened per
  example to (B, C·H·W), the layers are concatenated to (B, U), sign() taken, transposed to
  (U, B) (neurons x samples) and torch.unique(dim=0) counts the rows. 16 CIFAR-10 images, the score
  averaged over 32 Gaussian re-initialisations (N(0, 1) weights, zero biases).
- pym1024/SWAP_Universal @ 7ae33c5a4528924d5a4ea9466cef4e1eb38ea785, src/metrics/swap.py, and
  SWAP_Transformer.py @ f7bf3a0288c1732b7442f54bb81fac88aa3d2fb5 (Transformers): the same count, the
  hooks on nn.ReLU, nn.GELU, SiLU and transformers' GELUActivation (their outputs, every token of
  every layer flattened per example); one batch of 128 sequences (the loader's batch size; the
  script's ``input_samples`` of 16 is not used there), one initialisation, no repeats.
- Neither avoids saturation: the count is bounded by min(U, 2^B), and nothing else limits it.

vitcore follows that code: a neuron is one element of an activation layer's output per example, so
a ViT block's GELU gives N'·hidden neurons (class token included), read from the data pass's
"codes" tap (every ReLU/GELU module's input > 0, the tap nwot reads). Active means input > 0:
sign(ReLU(x)) is 1 exactly there; sign(GELU(x)) is -1, 0, 1 for x <, =, > 0, so the authors' code
also tells an exactly-zero GELU input from a negative one; vitcore counts both as inactive (a GELU
input of exactly 0 needs a degenerate network). A NaN input to an activation gives NaN. The paper's
regularised SWAP multiplies by exp(-(params - μ)²/σ) with μ, σ set from the search space's
parameter counts; that needs the population, not one network, and is not applied here. The batch
is the caller's: the authors' Transformer setting is 128 examples.

Saturation, measured on the first network of ../shared/data/autoformer-tiny-100.jsonl (U = 1,702,080
GELU neurons at 224², vitcore's initialisation, random-normal images, swap_reduce on the GELU inputs):
SWAP = 256 = 2^8 at B = 8 and 65,536 = 2^16 at B = 16; 1,696,375 at B = 32 and 1,698,090 at B = 128
(99.7% and 99.8% of U). Below about log2(U) examples every pattern occurs and the count says nothing
about the network; well above it, it is close to the neuron count U. The host-side finish warns when
the count reaches 2^B, and when it reaches 99% of U (``NEAR_U``; it then ranks networks by their
neuron count, as at the authors' 128 examples here). The value is kept: it is what the definition gives.

Counting runs on the device before the one host sync: each pattern is packed into 63-bit words, the
words are sorted lexicographically (stable sorts, last word first) and the changes counted.
"""
import warnings
from typing import Tuple

import numpy as np
import torch

from vitcore.proxies.base import Context, Proxy, activation_codes

_WORD = 63  # pattern bits per int64 word (the sign bit unused)


def pack_patterns(active: torch.Tensor) -> torch.Tensor:
    """(B, U) bools -> (U, ceil(B/63)) int64 words, bit b of word w = example 63·w + b."""
    B, U = active.shape
    words = []
    for start in range(0, B, _WORD):
        word = torch.zeros(U, dtype=torch.long, device=active.device)  # (U,)
        for bit, row in enumerate(active[start:start + _WORD]):  # one example at a time: O(U) memory
            word |= row.long() << bit
        words.append(word)
    return torch.stack(words, 1)  # (U, W)


def count_distinct_rows(words: torch.Tensor) -> torch.Tensor:
    """Number of distinct rows of an (U, W) int64 matrix, as a 0-d int64 tensor, without a host sync
    (0 for U = 0: no neuron, no pattern)."""
    order = torch.arange(words.shape[0], device=words.device)
    for w in reversed(range(words.shape[1])):  # least significant word first: a stable radix sort
        order = order[torch.sort(words[order, w], stable=True).indices]
    rows = words[order]  # (U, W) sorted lexicographically
    return min(words.shape[0], 1) + (rows[1:] != rows[:-1]).any(1).sum()  # the first row, then each change


def swap_reduce(active: torch.Tensor) -> torch.Tensor:
    """SWAP of a (B, U) boolean activity matrix (examples x neurons); 0-d float64."""
    return count_distinct_rows(pack_patterns(active)).double()


def pattern_bounds(active: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """B and U of a (B, U) activity matrix as 0-d float64 tensors on its device (fills, no
    host-to-device copy): the count's two bounds are 2^B and U."""
    return tuple(torch.full((), float(n), dtype=torch.float64, device=active.device) for n in active.shape)


NEAR_U = 0.99  # the share of U above which the count is reported as ranking by the neuron count


def warn_if_saturated(name: str, count: float, B: float, U: float) -> None:
    """Warn when ``count`` distinct patterns of ``B`` examples on ``U`` neurons is at either bound: 2^B
    (every pattern occurs) or at least ``NEAR_U`` of U (nearly every neuron has a pattern of its own,
    so the count is the network's neuron count less a few coincidences)."""
    if B < 1000 and count == 2.0 ** B:
        warnings.warn(f"{name}: {count:.0f} = 2^{B:.0f} distinct patterns, every pattern of the batch's "
                      f"{B:.0f} examples occurs: the count is saturated and cannot rank networks; use "
                      "more examples (the SWAP authors use 128 on Transformers)", RuntimeWarning)
    elif U > 0 and count >= NEAR_U * U:
        warnings.warn(f"{name}: {count:.0f} distinct patterns are {count / U:.1%} of the {U:.0f} neurons: "
                      "nearly every neuron has a pattern of its own, so the count ranks networks by their "
                      "number of activation neurons", RuntimeWarning)


def _reduce(ctx: Context) -> Tuple[torch.Tensor, torch.Tensor]:
    active = torch.cat(activation_codes(ctx, "swap"), 1)  # (B, U): every activation call's neurons side by side
    return (torch.where(ctx.data.codes_nan, torch.nan, swap_reduce(active)), *pattern_bounds(active))


def _finish(values: Tuple[np.ndarray, np.ndarray, np.ndarray]) -> float:
    count, B, U = (float(v) for v in values)
    warn_if_saturated("swap", count, B, U)
    return count


PROXY = Proxy(name="swap", passes=("data",), taps=("codes",), reduce=_reduce, finish=_finish)

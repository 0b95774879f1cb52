"""swap: SWAP, sample-wise activation patterns (Peng et al., "SWAP-NAS: Sample-Wise Activation Patterns
for Ultra-fast NAS", ICLR 2024).

    SWAP = |{ (1[a_1u > 0], ..., 1[a_Bu > 0]) : u a neuron }|

the number of distinct patterns that the B examples of a batch draw on the network's neurons: each
neuron u of every activation layer has a B-bit pattern saying on which examples it is active, and
SWAP counts the distinct patterns. It is at most min(#neurons, 2^B).

Choices, following the authors' code (pym1024/SWAP, ``SampleWiseActivationPatterns``) where the
paper leaves them open:
- A neuron is one element of an activation layer's output per example: the authors flatten a ReLU's
  (B, C, H, W) output to (B, C·H·W) and concatenate the layers. A ViT's activations are the MLPs'
  GELUs; their (B, N', hidden) inputs give N'·hidden neurons per block, the class token's included.
  The patterns come from the data pass's "codes" tap (every ReLU/GELU module's input > 0), the one
  nwot reads; a NaN input to an activation gives NaN.
- Active means a positive pre-activation: the authors take sign(ReLU(x)), which is 1 exactly where
  x > 0; GELU(x) > 0 exactly where x > 0 too.
- The paper's regularised SWAP multiplies by exp(-(params - μ)²/σ) with μ, σ set from the search
  space's parameter counts; that needs the population, not one network, and is not applied here.

With B examples the count saturates at 2^B: at 224², every AutoFormer-Tiny network has over a
million GELU neurons, so a batch of 16 or fewer (65,536 patterns) leaves little room between
networks. Counting runs on the device before the one host sync: each pattern is packed into 63-bit
words, the words are sorted lexicographically (stable sorts, last word first) and the changes counted.
"""
import torch

from vitcore.proxies.base import Context, Proxy

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
    """Number of distinct rows of an (U, W) int64 matrix, as a 0-d int64 tensor, without a host sync."""
    order = torch.arange(words.shape[0], device=words.device)
    for w in reversed(range(words.shape[1])):  # least significant word first: a stable radix sort
        order = order[torch.sort(words[order, w], stable=True).indices]
    rows = words[order]  # (U, W) sorted lexicographically
    return 1 + (rows[1:] != rows[:-1]).any(1).sum()


def swap_reduce(active: torch.Tensor) -> torch.Tensor:
    """SWAP of a (B, U) boolean activity matrix (examples x neurons); 0-d float64."""
    return count_distinct_rows(pack_patterns(active)).double()


def _reduce(ctx: Context) -> torch.Tensor:
    active = torch.cat(ctx.data.codes, 1)  # (B, U): every activation call's neurons side by side
    return torch.where(ctx.data.codes_nan, torch.nan, swap_reduce(active))


PROXY = Proxy(name="swap", passes=("data",), taps=("codes",), reduce=_reduce)

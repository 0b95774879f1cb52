"""Zero-cost proxies (Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS", ICLR 2021), one
unit per proxy (``vitcore/proxies/<name>.py``), listed in ``vitcore.proxies.registry``, scored by
``vitcore.proxies.plan.score`` with the fewest passes and one host sync.

Notation: θ_t a counted parameter tensor, g_t = dL/dθ_t for L the batch's mean loss at
initialisation. ``params="all"`` counts every trainable tensor (the textbook formulas);
``params="weights"`` only the weights of Linear and Conv layers, as foresight (SamsungLabs'
zero-cost-nas) does. Each proxy's file gives its formula and paper.

Where vitcore departs from foresight, on purpose:
- fisher reduces over the tokens of (B, N', C) activations and keeps channels; foresight sums every
  axis after the second, which for a transformer sums the channels and keeps the tokens.
- synflow runs in eval mode, BatchNorm a fixed affine map (foresight strips BatchNorm).
- every module is scored in train mode (foresight keeps the mode a network is passed in).
- nwot reads the inputs of ReLU *and* GELU modules (NASLib hooks ReLU only, so a GELU ViT scores a
  constant); the ViT's MLP applies its GELU as a module, so its pre-activations count.
- Scores do not depend on how a batch is chunked to fit memory (foresight multiplies grad_norm by
  the number of chunks when it retries after running out of memory), except with BatchNorm.
- A tensor shared by several modules counts once (foresight's loop counts it once per module).
- zico uses the two halves of the one batch as its two minibatches, layer weights only.

``vitcore.compat.find_measures`` gives foresight's definitions under its names (docs/foresight.md).
"""
from vitcore.proxies.base import Context, Proxy
from vitcore.proxies.grad_norm import GRAD_NORM_MODES
from vitcore.proxies.plan import PARAM_SETS, ProxyFailed, check_proxies, score
from vitcore.proxies.registry import PROXIES, REGISTRY, UNITS

__all__ = ["Context", "Proxy", "GRAD_NORM_MODES", "PARAM_SETS", "ProxyFailed", "check_proxies", "score", "PROXIES",
           "REGISTRY", "UNITS"]

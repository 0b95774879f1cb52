"""flops: forward FLOPs per example (matrix products and convolutions, 2 per multiply-add), counted
by ``torch.utils.flop_counter.FlopCounterMode`` on one example in eval mode; a baseline."""
import torch
from torch.utils.flop_counter import FlopCounterMode

from vitcore.ops.dispatch import eager
from vitcore.proxies.base import Context, Proxy


def _host(ctx: Context) -> float:
    ctx.model.eval()  # one example: BatchNorm must use its running statistics
    with eager(), torch.no_grad(), FlopCounterMode(display=False) as counter:
        ctx.model(ctx.inputs[:1])
    ctx.model.train()
    return float(counter.get_total_flops())


PROXY = Proxy(name="flops", host=_host)

"""params: the number of trainable parameters, a baseline every proxy should beat."""
from vitcore.proxies.base import Context, Proxy


def _host(ctx: Context) -> float:
    return float(sum(p.numel() for p in ctx.model.parameters() if p.requires_grad))


PROXY = Proxy(name="params", host=_host)

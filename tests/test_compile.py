"""torch.compile traces through flash attention (custom ops with fake implementations): a compiled
small ViT matches the eager model's output and every parameter's gradient."""
import pytest
import torch
from torch._dynamo.testing import AotEagerAndRecordGraphs

from conftest import DEVICE

import vitcore
from vitcore.model import ViTConfig

# A small ViT: N' = 17 tokens (odd), d = 16, two blocks with different head counts.
CONFIG = ViTConfig(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=32, depth=2, num_heads=(2, 1))


def _output_and_grads(model, x):
    out = model(x)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    return out, grads


@pytest.mark.filterwarnings("ignore:Your compiler for AOTAutograd")  # the recording backend's own
@pytest.mark.parametrize("kernels", ["triton", "eager"])
def test_compiled_vit_matches_eager(kernels, request):
    if kernels == "triton":
        request.getfixturevalue("triton_on")  # interpreted on CPU
    else:
        request.getfixturevalue("triton_off")
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = vitcore.ViT(CONFIG).to(DEVICE)
    x = torch.randn(3, 3, 16, 16, device=DEVICE)
    eager_out, eager_grads = _output_and_grads(model, x)
    backend = AotEagerAndRecordGraphs()  # aot_eager, keeping the forward and backward graphs
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    out, grads = _output_and_grads(compiled, x)
    fwd = "".join(g.code for g in backend.fw_graphs)
    bwd = "".join(g.code for g in backend.bw_graphs)
    if kernels == "triton":  # the kernels are in the traced graphs as the registered custom ops
        assert fwd.count("vitcore.flash_attention_fwd") == CONFIG.depth
        assert bwd.count("vitcore.flash_attention_bwd") == CONFIG.depth
    else:
        assert "vitcore" not in fwd + bwd
    torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-6)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_the_custom_ops_are_registered_with_fake_shapes():
    q = torch.empty(2, 3, 17, 16, device="meta")
    o, stats = torch.ops.vitcore.flash_attention_fwd(q, q, q, 0.25)
    assert o.shape == (2, 3, 17, 16) and o.transpose(1, 2).is_contiguous() and stats.shape == (2, 3, 2, 17)
    assert stats.dtype == torch.float32
    dq, dk, dv = torch.ops.vitcore.flash_attention_bwd(o, q, q, q, o, stats, 0.25)
    assert all(t.shape == q.shape and t.transpose(1, 2).is_contiguous() for t in (dq, dk, dv))

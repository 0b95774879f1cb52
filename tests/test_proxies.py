import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, requires_cuda

import vitcore
from vitcore.model import ViT, ViTConfig

CFG = ViTConfig(img_size=8, patch_size=4, in_chans=1, num_classes=5, embed_dim=12, depth=2,
                num_heads=[1, 3], mlp_ratio=[2.0, 1.5], head_dim=5)


def _loop_reference(model, x, y):
    """The straightforward per-parameter loop, in float64 on a float64 copy of the model."""
    model64 = ViT(model.config).double()
    model64.load_state_dict(model.state_dict())
    for p64, p in zip(model64.parameters(), model.parameters()):
        p64.requires_grad_(p.requires_grad)
    loss = F.cross_entropy(model64(x.double()), y)
    loss.backward()
    g2 = [p.grad.pow(2).sum().item() for p in model64.parameters() if p.grad is not None]
    gw = [(p.grad * p).sum().item() for p in model64.parameters() if p.grad is not None]
    snip = sum((p.grad * p).abs().sum().item() for p in model64.parameters() if p.grad is not None)
    return {
        "global": math.sqrt(sum(g2)),
        "per_layer": sum(math.sqrt(v) for v in g2),
        "snip": snip,
        "plain": sum(gw),
    }


@pytest.fixture(params=["triton_off", "triton_on"])
def dispatch(request):
    request.getfixturevalue(request.param)


@pytest.mark.parametrize("batch", [1, 7])
def test_score_matches_float64_loop(batch, dispatch):
    torch.manual_seed(batch)
    model = ViT(CFG)
    x, y = torch.randn(batch, 1, 8, 8), torch.randint(0, 5, (batch,))
    ref = _loop_reference(model, x, y)
    model, x, y = model.to(DEVICE), x.to(DEVICE), y.to(DEVICE)  # the kernels run where the tests do
    glob = vitcore.score(model, x, y, proxies=("grad_norm", "snip", "plain"))
    per_layer = vitcore.score(model, x, y, proxies=["grad_norm", "snip"], mode="per_layer")
    assert list(glob) == ["grad_norm", "snip", "plain"]
    assert all(isinstance(v, float) for v in glob.values())
    rel = 1e-6 if DEVICE == "cpu" else 1e-4  # CPU: ~5e-8 measured; a GPU's convolution runs in TF32
    assert glob["grad_norm"] == pytest.approx(ref["global"], rel=rel)
    assert per_layer["grad_norm"] == pytest.approx(ref["per_layer"], rel=rel)
    assert glob["snip"] == pytest.approx(ref["snip"], rel=rel) == per_layer["snip"]
    assert glob["plain"] == pytest.approx(ref["plain"], rel=1e-3, abs=1e-6)


def test_frozen_and_unused_parameters_are_skipped_and_state_is_kept():
    torch.manual_seed(0)
    model = ViT(CFG).eval()
    model.head.bias.requires_grad_(False)
    model.unused = torch.nn.Parameter(torch.ones(3))  # gets no gradient
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 5, (4,))
    model.patch_embed.weight.grad = torch.full_like(model.patch_embed.weight, 123.0)
    got = vitcore.score(model, x, y, proxies=["grad_norm"])
    del model.unused
    ref = _loop_reference(model, x, y)  # head.bias stays frozen in the copy
    assert got["grad_norm"] == pytest.approx(ref["global"], rel=1e-4)
    assert not model.training
    assert torch.all(model.patch_embed.weight.grad == 123.0)  # .grad neither read nor changed
    assert model.head.weight.grad is None


def test_bad_arguments_name_the_value():
    model, x, y = ViT(CFG), torch.randn(2, 1, 8, 8), torch.randint(0, 5, (2,))
    with pytest.raises(ValueError, match="unknown proxy 'synflo'; valid: grad_norm, snip"):
        vitcore.score(model, x, y, proxies=["synflo"])
    with pytest.raises(ValueError, match="mode='layer'"):
        vitcore.score(model, x, y, mode="layer")
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        vitcore.score(model, x, y)


@requires_cuda
def test_score_syncs_with_the_host_once():
    model = ViT(CFG).cuda()
    x, y = torch.randn(4, 1, 8, 8, device="cuda"), torch.randint(0, 5, (4,), device="cuda")
    vitcore.score(model, x, y)  # warm up: compile kernels, allocate
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            vitcore.score(model, x, y, proxies=["grad_norm", "snip", "plain"])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == 1, [str(w.message) for w in syncs]

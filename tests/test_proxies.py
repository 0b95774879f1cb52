import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, requires_cuda
from proxy_helpers import TF32, U, batch, bn_net, bound64, macs, small_mlp, small_vit
from test_proxy_jacob_cov import reference as jacob_cov_reference

import vitcore
from vitcore.model import ViT, ViTConfig

CFG = ViTConfig(img_size=8, patch_size=4, in_chans=1, num_classes=5, embed_dim=12, depth=2,
                num_heads=[1, 3], mlp_ratio=[2.0, 1.5], head_dim=5)


def fp32_bound(model, batch):
    """Relative bound for an fp32 score against float64: a few u·sqrt(n) for the forward and backward's
    n multiply-adds (rounding errors of long reductions grow like sqrt(n)); u is TF32's on a GPU,
    whose convolutions and matmuls round their inputs to 10 mantissa bits by default."""
    u = U[torch.float32] if DEVICE == "cpu" else TF32
    return 8 * u * math.sqrt(3 * macs(model, batch))


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
    rel = fp32_bound(model, batch)
    assert glob["grad_norm"] == pytest.approx(ref["global"], rel=rel, abs=0)
    assert per_layer["grad_norm"] == pytest.approx(ref["per_layer"], rel=rel, abs=0)
    assert glob["snip"] == pytest.approx(ref["snip"], rel=rel, abs=0) == per_layer["snip"]
    assert abs(glob["plain"] - ref["plain"]) <= rel * ref["snip"]  # signed: relative to Σ|g·θ|


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
    assert got["grad_norm"] == pytest.approx(ref["global"], rel=fp32_bound(model, 4), abs=0)
    assert not model.training
    assert torch.all(model.patch_embed.weight.grad == 123.0)  # .grad neither read nor changed
    assert model.head.weight.grad is None


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


def test_fp32_scores_track_the_float64_reference(triton_on):
    """The fast path: a float32 ViT through the Triton kernels against the float64 references.
    zico divides by spreads of two gradients, which cancellation makes less accurate: its bound is
    the same per element, times the worst (|g1| + |g2|) / |g1 - g2| the float64 halves show."""
    from test_proxy_fisher import reference as fisher_ref
    from test_proxy_grasp import reference as grasp_ref
    from test_proxy_synflow import reference as synflow_ref
    from test_proxy_zico import reference as zico_ref

    torch.manual_seed(1)
    model = small_vit()
    x, y = batch(8, seed=2, dtype=torch.float32)
    got = vitcore.score(model.to(DEVICE), x.to(DEVICE), y.to(DEVICE),
                        proxies=["grad_norm", "snip", "grasp", "synflow", "fisher", "zico"])
    model, x64 = model.cpu(), x.double()
    ref = _loop_reference(model, x, y)
    rel = fp32_bound(model, 8)
    assert got["grad_norm"] == pytest.approx(ref["global"], rel=rel, abs=0)
    assert got["snip"] == pytest.approx(ref["snip"], rel=rel, abs=0)
    grasp, grasp_scale = grasp_ref(model, x64, y, "all")
    assert abs(got["grasp"] - grasp) <= 2 * rel * grasp_scale  # double backward: twice the work
    assert got["synflow"] == pytest.approx(synflow_ref(model, "all"), rel=1e-12, abs=0)  # float64 pass
    assert got["fisher"] == pytest.approx(fisher_ref(model, x64, y), rel=rel, abs=0)
    zico, zico_tol = zico_ref(model, x64, y, base=rel)
    assert abs(got["zico"] - zico) <= zico_tol


@pytest.mark.parametrize("targets, message", [
    (torch.full((6,), -100), r"targets hold 6 class indices outside 0..2 for the model's 3 outputs \(min -100, max -100\)"),
    (torch.tensor([0, 1, -100, 2, -100, 1]), r"targets hold 2 class indices outside 0..2 .*ignore_index \(-100\) is not supported"),
    (torch.tensor([0, 1, 3, 2, 0, 1]), r"targets hold 1 class indices outside 0..2 .*\(min 0, max 3\)"),
    (torch.tensor([0, 1, -1, 2, 0, 1]), r"targets hold 1 class indices outside 0..2 .*\(min -1, max 2\)"),
])
@pytest.mark.parametrize("chunks", [1, 2])
@pytest.mark.parametrize("proxies", [["grad_norm"], ["grasp", "zico"], ["fisher", "nwot"]])
def test_bad_class_indices_are_refused(targets, message, chunks, proxies, triton_off):
    """-100 (cross_entropy's ignore_index) used to give 0.0 scores, or depend on the chunks; an index
    past the classes raised torch's IndexError (a CUDA device assert on a GPU)."""
    x, _ = batch(6, seed=3)
    with pytest.raises(ValueError, match=message):
        vitcore.score(bn_net().double(), x, targets, proxies=proxies, chunks=chunks)


@pytest.mark.parametrize("targets, error, message", [
    (torch.tensor(1), ValueError, r"targets is 0-d \(tensor\(1\)\); give one target per example, shape \(B,\) = \(6,\)"),
    (torch.zeros(6, dtype=torch.int32), TypeError, "targets.dtype=torch.int32: class indices must be torch.int64"),
    (torch.zeros(6, dtype=torch.bool), TypeError, "targets.dtype=torch.bool"),
    (torch.zeros(6), ValueError, r"floating targets of shape \(6,\): cross_entropy takes class probabilities"),
    (torch.zeros(5, dtype=torch.long), ValueError, "inputs hold 6 examples and targets 5"),
    (torch.full((6, 4), 0.25), ValueError, r"class probabilities of shape \(6, 4\) for the model's outputs of shape \(6, 3\)"),
    ([0, 1, 2, 0, 1, 2], TypeError, "targets must be a torch.Tensor, got list"),
    (torch.zeros(6, 1, dtype=torch.long), ValueError, r"int64 targets of shape \(6, 1\): class indices have shape"),
    (torch.eye(6, 3, dtype=torch.long), ValueError, r"int64 targets of shape \(6, 3\): .*one-hot or soft labels"),
])
def test_bad_targets_name_the_value(targets, error, message, triton_off):
    x, _ = batch(6, seed=4, dtype=torch.float32)
    with pytest.raises(error, match=message):
        vitcore.score(bn_net(), x, targets)


def test_class_probabilities_are_accepted(triton_off):
    """Soft targets (B, C) give cross_entropy's soft-label loss; one-hot rows equal the class indices."""
    model = bn_net().double()
    x, y = batch(6, seed=5, classes=3)
    soft = F.one_hot(y, 3).double()
    assert vitcore.score(model, x, soft) == vitcore.score(model, x, y)


@pytest.mark.parametrize("call, error, message", [
    (lambda m, x, y: vitcore.score(None, x, y), TypeError, "model must be a torch.nn.Module, got NoneType"),
    (lambda m, x, y: vitcore.score(m, x.numpy(), y), TypeError, "inputs must be a torch.Tensor, got ndarray"),
    (lambda m, x, y: vitcore.score(m, x.long(), y), TypeError, "inputs.dtype=torch.int64: expected a floating dtype"),
    (lambda m, x, y: vitcore.score(m, x.to_sparse(), y), TypeError, "inputs.layout=torch.sparse_coo: expected a dense"),
    (lambda m, x, y: vitcore.score(m, x, y.to_sparse()), TypeError,
     "targets.layout=torch.sparse_coo: expected a dense"),
    (lambda m, x, y: vitcore.score(m, x.double(), y), TypeError,
     "inputs.dtype=torch.float64 and the model's parameters are torch.float32"),
    (lambda m, x, y: vitcore.score(m, x[0, 0, 0, 0], y), ValueError, r"inputs of shape \(\) hold no examples"),
    (lambda m, x, y: vitcore.score(m, x, y, loss_fn="ce"), TypeError, "loss_fn='ce' must be callable"),
    (lambda m, x, y: vitcore.score(m, x, y, loss_fn=lambda a, b: a), ValueError,
     r"loss_fn returned a tensor of shape \(4, 5\): it must return the mean loss"),
    (lambda m, x, y: vitcore.score(m, x, y, proxies=["grasp"], chunks=2,
                                   loss_fn=lambda a, b: F.cross_entropy(a, b, reduction="none")), ValueError,
     r"loss_fn returned a tensor of shape \(2,\)"),
    (lambda m, x, y: vitcore.score(m, x, y, loss_fn=lambda a, b: 1.0), TypeError, "loss_fn returned a float"),
    (lambda m, x, y: vitcore.score(m, x, y, proxies=3), TypeError, "proxies=3 must be a proxy name or a list"),
    (lambda m, x, y: vitcore.score(m, x, y, proxies=[]), ValueError, "proxies is empty; valid: grad_norm"),
    (lambda m, x, y: vitcore.score(m, x, y, proxies=["synflo"]), ValueError, "unknown proxy 'synflo'; valid: grad_norm, snip"),
    (lambda m, x, y: vitcore.score(m, x, y, mode="layer"), ValueError, "mode='layer'; valid: global, per_layer"),
    (lambda m, x, y: vitcore.score(m, x, y, params="bias"), ValueError, "params='bias'; valid: all, weights"),
    (lambda m, x, y: vitcore.score(m, x, y, chunks=5), ValueError, r"chunks=5 must be an int in 1..4"),
    (lambda m, x, y: vitcore.score(m, x, y, chunks=2.0), ValueError, r"chunks=2.0 must be an int in 1..4"),
    (lambda m, x, y: vitcore.score(m, x[:1], y[:1], proxies=["zico"]), ValueError, "zico needs at least 2 examples"),
    (lambda m, x, y: vitcore.score(m, x, y[:3]), ValueError, "inputs hold 4 examples and targets 3"),
    (lambda m, x, y: vitcore.score(m, x, y.to("meta")), ValueError, "targets are on meta and inputs on cpu"),
    (lambda m, x, y: vitcore.score(m.to("meta"), x, y), ValueError, "the model's parameters are on the meta device"),
    (lambda m, x, y: vitcore.score(m.requires_grad_(False), x, y), ValueError,
     "the model has no trainable parameters for params='all'"),
])
def test_bad_arguments_name_the_value(call, error, message, triton_off):
    model, (x, y) = small_vit(), batch(4, seed=6, dtype=torch.float32)
    with pytest.raises(error, match=message):
        call(model, x, y)


def test_inside_inference_mode_is_refused(triton_off):
    model, (x, y) = small_vit(), batch(4, seed=7, dtype=torch.float32)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="outside torch.inference_mode"):
        vitcore.score(model, x, y)


@pytest.mark.parametrize("proxies", [["params"], ["grad_norm", "nwot", "synflow"]])
def test_non_finite_inputs_are_refused(proxies, triton_off):
    x, y = batch(6, seed=8, dtype=torch.float32)
    x[2, 0, 3, 3], x[4, 0, 0, 0] = float("nan"), float("-inf")
    with pytest.raises(ValueError, match="inputs hold 2 NaN or infinite values of 384"):
        vitcore.score(small_mlp(), x, y, proxies=proxies)


def _summed(logits, targets):
    return F.cross_entropy(logits, targets, reduction="sum")


class _Scaled(torch.nn.Module):
    """A loss module that divides a sum by a fixed number instead of the batch size."""

    def forward(self, logits, targets):
        return F.cross_entropy(logits, targets, reduction="sum") / 4


@pytest.mark.parametrize("loss_fn", [_summed, torch.nn.CrossEntropyLoss(reduction="sum"), _Scaled()])
@pytest.mark.parametrize("chunks", [1, 2])
@pytest.mark.parametrize("proxies", [["grad_norm"], ["zico"], ["grasp", "fisher"], ["lswag"], ["nwot"]])
def test_a_loss_that_does_not_average_is_refused(loss_fn, chunks, proxies, triton_off):
    """reduction="sum" made every gradient proxy scale with chunks (grad_norm 62.2 at chunks=1, 31.1 at
    chunks=2); the loss is probed on the first chunk's logits once and twice over (issue 26, case 2)."""
    model, (x, y) = small_vit(), batch(4, seed=11, dtype=torch.float32, classes=5)
    with pytest.raises(ValueError, match=r"loss_fn=.* does not average over the examples: on the first "
                                         r"(\d) examples it gives [\d.]+, on the same \1 "
                                         r"examples taken twice [\d.]+ .*reduction='mean'"):
        vitcore.score(model, x, y, loss_fn=loss_fn, proxies=proxies, chunks=chunks)


def test_an_averaging_loss_of_the_callers_is_accepted_and_split_invariant(triton_off):
    """A mean loss of the caller's (label smoothing, a module) passes the probe, and its scores do not
    depend on chunks (float64: equal to a few ulps)."""
    model, (x, y) = small_vit().double(), batch(4, seed=12, classes=5)
    for loss_fn in (lambda a, b: F.cross_entropy(a, b, label_smoothing=0.1), torch.nn.CrossEntropyLoss()):
        one, two = (vitcore.score(model, x, y, loss_fn=loss_fn, proxies=["grad_norm", "snip", "grasp"], chunks=c)
                    for c in (1, 2))
        for name in one:
            assert two[name] == pytest.approx(one[name], rel=1e-12, abs=1e-300)


def _probabilities(seed=13, rows=6, classes=3, dtype=torch.float64):
    return torch.softmax(torch.randn(rows, classes, generator=torch.Generator().manual_seed(seed), dtype=dtype), 1)


def _with(p, row, col, value):
    p = p.clone()
    p[row, col] = value
    return p


@pytest.mark.parametrize("targets, message", [
    (_with(_probabilities(), 2, 1, float("nan")), r"targets hold 1 rows of 6 that are not class probabilities: "
                                                  r"finite, >= 0, each row summing to 1 within 6.7e-16; the first is "
                                                  r"row 2 \(smallest entry nan, sum nan\)"),
    (_with(_probabilities(), 4, 0, float("inf")), r"targets hold 1 rows of 6 .* the first is row 4 \(.*sum inf\)"),
    (torch.tensor([[1.0, 0.0, 0.0]] * 5 + [[1.25, -0.25, 0.0]], dtype=torch.float64),
     r"targets hold 1 rows of 6 .* row 5 \(smallest entry -0.25, sum 1\)"),
    (_probabilities() * 2, r"targets hold 6 rows of 6 .* row 0 \(smallest entry [\d.]+, sum 2\)"),
    (_with(_probabilities(), 3, 2, 0.0), r"targets hold 1 rows of 6 .* row 3 \(smallest entry 0, sum 0\.\d+\)"),
])
@pytest.mark.parametrize("chunks", [1, 3])
def test_soft_targets_that_are_not_probabilities_are_refused(targets, message, chunks, triton_off):
    """NaN rows gave NaN scores, negative "probabilities" and rows not summing to 1 were accepted (issue 26,
    case 6); the check runs on the device and is read with the one host sync."""
    x, _ = batch(6, seed=14, classes=3)
    with pytest.raises(ValueError, match=message):
        vitcore.score(bn_net().double(), x, targets, proxies=["grad_norm", "nwot"], chunks=chunks)


def test_probability_rows_rounded_in_their_dtype_are_accepted(triton_off):
    """A softmax rounded to fp32 sums to 1 within C · eps(fp32): accepted; 10 · C · eps off is refused."""
    model, (x, _) = small_mlp(), batch(6, seed=15, dtype=torch.float32)
    soft = _probabilities(seed=16, classes=5, dtype=torch.float32)
    assert math.isfinite(vitcore.score(model, x, soft)["grad_norm"])
    decimal = torch.tensor([[0.1, 0.2, 0.3, 0.15, 0.25]] * 6)  # none of them exact in binary
    assert math.isfinite(vitcore.score(model, x, decimal)["grad_norm"])
    eps = torch.finfo(torch.float32).eps
    with pytest.raises(ValueError, match=r"targets hold 1 rows of 6 .* within 6e-07; the first is row 1"):
        vitcore.score(model, x, _with(decimal, 1, 4, 0.25 + 50 * eps))


def test_targets_of_a_callers_loss_need_only_be_finite(triton_off):
    """With a loss of the caller's, floating targets may be any finite values (regression), not NaN."""
    model, (x, _) = small_mlp(), batch(6, seed=17, dtype=torch.float32)

    def mse(logits, targets):
        return F.mse_loss(logits, targets)

    out = model(x).shape[1]
    targets = torch.randn(6, out) * 5  # negative, rows not summing to 1: fine for a regression loss
    assert math.isfinite(vitcore.score(model, x, targets, loss_fn=mse)["grad_norm"])
    with pytest.raises(ValueError, match=r"targets hold 1 rows of 6 that are not finite values; the first is row 3"):
        vitcore.score(model, x, _with(targets, 3, 0, float("nan")), loss_fn=mse)


class _Returns(torch.nn.Module):
    """Wraps a model and returns what ``wrap`` makes of its logits."""

    def __init__(self, model, wrap):
        super().__init__()
        self.model, self.wrap = model, wrap

    def forward(self, x):
        return self.wrap(self.model(x))


@pytest.mark.parametrize("wrap, error, message", [
    (lambda z: (z,), TypeError, r"the model returned a tuple, not a tensor of logits \(B, C\): wrap it"),
    (lambda z: {"logits": z}, TypeError, r"the model returned a dict, not a tensor of logits .*model\(x\).logits"),
    (lambda z: z[..., None], ValueError, r"the model returned logits of shape \((4|2), 5, 1\): expected \((4|2), C\)"),
    (lambda z: z[:1], ValueError, r"the model returned a tensor of shape \(1, 5\) for (4|2) examples"),
    (lambda z: z.argmax(1), TypeError, r"the model returned logits of dtype torch.int64"),
    (lambda z: z[:, :0], ValueError, r"the model returned logits of shape \((4|2), 0\): no class scores"),
])
@pytest.mark.parametrize("proxies", [["grad_norm"], ["jacob_cov", "zico"], ["grasp"], ["nwot"]])
def test_a_model_output_that_is_not_logits_is_named(wrap, error, message, proxies, triton_off):
    """A Hugging Face-style tuple or ModelOutput, or logits (B, C, 1), failed inside torch (issue 26,
    case 12): refused with the type or shape that came back, and a tuple is never silently unpacked."""
    model, (x, y) = _Returns(small_vit(), wrap), batch(4, seed=18, dtype=torch.float32, classes=5)
    with pytest.raises(error, match=message):
        vitcore.score(model, x, y, proxies=proxies, chunks=2 if "zico" in proxies else 1)


@pytest.mark.parametrize("wrap, name", [(lambda z: (z,), "tuple"), (lambda z: {"logits": z}, "dict")])
def test_synflow_names_a_model_output_that_is_not_a_tensor(wrap, name, triton_off):
    """synflow sums the outputs (any shape), so it refuses only what is not a tensor."""
    model, (x, y) = _Returns(small_vit(), wrap), batch(4, seed=19, dtype=torch.float32, classes=5)
    with pytest.raises(TypeError, match=f"the model returned a {name}, not a tensor of logits"):
        vitcore.score(model, x, y, proxies=["synflow"])
    column = _Returns(small_vit(), lambda z: z[..., None])  # (B, C, 1): synflow sums it all
    assert math.isfinite(vitcore.score(column, x, y, proxies=["synflow"])["synflow"])


class _Scales(torch.nn.Module):
    """small_mlp after ``x.mul_(3).sub_(1)`` on its input (``in_place``) or the same out of place."""

    def __init__(self, in_place):
        super().__init__()
        self.net, self.in_place = small_mlp(), in_place

    def forward(self, x):
        return self.net(x.mul_(3).sub_(1) if self.in_place else x * 3 - 1)


def test_a_model_that_changes_its_input_in_place_changes_no_score_and_not_the_callers_batch(triton_off):
    """vitcore score hands one batch to every architecture: a model writing into its input corrupted
    the scores of every later one (round four, case 1). Each pass reads an untouched copy."""
    torch.manual_seed(5)
    in_place, out_of_place = _Scales(True), _Scales(False)
    out_of_place.load_state_dict(in_place.state_dict())
    x, y = batch(6, seed=21, dtype=torch.float32, classes=5)
    kept = x.clone()
    proxies = ["grad_norm", "snip", "zico", "synflow", "nwot", "fisher", "grasp", "jacob_cov"]
    got = vitcore.score(in_place, x, y, proxies=proxies, chunks=2)
    assert torch.equal(x, kept)
    assert got == vitcore.score(out_of_place, x, y, proxies=proxies, chunks=2)
    assert got == vitcore.score(in_place, x, y, proxies=proxies, chunks=2)  # the second call reads the same x


def test_a_model_without_relu_or_gelu_modules_fails_nwot_and_swap_only(triton_off):
    """F.relu is no module, so nwot and swap have no codes: they fail with that reason, and the proxies
    of the same pass are still scored (round four, case 4: every proxy was lost)."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5))
    x, y = batch(4, seed=22, dtype=torch.float32, classes=5)
    with pytest.raises(vitcore.ProxyFailed) as e:
        vitcore.score(model, x, y, proxies=["grad_norm", "nwot", "swap"])
    assert math.isfinite(e.value.scores["grad_norm"]) and math.isnan(e.value.scores["nwot"])
    assert set(e.value.errors) == {"nwot", "swap"}
    assert e.value.errors["nwot"].startswith("ValueError: nwot reads the inputs of nn.ReLU / nn.GELU modules, "
                                             "and the model ran none")


class _BareMatmul(torch.nn.Module):
    """Logits from a bare parameter: no Linear or Conv layer for fisher and zico to read."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(64, 5, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        return x.flatten(1) @ self.w  # (B, 5)


@pytest.mark.parametrize("alone", [True, False])
def test_a_model_without_layers_fails_fisher_and_zico_whatever_else_is_asked(triton_off, alone):
    """fisher raised autograd's "grad() cannot be empty" alone and was 0.0 beside grad_norm, zico was 0.0:
    both now fail with the reason, and a proxy asked for beside them keeps its value."""
    x, y = batch(4, seed=24, dtype=torch.float32, classes=5)
    proxies = ["fisher", "zico"] if alone else ["grad_norm", "fisher", "zico"]
    with pytest.raises(vitcore.ProxyFailed) as e:
        vitcore.score(_BareMatmul(), x, y, proxies=proxies)
    assert set(e.value.errors) == {"fisher", "zico"}
    assert e.value.errors["fisher"].startswith("ValueError: fisher reads the outputs of nn.Linear / nn.Conv layers")
    assert e.value.errors["zico"].startswith("ValueError: zico reads the gradients of nn.Linear / nn.Conv weights")
    if not alone:
        assert e.value.scores["grad_norm"] == vitcore.score(_BareMatmul(), x, y, proxies=["grad_norm"])["grad_norm"]


class _FirstLayerUnderNoGrad(torch.nn.Module):
    """small_mlp's first Linear run under torch.no_grad() inside forward (a frozen stem)."""

    def __init__(self, mlp):
        super().__init__()
        self.mlp = mlp

    def forward(self, x):
        with torch.no_grad():
            h = self.mlp[1](self.mlp[0](x))
        return self.mlp[2:](h)


def test_frozen_weights_change_no_proxy_but_what_their_gradients_add(triton_off):
    """Freezing the first Linear (requires_grad False) takes its weights out of grad_norm and snip: they equal
    those of the network after it, fed its output. fisher reads activations, not weights: it equals the
    unfrozen network's, alone or beside jacob_cov (fisher raised autograd's "One of the differentiated
    Tensors does not require grad" alone, and counted the layer only beside jacob_cov)."""
    mlp = small_mlp().double()
    x, y = batch(6, seed=27, dtype=torch.float64, classes=5)
    tail, stem = mlp[2:], mlp[:2]
    unfrozen = vitcore.score(mlp, x, y, proxies=["fisher", "jacob_cov"])
    rest = vitcore.score(tail, stem(x).detach(), y)
    stem.requires_grad_(False)
    rel = bound64(mlp, len(x))  # float64 rounding of the forward and backward: either side may carry it
    assert vitcore.score(mlp, x, y) == pytest.approx(rest, rel=2 * rel)
    for proxies in (["fisher"], ["fisher", "jacob_cov"], ["grad_norm", "fisher"]):
        got = vitcore.score(mlp, x, y, proxies=proxies)
        assert got["fisher"] == pytest.approx(unfrozen["fisher"], rel=2 * rel), proxies
    _, tol = jacob_cov_reference(mlp, x)  # its bound against float64 arithmetic, for each of the two
    assert abs(vitcore.score(mlp, x, y, proxies=["jacob_cov"])["jacob_cov"] - unfrozen["jacob_cov"]) <= 2 * tol


def test_a_first_layer_under_no_grad_scores_as_the_rest_of_the_network(triton_off):
    """A Linear run under torch.no_grad() inside forward has no gradient: grad_norm, snip and fisher equal
    those of the network after it, fed its output; the inputs reach no gradient, so jacob_cov alone fails,
    with that reason."""
    mlp = small_mlp().double()
    x, y = batch(6, seed=28, dtype=torch.float64, classes=5)
    proxies = ["grad_norm", "snip", "fisher"]
    want = vitcore.score(mlp[2:], mlp[:2](x).detach(), y, proxies=proxies)
    with pytest.raises(vitcore.ProxyFailed) as e:
        vitcore.score(_FirstLayerUnderNoGrad(mlp), x, y, proxies=proxies + ["jacob_cov"])
    assert set(e.value.errors) == {"jacob_cov"}
    assert e.value.errors["jacob_cov"].startswith("ValueError: the model's output does not depend on its inputs "
                                                  "through autograd")
    for name in proxies:
        assert e.value.scores[name] == pytest.approx(want[name], rel=2 * bound64(mlp, len(x))), name


def test_synflow_on_a_forward_under_no_grad_is_named(triton_off):
    model = _Returns(small_mlp(), lambda z: z)
    model.forward = torch.no_grad()(model.forward)
    x, y = batch(4, seed=28, dtype=torch.float32, classes=5)
    with pytest.raises(ValueError, match="the model's output does not depend on its parameters or inputs"):
        vitcore.score(model, x, y, proxies=["synflow"])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_inputs_of_another_dtype_than_the_model_are_named(triton_off, dtype):
    model = small_mlp().to(dtype)
    x, y = batch(4, seed=29, dtype=torch.float32, classes=5)
    for proxies in (["grad_norm"], ["synflow"]):
        with pytest.raises(TypeError, match=rf"inputs.dtype=torch.float32 and the model's parameters are {dtype}: "
                                            rf"give inputs of the model's dtype \(inputs.to\({dtype}\)\)"):
            vitcore.score(model, x, y, proxies=proxies)
    if dtype != torch.float16:  # float16 Linear on the CPU: not every torch build has it
        assert math.isfinite(vitcore.score(model, x.to(dtype), y)["grad_norm"])


def test_a_buffer_of_another_dtype_does_not_hide_the_inputs_dtype(triton_off):
    """float32 weights beside a float64 buffer, float64 inputs: torch's "mat1 and mat2 must have the same
    dtype" came from the first layer; the parameters' dtype decides."""
    model = small_mlp()
    model.register_buffer("table", torch.zeros(3, dtype=torch.float64))
    x, y = batch(4, seed=32, dtype=torch.float64, classes=5)
    with pytest.raises(TypeError, match="inputs.dtype=torch.float64 and the model's parameters are torch.float32"):
        vitcore.score(model, x, y)


def test_numpy_ints_are_taken_for_chunks_and_num_classes(triton_off):
    model, (x, y) = small_mlp(), batch(4, seed=33, dtype=torch.float32, classes=5)
    assert vitcore.score(model, x, y, chunks=np.int64(2), num_classes=np.int64(5)) == \
        vitcore.score(model, x, y, chunks=2, num_classes=5)


def test_inputs_of_another_dtype_pass_under_autocast(triton_off):
    """autocast casts each layer's inputs itself: the dtype check stands aside."""
    model = small_mlp().bfloat16()
    x, y = batch(4, seed=30, dtype=torch.float32, classes=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert math.isfinite(vitcore.score(model, x, y)["grad_norm"])


def test_a_model_on_the_meta_device_is_named(triton_off):
    with torch.device("meta"):
        model = small_mlp()
    x, y = batch(4, seed=31, dtype=torch.float32, classes=5)
    with pytest.raises(ValueError, match="the model's parameters are on the meta device"):
        vitcore.score(model, x, y)


def test_one_class_logits_are_refused_for_cross_entropy(triton_off):
    """One logit per example: cross-entropy over one class is 0 for every network, so grad_norm, snip,
    zico and fisher were 0 for all of them; a loss_fn for one output is the caller's choice."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1))
    x = batch(4, seed=25, dtype=torch.float32, classes=5)[0]
    with pytest.raises(ValueError, match="the model returned 1 class score per example: the cross-entropy over one "
                                         "class is 0 for every network"):
        vitcore.score(model, x, torch.zeros(4, dtype=torch.int64))
    mse = vitcore.score(model, x, torch.ones(4, 1), loss_fn=torch.nn.functional.mse_loss)
    assert mse["grad_norm"] > 0


def test_num_classes_refuses_logits_of_another_width(triton_off):
    """cross_entropy takes any width above the largest target, so a headless model's 24 features were
    scored as 10-class logits (round four, case 3); vitcore score passes the batch's classes."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 24))
    x, y = batch(4, seed=23, dtype=torch.float32, classes=5)
    assert math.isfinite(vitcore.score(model, x, y)["grad_norm"])
    with pytest.raises(ValueError, match=r"the model returned 24 class scores per example, not the 5 it is scored "
                                         r"for \(num_classes\)"):
        vitcore.score(model, x, y, num_classes=5, proxies=["grad_norm", "synflow"])
    assert math.isfinite(vitcore.score(model, x, y, num_classes=24)["grad_norm"])
    for bad in (-1, 2.0, True):
        with pytest.raises(ValueError, match=f"num_classes={bad!r}: expected an int >= 0 or None"):
            vitcore.score(model, x, y, num_classes=bad)


def test_a_loss_that_does_not_depend_on_the_logits_is_named(triton_off):
    model, (x, y) = small_mlp(), batch(4, seed=24, dtype=torch.float32, classes=5)
    with pytest.raises(ValueError, match="loss_fn returned a tensor that does not depend on the logits"):
        vitcore.score(model, x, y, loss_fn=lambda z, t: F.cross_entropy(z, t).detach())


def test_a_detached_output_is_named(triton_off):
    model = _Returns(small_mlp(), lambda z: z.detach())
    x, y = batch(4, seed=25, dtype=torch.float32, classes=5)
    with pytest.raises(ValueError, match="the model's output does not depend on its parameters or inputs"):
        vitcore.score(model, x, y, proxies=["grad_norm", "jacob_cov"])


def test_int_targets_of_another_shape_go_to_a_callers_loss(triton_off):
    """(B, 1) int64 targets are refused for cross_entropy only: a loss of the caller's may read them."""
    model, (x, y) = small_mlp(), batch(4, seed=26, dtype=torch.float32, classes=5)
    got = vitcore.score(model, x, y[:, None], loss_fn=lambda z, t: F.cross_entropy(z, t[:, 0]))
    assert got == vitcore.score(model, x, y)


class _Tokens(torch.nn.Module):
    """8x8 images as 8 tokens of 8 features through nn.MultiheadAttention, whose input projection is no
    Linear module (torchvision's ViT and nn.TransformerEncoderLayer hold theirs so)."""

    def __init__(self):
        super().__init__()
        self.embed, self.head = torch.nn.Linear(8, 8), torch.nn.Linear(8, 5)
        self.attn = torch.nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        t = self.embed(x.reshape(len(x), 8, 8))
        return self.head(self.attn(t, t, t, need_weights=False)[0].mean(1))


def _weight_normed():
    mlp = small_mlp()
    torch.nn.utils.parametrizations.weight_norm(mlp[1])
    return mlp


def _layer_reference(model, x, y, groups, tokens, width):
    """(values, absolute bounds): grad_norm and snip over ``groups``' tensors and zico over the groups
    (layers), from float64 gradients of the whole batch and of its two halves. The gradients' relative
    error is γ_n, n the forward and backward multiply-adds: every parameter applied once per token, and
    attention's two (tokens x tokens x width) products. zico's σ = |g1 - g2| loses (|g1| + |g2|) / |g1 - g2|
    of that accuracy to cancellation, entry by entry; a layer's log Σ ratio moves by Σ ratio·ε / Σ ratio."""
    n = 3 * len(x) * (tokens * sum(p.numel() for p in model.parameters()) + 2 * tokens ** 2 * width)
    eps = n * U[torch.float64]
    flat = [p for g in groups for p in g]
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), flat)
    half = len(x) // 2
    g1, g2 = (torch.autograd.grad(F.cross_entropy(model(xs), ys), flat)
              for xs, ys in ((x[:half], y[:half]), (x[half:], y[half:])))
    zico, zico_tol, i = 0.0, 0.0, 0
    for group in groups:
        ratio = moved = 0.0
        for a, b in zip(g1[i:i + len(group)], g2[i:i + len(group)]):
            keep = (a - b) != 0
            r = (a.abs() + b.abs())[keep] / (a - b).abs()[keep]
            ratio += r.sum().item()
            moved += (r * (2 * eps * r + 2 * eps)).sum().item()
        zico += math.log(ratio)
        zico_tol += moved / ratio
        i += len(group)
    values = {"grad_norm": math.sqrt(sum(g.pow(2).sum().item() for g in grads)),
              "snip": sum((g * p).abs().sum().item() for g, p in zip(grads, flat)), "zico": zico}
    return values, {"grad_norm": 2 * eps * values["grad_norm"], "snip": 2 * eps * values["snip"], "zico": zico_tol}


@pytest.mark.parametrize("build, groups, tokens, width", [
    (_weight_normed, lambda m: [[m[1].parametrizations.weight.original0, m[1].parametrizations.weight.original1],
                                [m[3].weight], [m[5].weight]], 1, 0),
    (_Tokens, lambda m: [[m.embed.weight], [m.attn.in_proj_weight], [m.attn.out_proj.weight], [m.head.weight]],
     8, 8),
])
def test_layer_weights_behind_weight_norm_and_multihead_attention(triton_off, build, groups, tokens, width):
    """params="weights" and zico read a layer's weight: under weight_norm (a weight computed on every
    forward) they read the g and v it is made from (they read the computed tensor, which has no gradient, and
    zico raised a KeyError), and nn.MultiheadAttention's input projection (left out)."""
    torch.manual_seed(0)
    model = build().double()
    x, y = batch(6, seed=34, dtype=torch.float64, classes=5)
    want, tol = _layer_reference(model, x, y, groups(model), tokens, width)
    got = {**vitcore.score(model, x, y, proxies=["grad_norm", "snip"], params="weights"),
           **vitcore.score(model, x, y, proxies=["zico"])}
    for name in want:
        assert abs(got[name] - want[name]) <= tol[name], (name, got[name], want[name], tol[name])

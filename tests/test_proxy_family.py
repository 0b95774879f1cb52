"""Every proxy against a straightforward float64 implementation, chunking invariance, foresight compat."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import DEVICE

import vitcore
from vitcore.compat import find_measures
from vitcore.model import ViT, ViTConfig
from vitcore.proxies import PROXIES

LAYERS = (nn.Linear, nn.Conv2d)
VIT_ONLY = ("dss", "meco", "lswag")  # they read a vitcore.ViT's blocks; each has its own test file
REFERENCED = ("grad_norm", "snip", "plain", "grasp", "synflow", "fisher", "jacob_cov", "nwot", "zico", "params")
ANY_MODEL = [p for p in PROXIES if p not in VIT_ONLY]


def small_vit():
    cfg = ViTConfig(img_size=8, patch_size=4, in_chans=1, num_classes=5, embed_dim=12, depth=2,
                    num_heads=[1, 3], mlp_ratio=[2.0, 1.5], head_dim=5)
    return ViT(cfg)


def small_mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 17), nn.ReLU(), nn.Linear(17, 9), nn.GELU(), nn.Linear(9, 5))


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(6 * 3 * 3, 5),
    )


def counted(model, which):
    if which == "weights":
        return [m.weight for m in model.modules() if isinstance(m, LAYERS)]
    return list(model.parameters())


def reference(model, x, y, which, mode):
    """Each proxy written out the plain way, in float64, with .backward() and .grad."""
    model = copy.deepcopy(model).double().train()
    x = x.double()
    params = counted(model, which)
    out = {}

    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    g = [p.grad.clone() for p in params]
    norms = [gi.norm().item() for gi in g]
    out["grad_norm"] = math.sqrt(sum(n * n for n in norms)) if mode == "global" else sum(norms)
    out["snip"] = sum((gi * p).abs().sum().item() for gi, p in zip(g, params))
    out["plain"] = sum((gi * p).sum().item() for gi, p in zip(g, params))

    gf = torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True)
    hg = torch.autograd.grad(sum((gi * fi).sum() for gi, fi in zip(g, gf)), params)
    out["grasp"] = -sum((p * h).sum().item() for p, h in zip(params, hg))

    net = copy.deepcopy(model)
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    net.zero_grad()
    net(torch.ones((1,) + x.shape[1:], dtype=torch.float64)).sum().backward()
    out["synflow"] = sum((p * p.grad).abs().sum().item() for p in counted(net, which))

    acts = []

    def keep(module, args, output):
        output.retain_grad()
        acts.append((module, output))

    hooks = [m.register_forward_hook(keep) for m in model.modules() if isinstance(m, LAYERS)]
    F.cross_entropy(model(x), y).backward()
    for h in hooks:
        h.remove()
    fisher = 0.0
    for m, a in acts:
        prod = a * a.grad
        if prod.ndim == 2:
            gnk = prod  # (B, C)
        elif isinstance(m, nn.Linear):
            gnk = prod.sum(dim=tuple(range(1, prod.ndim - 1)))  # sum tokens, keep channels
        else:
            gnk = prod.sum(dim=tuple(range(2, prod.ndim)))  # sum pixels, keep channels
        fisher += 0.5 * gnk.pow(2).mean(0).sum().item()
    out["fisher"] = fisher

    xj = x.clone().requires_grad_(True)
    model(xj).sum().backward()
    corr = np.corrcoef(xj.grad.reshape(len(x), -1).numpy())
    v = np.linalg.eig(corr)[0].real
    out["jacob_cov"] = -np.sum(np.log(v + 1e-5) + 1.0 / (v + 1e-5))

    K = np.zeros((len(x), len(x)))
    codes = []

    def code(module, args):
        codes.append((args[0] > 0).reshape(len(x), -1).double().numpy())

    hooks = [m.register_forward_pre_hook(code) for m in model.modules() if isinstance(m, (nn.ReLU, nn.GELU))]
    model(x)
    for h in hooks:
        h.remove()
    for c in codes:
        K += c @ c.T + (1 - c) @ (1 - c).T
    out["nwot"] = np.linalg.slogdet(K)[1]

    half = len(x) // 2  # vitcore's first half holds floor(B / 2) examples
    halves = []
    for xs, ys in ((x[:half], y[:half]), (x[half:], y[half:])):
        model.zero_grad()
        F.cross_entropy(model(xs), ys).backward()
        halves.append([p.grad.clone().numpy() for p in params])
    zico = 0.0
    weight_ids = {id(p) for p in counted(model, "weights")}
    for p, g1, g2 in zip(params, *halves):
        if id(p) not in weight_ids:
            continue  # zico counts layer weights only
        G = np.stack([g1, g2])
        std, mean_abs = G.std(0), np.abs(G).mean(0)
        s = np.sum(mean_abs[std != 0] / std[std != 0])
        zico += np.log(s) if s != 0 else 0.0
    out["zico"] = zico
    out["params"] = sum(p.numel() for p in model.parameters())
    return out


@pytest.mark.parametrize("make", [small_vit, small_mlp])
@pytest.mark.parametrize("which, mode", [("all", "global"), ("weights", "per_layer")])
def test_every_proxy_matches_the_float64_reference(make, which, mode, triton_off):
    torch.manual_seed(0)
    model = make().double()
    x, y = torch.randn(7, 1, 8, 8, dtype=torch.float64), torch.randint(0, 5, (7,))
    names = list(REFERENCED)
    got = vitcore.score(model, x, y, proxies=names, mode=mode, params=which)
    ref = reference(model, x, y, which, mode)
    assert list(got) == names
    for name in names:
        assert got[name] == pytest.approx(ref[name], rel=1e-7, abs=1e-12), name


def test_fp32_scores_track_the_float64_reference(triton_on):
    """The fast path: a float32 ViT through the Triton kernels, against float64. On CPU, 20x the
    relative errors measured with the interpreter (5e-8; zico 3e-6, a ratio of small spreads); on a
    GPU the convolution runs in TF32 by default, so the earlier 2e-3 stays."""
    torch.manual_seed(1)
    model = small_vit()
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 5, (8,))
    ref = reference(model, x, y, "all", "global")
    rel = {"grad_norm": 1e-6, "snip": 1e-6, "grasp": 1e-6, "synflow": 1e-6, "fisher": 1e-6, "zico": 6e-5}
    got = vitcore.score(model.to(DEVICE), x.to(DEVICE), y.to(DEVICE), proxies=list(rel))
    for name, tol in rel.items():
        assert got[name] == pytest.approx(ref[name], rel=tol if DEVICE == "cpu" else 2e-3), name


def test_flops_counts_matmuls_per_example(triton_off):
    got = vitcore.score(small_mlp(), torch.randn(3, 1, 8, 8), torch.randint(0, 5, (3,)), proxies=["flops"])
    assert got["flops"] == 2 * (64 * 17 + 17 * 9 + 9 * 5)  # one multiply-add = 2 FLOPs


@pytest.mark.parametrize("chunks", [2, 3, 7])
def test_scores_do_not_depend_on_chunking(chunks, triton_off):
    torch.manual_seed(2)
    model = small_vit().double()
    x, y = torch.randn(7, 1, 8, 8, dtype=torch.float64), torch.randint(0, 5, (7,))
    names = [p for p in PROXIES if p != "flops"]
    whole = vitcore.score(model, x, y, proxies=names)
    split = vitcore.score(model, x, y, proxies=names, chunks=chunks)
    for name in names:
        assert split[name] == pytest.approx(whole[name], rel=1e-9, abs=1e-12), name


def test_model_weights_mode_and_grads_are_left_alone(triton_off):
    torch.manual_seed(3)
    model = small_vit().eval()
    before = copy.deepcopy(model.state_dict())
    vitcore.score(model, torch.randn(4, 1, 8, 8), torch.randint(0, 5, (4,)), proxies=list(PROXIES))
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_bad_arguments(triton_off):
    model, x, y = small_vit(), torch.randn(4, 1, 8, 8), torch.randint(0, 5, (4,))
    with pytest.raises(ValueError, match="chunks=5 must be an int in 1..4"):
        vitcore.score(model, x, y, chunks=5)
    with pytest.raises(ValueError, match="params='bias'"):
        vitcore.score(model, x, y, params="bias")
    with pytest.raises(ValueError, match="zico .* at least 2 examples"):
        vitcore.score(model, x[:1], y[:1], proxies=["zico"])
    with pytest.raises(ValueError, match="inputs hold 4 examples and targets 3"):
        vitcore.score(model, x, y[:3])
    with pytest.raises(TypeError, match="inputs must be a torch.Tensor, got ndarray"):
        vitcore.score(model, x.numpy(), y)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="outside torch.inference_mode"):
        vitcore.score(model, x, y)


def test_compat_equals_score_with_foresight_settings(triton_off):
    torch.manual_seed(4)
    model = small_vit()
    data = [(torch.randn(3, 1, 8, 8), torch.randint(0, 5, (3,))) for _ in range(3)]
    got = find_measures(model, data, ("random", 2, 5), "cpu")
    x, y = torch.cat([d[0] for d in data[:2]]), torch.cat([d[1] for d in data[:2]])
    expected = vitcore.score(model, x, y, proxies=list(got), mode="per_layer", params="weights")
    assert list(got) == ["grad_norm", "snip", "grasp", "fisher", "jacob_cov", "plain", "synflow"]
    assert got == expected


def test_compat_on_a_cnn_gives_foresights_numbers(triton_off):
    """On Conv2d/Linear networks foresight's definitions are sound: the same numbers."""
    torch.manual_seed(5)
    model = small_cnn().double()
    data = [(torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.arange(4) % 2) for _ in range(4)]
    got = find_measures(model, data, ("grasp", 3, 2), "cpu")
    x = torch.cat([d[0] for d in data])
    y = torch.cat([d[1] for d in data])
    x = torch.cat([x[y == 0][:3], x[y == 1][:3]])
    ref = reference(model, x, torch.tensor([0, 0, 0, 1, 1, 1]), "weights", "per_layer")
    for name, value in got.items():
        assert value == pytest.approx(ref[name], rel=1e-7, abs=1e-12), name


def test_compat_bad_dataload():
    with pytest.raises(ValueError, match="dataload='all'"):
        find_measures(small_cnn(), [], ("all", 1, 2), "cpu")
    with pytest.raises(ValueError, match="ran out after 1 batches"):
        find_measures(small_cnn(), [(torch.randn(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))], ("random", 2, 2), "cpu")
    for info, error, message in [(("random", 0, 2), ValueError, "num_imgs_or_batches=0 must be positive"),
                                 (("grasp", 1, 0), ValueError, "num_classes=0 must be positive"),
                                 (("random", 1.0, 2), TypeError, "num_imgs_or_batches=1.0 must be an int")]:
        with pytest.raises(error, match=message):
            find_measures(small_cnn(), [], info, "cpu")
    with pytest.raises(TypeError, match=r"measure_names='snip' must be a list of names, e.g. \['snip'\]"):
        find_measures(small_cnn(), [], ("random", 1, 2), "cpu", measure_names="snip")


def test_synflow_stays_float64_under_autocast(triton_off):
    torch.manual_seed(6)
    model = small_vit()
    x, y = torch.randn(3, 1, 8, 8), torch.randint(0, 5, (3,))
    exact = vitcore.score(model, x, y, proxies=["synflow"])["synflow"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = vitcore.score(model, x, y, proxies=["synflow", "grad_norm"])
    assert amp["synflow"] == pytest.approx(exact, rel=1e-12)
    assert math.isfinite(amp["grad_norm"])


def test_a_batch_of_one(triton_off):
    """One example: the NASWOT kernel is 1x1; zico and jacob_cov (whose correlation matrix would be
    [[1]], the same score for every model) need two."""
    torch.manual_seed(7)
    model = small_vit().double()
    x, y = torch.randn(1, 1, 8, 8, dtype=torch.float64), torch.tensor([3])
    names = [p for p in PROXIES if p not in ("zico", "jacob_cov", "nwot", "lswag")]
    with pytest.raises(ValueError, match="jacob_cov .* at least 2 examples"):
        vitcore.score(model, x, y, proxies=["jacob_cov"])
    got = vitcore.score(model, x, y, proxies=names + ["nwot"])
    ref = reference(model, torch.cat([x, x]), torch.cat([y, y]), "all", "global")  # same mean loss
    for name in ("grad_norm", "snip", "plain", "grasp", "synflow", "params"):  # per-example scale free
        assert got[name] == pytest.approx(ref[name], rel=1e-7, abs=1e-12), name
    assert math.isfinite(got["fisher"]) and got["flops"] > 0
    units = sum(b.mlp.fc1.out_features * model.config.num_tokens for b in model.blocks)
    assert got["nwot"] == pytest.approx(math.log(units))


def test_out_of_memory_doubles_the_chunks(monkeypatch, triton_off):
    """A CUDA out-of-memory error retries with twice the chunks, up to the batch size, then gives up."""
    import vitcore.proxies.plan as proxies

    run, tried = proxies._run, []

    def fits_in_four_chunks(*args):
        chunks = args[-2]
        tried.append(chunks)
        if chunks < 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return run(*args)

    monkeypatch.setattr(proxies, "_run", fits_in_four_chunks)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    torch.manual_seed(8)
    model = small_vit().double()
    x, y = torch.randn(6, 1, 8, 8, dtype=torch.float64), torch.randint(0, 5, (6,))
    got = vitcore.score(model, x, y, proxies=["grad_norm", "fisher"])
    assert tried == [1, 2, 4]
    assert got == pytest.approx(run(model, x, y, F.cross_entropy, ["grad_norm", "fisher"], "global",
                                    list(model.parameters()), 1, proxies._Fresh(model, x.device)), rel=1e-9)
    tried.clear()
    with pytest.raises(torch.cuda.OutOfMemoryError):
        vitcore.score(model, x[:3], y[:3], proxies=["grad_norm"])
    assert tried == [1, 2, 3]


class SharedReLUNet(nn.Module):
    """One nn.ReLU module applied twice, at two widths (as torchvision's BasicBlock reuses its ReLU)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 13), nn.Linear(13, 7), nn.Linear(7, 5)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.fc3(self.relu(self.fc2(self.relu(self.fc1(x.flatten(1))))))


@pytest.mark.parametrize("chunks", [1, 3])
def test_nwot_with_an_activation_module_called_twice(chunks, triton_off):
    torch.manual_seed(9)
    model = SharedReLUNet().double()
    x, y = torch.randn(6, 1, 8, 8, dtype=torch.float64), torch.randint(0, 5, (6,))
    got = vitcore.score(model, x, y, proxies=["nwot"], chunks=chunks)["nwot"]
    assert got == pytest.approx(reference(model, x, y, "all", "global")["nwot"], rel=1e-9)


class TwoNamesNet(nn.Module):
    """One nn.Linear registered under two names and applied twice."""

    def __init__(self):
        super().__init__()
        self.fc, self.head = nn.Linear(64, 64), nn.Linear(64, 5)
        self.fc_again = self.fc

    def forward(self, x):
        return self.head(F.gelu(self.fc_again(F.gelu(self.fc(x.flatten(1))))))


def test_a_module_registered_under_two_names_keeps_its_weights(triton_off):
    torch.manual_seed(12)
    model = TwoNamesNet().double()
    x, y = torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.randint(0, 5, (4,))
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    got = vitcore.score(model, x, y, proxies=["synflow", "grad_norm"])
    assert all(p is q for p, q in zip(model.parameters(), params))
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert got == pytest.approx({k: v for k, v in reference(model, x, y, "all", "global").items()
                                 if k in got}, rel=1e-6)


def test_nan_weights_give_nan_not_a_plausible_score(triton_off):
    """A proxy cannot look better by failing: zico and nwot do not turn NaN into 0 or a finite log-det."""
    torch.manual_seed(13)
    model = small_mlp()
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")
    got = vitcore.score(model, torch.randn(6, 1, 8, 8), torch.randint(0, 5, (6,)), proxies=ANY_MODEL)
    assert {k for k, v in got.items() if math.isnan(v)} == set(ANY_MODEL) - {"params", "flops"}


@pytest.mark.parametrize("proxies", [ANY_MODEL, ["params"]])
def test_non_finite_inputs_are_refused(proxies, triton_off):
    x = torch.randn(6, 1, 8, 8)
    x[2, 0, 3, 3], x[4, 0, 0, 0] = float("nan"), float("-inf")
    with pytest.raises(ValueError, match="inputs hold 2 NaN or infinite values of 384"):
        vitcore.score(small_mlp(), x, torch.randint(0, 5, (6,)), proxies=proxies)


def test_nwot_without_activation_modules_says_so(triton_off):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))
    with pytest.raises(ValueError, match="nwot reads the inputs of nn.ReLU / nn.GELU modules"):
        vitcore.score(model, torch.randn(3, 1, 8, 8), torch.randint(0, 5, (3,)), proxies=["nwot"])


def test_batchnorm_buffers_and_per_module_modes_are_restored(triton_off):
    torch.manual_seed(10)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(144, 8), nn.BatchNorm1d(8), nn.Linear(8, 5))
    model.train()
    model[1].eval()  # a frozen BatchNorm inside a training model
    before = copy.deepcopy(model.state_dict())
    got = vitcore.score(model, torch.randn(4, 1, 8, 8), torch.randint(0, 5, (4,)), proxies=ANY_MODEL)
    assert all(math.isfinite(v) for k, v in got.items() if k != "jacob_cov")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and not model[1].training and model[5].training


def test_scored_in_train_mode_whatever_the_mode_it_came_in(triton_off):
    """BatchNorm normalises with the batch's statistics during scoring, as foresight's train() does."""
    torch.manual_seed(14)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 17), nn.BatchNorm1d(17), nn.ReLU(), nn.Linear(17, 5)).double()
    x, y = torch.randn(6, 1, 8, 8, dtype=torch.float64), torch.randint(0, 5, (6,))

    def grad_norm(training):
        net = copy.deepcopy(model).train(training)
        grads = torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))
        return math.sqrt(sum(g.pow(2).sum().item() for g in grads))

    model.eval()
    got = vitcore.score(model, x, y, proxies=["grad_norm"])["grad_norm"]
    assert got == pytest.approx(grad_norm(True), rel=1e-6)  # the reduction outputs fp32
    assert got != pytest.approx(grad_norm(False), rel=1e-3)  # the two modes differ on this model
    assert not model.training


def test_params_counts_trainable_tensors_only(triton_off):
    model = small_mlp()
    model[3].requires_grad_(False)  # the middle Linear, 17 -> 9
    got = vitcore.score(model, torch.randn(2, 1, 8, 8), torch.randint(0, 5, (2,)), proxies=["params"])
    assert got["params"] == (64 * 17 + 17) + (9 * 5 + 5)


def test_synflow_uses_absolute_batchnorm_statistics(triton_off):
    """foresight's synflow takes |·| of the whole state dict; with trained (negative) running means
    that differs from taking |θ| alone."""
    torch.manual_seed(15)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 17), nn.BatchNorm1d(17), nn.ReLU(), nn.Linear(17, 5)).double()
    with torch.no_grad():
        model[2].running_mean.uniform_(-2.0, -1.0)
        model[2].running_var.uniform_(0.5, 2.0)
    net = copy.deepcopy(model).eval()
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.abs_()
    net(torch.ones(1, 1, 8, 8, dtype=torch.float64)).sum().backward()
    expected = sum((p * p.grad).abs().sum().item() for p in net.parameters())
    got = vitcore.score(model, torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.randint(0, 5, (4,)),
                        proxies=["synflow"])
    assert got["synflow"] == pytest.approx(expected, rel=1e-9)


def test_scoring_inside_no_grad(triton_off):
    model, x, y = small_vit(), torch.randn(3, 1, 8, 8), torch.randint(0, 5, (3,))
    expected = vitcore.score(model, x, y, proxies=["grad_norm", "grasp"])
    with torch.no_grad():
        assert vitcore.score(model, x, y, proxies=["grad_norm", "grasp"]) == expected


def test_correlation_matches_numpy_and_is_nan_for_a_constant_row():
    from vitcore.proxies.jacob_cov import corrcoef as _corrcoef

    x = torch.randn(5, 11, dtype=torch.float64)
    np.testing.assert_allclose(_corrcoef(x).numpy(), np.corrcoef(x.numpy()), rtol=1e-12, atol=1e-12)
    x[2] = 3.0
    assert torch.isnan(_corrcoef(x)[2]).all() and not torch.isnan(_corrcoef(x)[0, 1])


@pytest.mark.parametrize("name", [p for p in PROXIES if p not in ("params", "flops")])
def test_the_only_host_read_is_the_final_transfer(name, triton_off):
    """On fake tensors (no data) the first operation that needs values stops the run: for every proxy
    it must be the one transfer at the end of vitcore.score, so nothing before it syncs with the host."""
    import traceback

    from torch._subclasses.fake_tensor import FakeTensorMode

    model, x, y = small_vit(), torch.randn(4, 1, 8, 8), torch.randint(0, 5, (4,))
    with pytest.raises(Exception) as info:
        with FakeTensorMode(allow_non_fake_inputs=True):
            vitcore.score(model, x, y, proxies=[name])
    frame = [f for f in traceback.extract_tb(info.value.__traceback__) if f.filename.endswith("plan.py")][-1]
    assert "torch.cat(parts).cpu()" in frame.line, (frame.lineno, frame.line)

"""vitcore.compat.find_measures: foresight's entry point, counting per module as foresight's loop does."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from proxy_helpers import LAYERS, U, batch, bound64, nb201_net, small_cnn, small_vit
from torch import nn

import vitcore
from vitcore import compat
from vitcore.compat import find_measures
from vitcore.proxies.plan import Settings, score_counted


class TiedNet(nn.Module):
    """fc3 uses fc2's weight: one tensor, two Linear modules."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.head = nn.Linear(64, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 5)
        self.fc3.weight = self.fc2.weight

    def forward(self, x):
        return self.head(torch.relu(self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x.flatten(1))))))))


def foresight_loop(net, x, y, keep_mode=False):
    """foresight's per-module loop (get_layer_metric_array over Conv2d/Linear), float64, per measure:
    (value, the Σ|terms| its rounding is relative to). keep_mode: in the mode net is in, else train."""
    net = copy.deepcopy(net).double()
    if not keep_mode:
        net.train()
    layers = [m for m in net.modules() if isinstance(m, LAYERS)]
    weights = [m.weight for m in layers]  # a tied weight appears once per module
    g = torch.autograd.grad(F.cross_entropy(net(x), y), weights)
    out = {
        "grad_norm": (sum(gi.norm().item() for gi in g), None),
        "snip": (sum((gi * w).abs().sum().item() for gi, w in zip(g, weights)), None),
        "plain": (sum((gi * w).sum().item() for gi, w in zip(g, weights)),
                  sum((gi * w).abs().sum().item() for gi, w in zip(g, weights))),
    }
    gf = torch.autograd.grad(F.cross_entropy(net(x), y), weights, create_graph=True)
    hg = torch.autograd.grad(sum((gi * fi).sum() for gi, fi in zip(g, gf)), weights)
    out["grasp"] = (-sum((w * h).sum().item() for w, h in zip(weights, hg)),
                    sum((w * h).abs().sum().item() for w, h in zip(weights, hg)))
    return out


def fisher_fan_in(net, x, y):
    """foresight's fisher in train mode, per channel c of each Conv2d/Linear output a (channel axis 1 for
    a Conv2d, last for a Linear): ½ mean_b (Σ_rest a·∂L/∂a)², each channel counted fan-in times."""
    net = copy.deepcopy(net).double().train()
    outs = []
    hooks = [m.register_forward_hook(lambda m, args, o: outs.append((m, o))) for m in net.modules()
             if isinstance(m, LAYERS)]
    loss = F.cross_entropy(net(x), y)
    for h in hooks:
        h.remove()
    grads = torch.autograd.grad(loss, [o for _, o in outs])
    total = 0.0
    for (m, a), da in zip(outs, grads):
        prod = (a * da).movedim(1 if isinstance(m, nn.Conv2d) else -1, -1)  # (B, ..., C)
        per_channel = 0.5 * prod.reshape(len(x), -1, prod.shape[-1]).sum(1).pow(2).mean(0)  # (C,)
        total += per_channel.sum().item() * m.weight[0].numel()
    return total


def synflow_reference(net, input_shape, strip):
    """Σ |θ ∂R/∂θ| over Conv2d/Linear weights, R = Σ f(1) with |state| in float64, in the mode net is
    in; strip: every BatchNorm2d/1d replaced by an identity map."""
    net = copy.deepcopy(net).double()
    if strip:
        for parent in list(net.modules()):
            for name, child in parent.named_children():
                if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
                    setattr(parent, name, nn.Identity())
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.abs_()
    net(torch.ones((1,) + tuple(input_shape), dtype=torch.float64)).sum().backward()
    return sum((m.weight * m.weight.grad).abs().sum().item() for m in net.modules() if isinstance(m, LAYERS))


def jacob_cov_reference(net, x, rel):
    """-Σ_k log(λ_k + k) + 1/(λ_k + k), k = 1e-5, λ the eigenvalues of the correlation of the d(Σ f)/dx
    rows; and its first-order error bound when each correlation entry is off by up to ``rel`` (the
    jacobian's relative rounding, times 4 for the centring and normalising): the (B, B) perturbation
    moves each λ by at most its 2-norm <= B·4·rel (Weyl), and the score by Σ |1/(λ+k) - 1/(λ+k)²| that."""
    net = copy.deepcopy(net).double()
    x = x.clone().requires_grad_(True)
    (jac,) = torch.autograd.grad(net(x).sum(), x)
    v = np.linalg.eigvalsh(np.corrcoef(jac.reshape(len(x), -1).numpy()))
    k = 1e-5
    bound = np.sum(np.abs(1.0 / (v + k) - 1.0 / (v + k) ** 2)) * len(x) * 4 * rel
    return float(-np.sum(np.log(v + k) + 1.0 / (v + k))), float(bound)


def bn_cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2),
                         nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 3 * 3, 5))


NETS = {"bn_cnn": bn_cnn, "vit": small_vit, "nb201": nb201_net}


def trained_statistics(model):
    """Running statistics away from their initial (0, 1), as after training."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and m.track_running_stats:
                m.running_mean.uniform_(-1.0, 1.0)
                m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("make", NETS)
def test_foresight_measures_match_their_definitions(make, mode, triton_off):
    """Each foresight name against its definition in float64, in the mode the network is passed in
    (fisher in train mode); the network comes back in its mode with its buffers unchanged."""
    torch.manual_seed(31)
    net = trained_statistics(NETS[make]()).double()
    net.train(mode == "train")
    x, y = batch(5, seed=32)
    before = copy.deepcopy(net.state_dict())
    got = find_measures(net, [(x, y)], ("random", 1, 5), "cpu")
    assert list(got) == ["grad_norm", "snip", "grasp", "fisher", "jacob_cov", "plain", "synflow_bn", "synflow"]
    assert net.training == (mode == "train")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    rel = U[torch.float32] + 2 * bound64(net, 5)
    for name, (value, scale) in foresight_loop(net, x, y, keep_mode=True).items():
        assert abs(got[name] - value) <= rel * (scale if scale is not None else abs(value)), name
    assert got["fisher"] == pytest.approx(fisher_fan_in(net, x, y), rel=rel, abs=0)
    assert got["synflow"] == pytest.approx(synflow_reference(net, x.shape[1:], strip=True), rel=rel, abs=0)
    assert got["synflow_bn"] == pytest.approx(synflow_reference(net, x.shape[1:], strip=False), rel=rel, abs=0)
    ref, bound = jacob_cov_reference(net, x, rel)
    assert abs(got["jacob_cov"] - ref) <= bound


def test_a_weight_tied_between_two_modules_counts_once_per_module(triton_off):
    torch.manual_seed(1)
    net = TiedNet().double()
    x, y = batch(6, seed=2)
    got = find_measures(net, [(x, y)], ("random", 1, 5), "cpu", measure_names=["grad_norm", "snip", "plain", "grasp"])
    ref = foresight_loop(net, x, y)
    rel = U[torch.float32] + 2 * bound64(nn.Sequential(net.fc1, net.fc2, net.fc3, net.head), 6)
    for name, (value, scale) in ref.items():
        assert abs(got[name] - value) <= rel * (scale if scale is not None else abs(value)), name
    per_tensor = vitcore.score(net, x, y, proxies=["grad_norm", "snip"], params="weights", mode="per_layer")
    assert per_tensor["grad_norm"] < got["grad_norm"] and per_tensor["snip"] < got["snip"]


@pytest.mark.parametrize("make", NETS)
def test_vitcore_names_give_vitcores_definitions(make, triton_off):
    """"vitcore.<proxy>" is vitcore.score's definition (train mode, synflow in eval mode, fisher per
    channel), counted per module: the same numbers as score with params="weights" without tied weights."""
    torch.manual_seed(4)
    model = trained_statistics(NETS[make]()).eval()
    data = [batch(3, seed=s, dtype=torch.float32) for s in range(3)]
    names = ["vitcore.grad_norm", "vitcore.snip", "vitcore.grasp", "vitcore.fisher", "vitcore.jacob_cov",
             "vitcore.plain", "vitcore.synflow", "nwot"]
    got = find_measures(model, data, ("random", 2, 5), "cpu", measure_names=names)
    x, y = torch.cat([d[0] for d in data[:2]]), torch.cat([d[1] for d in data[:2]])
    expected = vitcore.score(model, x, y, proxies=[n.removeprefix("vitcore.") for n in names], mode="per_layer",
                             params="weights")
    assert list(got) == names
    assert list(got.values()) == list(expected.values())


@pytest.mark.parametrize("chunks", [2, 3])
def test_ignored_targets_are_left_out_of_the_loss_however_the_batch_is_split(chunks, triton_off):
    """Targets of -100 (cross_entropy's ignore_index) count in no chunk's share: the same scores split or not,
    and those of the loss written out over the other examples."""
    torch.manual_seed(41)
    net = small_cnn().double()
    x, y = batch(7, seed=42, classes=5)
    y[[1, 2, 5]] = -100
    names = ["grad_norm", "snip", "grasp", "fisher"]
    whole = find_measures(net, [(x, y)], ("random", 1, 5), "cpu", measure_names=names)
    kept = y != -100
    ref = foresight_loop(net, x[kept], y[kept])
    rel = U[torch.float32] + 2 * bound64(net, 7)
    for name in ["grad_norm", "snip", "grasp"]:
        assert whole[name] == pytest.approx(ref[name][0], rel=rel, abs=0), name
    settings = Settings(units={n: compat._FORESIGHT[n][0] for n in whole}, ignore_index=-100)
    split_ = score_counted(net, x, y, F.cross_entropy, list(whole), "per_layer", compat.per_module_weights(net),
                           chunks, "weights", settings)
    for name in whole:
        assert split_[name] == pytest.approx(whole[name], rel=rel, abs=0), name
    with pytest.raises(ValueError, match="ignore_index"):
        find_measures(net, [(x, y)], ("random", 1, 5), "cpu", measure_names=["vitcore.snip"])
    with pytest.raises(ValueError, match=r"every target is -100 \(ignore_index\): the loss counts no example"):
        find_measures(net, [(x, torch.full_like(y, -100))], ("random", 1, 5), "cpu", measure_names=names)


def test_jacob_cov_of_one_example_is_nan_as_foresight_returns(triton_off):
    x, y = batch(1, seed=43)
    got = find_measures(small_cnn().double(), [(x, y)], ("random", 1, 5), "cpu", measure_names=["jacob_cov", "snip"])
    assert math.isnan(got["jacob_cov"]) and math.isfinite(got["snip"])
    with pytest.raises(ValueError, match="jacob_cov needs at least 2 examples"):
        find_measures(small_cnn().double(), [(x, y)], ("random", 1, 5), "cpu", measure_names=["vitcore.jacob_cov"])


def test_net_orig_is_foresights_keyword(triton_off):
    x, y = batch(4, seed=44)
    net = small_cnn().double()
    assert find_measures(net_orig=net, dataloader=[(x, y)], dataload_info=("random", 1, 5), device="cpu",
                         measure_names=["snip"]) == find_measures(net, [(x, y)], ("random", 1, 5), "cpu",
                                                                  F.cross_entropy, ["snip"])


def test_compat_on_a_cnn_gives_foresights_numbers(triton_off):
    """On Conv2d/Linear networks foresight's definitions are sound: the same numbers ("grasp" loading)."""
    torch.manual_seed(5)
    model = small_cnn().double()
    data = [(batch(4, seed=s)[0], torch.arange(4) % 2) for s in range(4)]
    got = find_measures(model, data, ("grasp", 3, 2), "cpu", measure_names=["grad_norm", "snip", "plain", "grasp"])
    x = torch.cat([d[0] for d in data])
    y = torch.cat([d[1] for d in data])
    x = torch.cat([x[y == 0][:3], x[y == 1][:3]])
    ref = foresight_loop(model, x, torch.tensor([0, 0, 0, 1, 1, 1]))
    rel = U[torch.float32] + 2 * bound64(model, 6)
    for name, (value, scale) in ref.items():
        assert abs(got[name] - value) <= rel * (scale if scale is not None else abs(value)), name


def test_measures_arr_is_summed_as_foresight_does():
    arr = {"snip": [torch.tensor([1.0, 2.0]), torch.tensor([[0.5]])], "grad_norm": [3.0, 4.0], "jacob_cov": -7.5}
    assert find_measures(None, None, None, None, measures_arr=arr) == {"snip": 3.5, "grad_norm": 7.0, "jacob_cov": -7.5}
    with pytest.raises(TypeError, match="measures_arr must be a dict"):
        find_measures(None, None, None, None, measures_arr=[1.0])
    with pytest.raises(TypeError, match=r"measures_arr\['snip'\]=None: expected a list of per-layer"):
        find_measures(None, None, None, None, measures_arr={"snip": None})


def test_compat_bad_arguments():
    with pytest.raises(ValueError, match="dataload='all'"):
        find_measures(small_cnn(), [], ("all", 1, 2), "cpu")
    with pytest.raises(ValueError, match="ran out after 1 batches"):
        find_measures(small_cnn(), [(torch.randn(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))], ("random", 2, 2), "cpu")
    for info, error, message in [(("random", 0, 2), ValueError, "num_imgs_or_batches=0 must be positive"),
                                 (("grasp", 1, 0), ValueError, "num_classes=0 must be positive"),
                                 (("random", 1.0, 2), TypeError, "num_imgs_or_batches=1.0 must be an int"),
                                 (("random", 1), ValueError, r"dataload_info=\('random', 1\) must be"),
                                 ]:
        with pytest.raises(error, match=message):
            find_measures(small_cnn(), [], info, "cpu")
    with pytest.raises(TypeError, match=r"measure_names='snip' must be a list of names, e.g. \['snip'\]"):
        find_measures(small_cnn(), [], ("random", 1, 2), "cpu", measure_names="snip")
    with pytest.raises(ValueError, match="unknown measure 'synflow_vit'; valid: grad_norm, snip, grasp, fisher"):
        find_measures(small_cnn(), [], ("random", 1, 2), "cpu", measure_names=["synflow_vit"])
    with pytest.raises(ValueError, match="measure_names is empty"):
        find_measures(small_cnn(), [], ("random", 1, 2), "cpu", measure_names=[])
    with pytest.raises(TypeError, match="net_orig must be a torch.nn.Module, got NoneType"):
        find_measures(None, [], ("random", 1, 2), "cpu")
    with pytest.raises(ValueError, match="device='gpu0' is not a torch device"):
        find_measures(small_cnn(), [], ("random", 1, 2), "gpu0")
    x8, y8 = torch.randn(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"batch 1 holds inputs \(2, 1, 6, 6\) torch.float32 .* they must match"):
        find_measures(small_cnn(), [(x8, y8), (torch.randn(2, 1, 6, 6), y8)], ("random", 2, 2), "cpu")
    with pytest.raises(ValueError, match=r"dataload 'grasp' picks examples by class: .* got \(2, 2\) torch.float32"):
        find_measures(small_cnn(), [(x8, torch.full((2, 2), 0.5))], ("grasp", 1, 2), "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda': no CUDA GPU is available to this process; use 'cpu'"):
            find_measures(small_cnn(), [], ("random", 1, 2), "cuda")
    x, y = torch.randn(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)
    for loader, message in [([(x, y), (x.tolist(), y)], r"batch 1 is \(list, Tensor\): expected a pair"),
                            ([x], r"batch 0 is Tensor: expected a pair"),
                            ([(x, y, y)], r"batch 0 is \(Tensor, Tensor, Tensor\)")]:
        for info in [("random", 2, 2), ("grasp", 2, 2)]:
            with pytest.raises(TypeError, match=message):
                find_measures(small_cnn(), loader, info, "cpu")


def test_compat_scores_are_finite_on_a_vit(triton_off):
    torch.manual_seed(6)
    x, y = batch(4, seed=7, dtype=torch.float32)
    got = find_measures(small_vit(), [(x, y)], ("random", 1, 5), "cpu")
    assert all(math.isfinite(v) for v in got.values())

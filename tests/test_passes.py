"""The passes and the planner: chunking, out-of-memory retries, the model left as it came in."""
import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from proxy_helpers import ANY_MODEL, U, batch, bn_net, bound64, small_mlp, small_vit
from torch import nn

import vitcore
import vitcore.proxies.plan as plan
from vitcore.passes import split
from vitcore.proxies import PROXIES

DATA_PROXIES = [p for p in PROXIES if p != "flops"]


def test_split_cuts_at_every_chunk_and_group_boundary():
    assert split(7, 1) == [(0, 7, 0)]
    assert split(7, 3) == [(0, 2, 0), (2, 4, 0), (4, 7, 0)]
    assert split(7, 2, groups=2) == [(0, 3, 0), (3, 7, 1)]
    assert split(7, 3, groups=2) == [(0, 2, 0), (2, 3, 0), (3, 4, 1), (4, 7, 1)]


@pytest.mark.parametrize("chunks", [2, 3, 7])
def test_scores_do_not_depend_on_chunking(chunks, triton_off):
    """Each chunk's loss is weighted by its share: the same scores up to the sums' reordering, which
    moves a float64 score by at most bound64 relative (fp32 per-tensor outputs: u32 more)."""
    torch.manual_seed(2)
    model = small_vit().double()
    x, y = batch(7, seed=3)
    whole = vitcore.score(model, x, y, proxies=DATA_PROXIES)
    split_ = vitcore.score(model, x, y, proxies=DATA_PROXIES, chunks=chunks)
    rel = 2 * U[torch.float32] + 2 * bound64(model, 7)
    for name in DATA_PROXIES:
        assert split_[name] == pytest.approx(whole[name], rel=rel, abs=rel * abs(whole["snip"])), name


def test_out_of_memory_doubles_the_chunks(monkeypatch, triton_off):
    """A CUDA out-of-memory error retries with twice the chunks, up to the batch size, then gives up."""
    run, tried = plan._run, []

    def fits_in_four_chunks(*args):
        tried.append(args[7])  # chunks
        if args[7] < 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return run(*args)

    monkeypatch.setattr(plan, "_run", fits_in_four_chunks)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    torch.manual_seed(8)
    model = small_vit().double()
    x, y = batch(6, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no BatchNorm here: no warning
        got = vitcore.score(model, x, y, proxies=["grad_norm", "fisher"])
    assert tried == [1, 2, 4]
    assert got == vitcore.score(model, x, y, proxies=["grad_norm", "fisher"], chunks=4)
    tried.clear()
    with pytest.raises(torch.cuda.OutOfMemoryError):
        vitcore.score(model, x[:3], y[:3], proxies=["grad_norm"])
    assert tried == [1, 2, 3]


def test_out_of_memory_with_batchnorm_warns_that_scores_change(monkeypatch, triton_off):
    run = plan._run

    def fits_in_two_chunks(*args):
        if args[7] < 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return run(*args)

    monkeypatch.setattr(plan, "_run", fits_in_two_chunks)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    x, y = batch(6, seed=5, classes=3)
    with pytest.warns(RuntimeWarning, match="chunks=1; retrying with chunks=2. The model's BatchNorm"):
        vitcore.score(bn_net().double(), x, y, proxies=["grad_norm"])


def test_model_weights_mode_grads_and_rng_are_left_alone(triton_off):
    torch.manual_seed(3)
    model = small_vit().eval()
    before = copy.deepcopy(model.state_dict())
    model.patch_embed.weight.grad = torch.full_like(model.patch_embed.weight, 123.0)
    x, y = batch(4, seed=6, dtype=torch.float32)
    rng = torch.get_rng_state()
    vitcore.score(model, x, y, proxies=list(PROXIES))
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.all(model.patch_embed.weight.grad == 123.0)  # .grad neither read nor changed
    assert all(p.grad is None for n, p in model.named_parameters() if n != "patch_embed.weight")
    assert torch.equal(torch.get_rng_state(), rng)


def test_batchnorm_buffers_and_per_module_modes_are_restored(triton_off):
    torch.manual_seed(10)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(144, 8), nn.BatchNorm1d(8), nn.Linear(8, 5))
    model.train()
    model[1].eval()  # a frozen BatchNorm inside a training model
    before = copy.deepcopy(model.state_dict())
    x, y = batch(4, seed=7, dtype=torch.float32)
    got = vitcore.score(model, x, y, proxies=list(ANY_MODEL))
    assert all(math.isfinite(v) for k, v in got.items() if k != "jacob_cov")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and not model[1].training and model[5].training


def test_scored_in_train_mode_whatever_the_mode_it_came_in(triton_off):
    """BatchNorm normalises with the batch's statistics during scoring, as foresight's train() does."""
    torch.manual_seed(14)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 17), nn.BatchNorm1d(17), nn.ReLU(), nn.Linear(17, 5)).double()
    x, y = batch(6, seed=8)

    def grad_norm(training):
        net = copy.deepcopy(model).train(training)
        grads = torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))
        return math.sqrt(sum(g.pow(2).sum().item() for g in grads))

    model.eval()
    got = vitcore.score(model, x, y, proxies=["grad_norm"])["grad_norm"]
    rel = U[torch.float32] + bound64(model, 6)
    assert got == pytest.approx(grad_norm(True), rel=rel, abs=0)
    assert got != pytest.approx(grad_norm(False), rel=1e3 * rel)  # the two modes differ on this model
    assert not model.training


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
    x, y = batch(4, seed=9)
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    vitcore.score(model, x, y, proxies=["synflow", "grad_norm"])
    assert all(p is q for p, q in zip(model.parameters(), params))
    assert all(torch.equal(p, b) for p, b in zip(params, before))


def test_a_batch_of_one_is_the_batch_twice(triton_off):
    """One example's mean loss equals that of the example twice: same gradient-based scores."""
    torch.manual_seed(7)
    model = small_vit().double()
    x, y = batch(1, seed=10)
    names = ["grad_norm", "snip", "plain", "grasp", "synflow", "params"]
    one = vitcore.score(model, x, y, proxies=names + ["fisher", "flops"])
    two = vitcore.score(model, torch.cat([x, x]), torch.cat([y, y]), proxies=names)
    rel = 2 * U[torch.float32] + 2 * bound64(model, 2)
    for name in names:
        assert one[name] == pytest.approx(two[name], rel=rel, abs=rel * two["snip"]), name
    assert math.isfinite(one["fisher"]) and one["flops"] > 0


def test_scoring_inside_no_grad(triton_off):
    model, (x, y) = small_vit(), batch(3, seed=11, dtype=torch.float32)
    expected = vitcore.score(model, x, y, proxies=["grad_norm", "grasp"])
    with torch.no_grad():
        assert vitcore.score(model, x, y, proxies=["grad_norm", "grasp"]) == expected


def test_nan_weights_give_nan_not_a_plausible_score(triton_off):
    """A proxy cannot look better by failing: zico and nwot do not turn NaN into 0 or a finite log-det."""
    torch.manual_seed(13)
    model = small_mlp()
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")
    x, y = batch(6, seed=12, dtype=torch.float32)
    got = vitcore.score(model, x, y, proxies=list(ANY_MODEL))
    assert {k for k, v in got.items() if math.isnan(v)} == set(ANY_MODEL) - {"params", "flops"}

"""The registry: every proxy file is listed, every listed unit is its file's, and the contract holds."""
import copy
import dataclasses
import importlib
import linecache
import math
import pathlib
import traceback
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import requires_cuda
from proxy_helpers import ANY_MODEL, U, batch, bn_net, bound64, small_vit
from torch import nn

import vitcore
from vitcore.passes import DATA_TAPS, PASSES
from vitcore.proxies import PROXIES, REGISTRY, UNITS
from vitcore.proxies.registry import INFRASTRUCTURE

PROXY_DIR = pathlib.Path(vitcore.proxies.__file__).parent


def test_every_proxy_file_is_registered():
    """A proxy file that the explicit list does not name would be silently missing from score."""
    files = {p.stem for p in PROXY_DIR.glob("*.py")} - set(INFRASTRUCTURE)
    assert files == set(PROXIES), (sorted(files - set(PROXIES)), sorted(set(PROXIES) - files))


@pytest.mark.parametrize("unit", REGISTRY, ids=[u.name for u in REGISTRY])
def test_each_unit_is_its_files_proxy(unit):
    module = importlib.import_module(f"vitcore.proxies.{unit.name}")
    assert module.PROXY is unit and UNITS[unit.name] is unit
    assert (unit.reduce is None) != (unit.host is None)
    assert set(unit.passes) <= set(PASSES) and set(unit.taps) <= set(DATA_TAPS)
    assert isinstance(unit.min_batch, int) and unit.min_batch >= 1
    assert module.__doc__ and unit.name in module.__doc__


def test_public_names_keep_their_order():
    assert vitcore.PROXIES == PROXIES == tuple(u.name for u in REGISTRY)
    assert PROXIES[:9] == ("grad_norm", "snip", "plain", "grasp", "synflow", "fisher", "jacob_cov", "nwot", "zico")
    assert set(PROXIES) >= {"params", "flops"}


def _models():
    torch.manual_seed(0)
    dropout = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
    return {"batchnorm": bn_net().double(), "dropout": dropout.double(), "vit": small_vit().double()}


@pytest.mark.parametrize("model_name", ["batchnorm", "dropout", "vit"])
def test_asking_for_a_proxy_never_changes_another(model_name, triton_off):
    """Issue 15 item 4: zico's half-batch forward changed grad_norm on a BatchNorm model (2.40036 alone,
    2.40382 with zico); a pass's BatchNorm statistics or dropout draws must not reach another pass.
    Each proxy alone equals the same proxy asked with every other (up to its fp32 output rounding)."""
    model = _models()[model_name]
    x, y = batch(6, seed=1, classes=3)
    names = list(PROXIES if model_name == "vit" else ANY_MODEL)
    together = vitcore.score(model, x, y, proxies=names)
    rel = U[torch.float32] + bound64(model, 6)
    for name in names:
        alone = vitcore.score(model, x, y, proxies=[name])[name]
        assert alone == pytest.approx(together[name], rel=rel, abs=rel * abs(together["snip"])), name
    pairs = vitcore.score(model, x, y, proxies=["grad_norm", "zico"])
    assert pairs["grad_norm"] == pytest.approx(together["grad_norm"], rel=rel, abs=0)


class _ReplacedBuffer(nn.Module):
    """A running mean that each training forward replaces (``self.mean = ...``, a new tensor, as user
    code and some normalisations write it) rather than updating in place as BatchNorm does."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.zeros(64, dtype=torch.float64))
        self.fc = nn.Linear(64, 3).double()

    def forward(self, x):
        x = x.flatten(1)  # (B, 64)
        if self.training:
            self.mean = 0.5 * self.mean + 0.5 * x.mean(0).detach()
        return self.fc(x - self.mean)


def test_a_buffer_replaced_during_a_pass_is_restored(triton_off):
    """score puts back a buffer that a pass replaced (not only one changed in place): the model leaves
    as it came, and each proxy alone equals it asked with every other."""
    torch.manual_seed(0)
    model = _ReplacedBuffer()
    x, y = batch(6, seed=3, classes=3)
    names = ["grad_norm", "snip", "zico", "grasp"]
    together = vitcore.score(model, x, y, proxies=names)
    assert not model.mean.any(), "the replaced buffer was not restored"
    for name in names:
        assert vitcore.score(model, x, y, proxies=[name])[name] == pytest.approx(together[name], rel=1e-12), name


def test_grad_norm_with_zico_is_the_whole_batch_gradient_on_batchnorm(triton_off):
    model = _models()["batchnorm"]
    x, y = batch(6, seed=2, classes=3)
    net = copy.deepcopy(model).train()
    grads = torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))
    ref = math.sqrt(sum(g.pow(2).sum().item() for g in grads))
    got = vitcore.score(model, x, y, proxies=["zico", "grad_norm"])["grad_norm"]
    assert got == pytest.approx(ref, rel=U[torch.float32] + bound64(model, 6), abs=0)


@pytest.mark.parametrize("name", [p for p in PROXIES if UNITS[p].reduce is not None])
def test_the_only_host_read_is_the_final_transfer(name, triton_off):
    """On fake tensors (no data) the first operation that needs values stops the run: for every proxy
    with a device step it must be the one transfer in vitcore.proxies.plan, so nothing before it syncs."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    model, (x, y) = small_vit(), batch(4, seed=3, dtype=torch.float32)
    with pytest.raises(Exception) as info:
        with FakeTensorMode(allow_non_fake_inputs=True):
            vitcore.score(model, x, y, proxies=[name])
    frame = [f for f in traceback.extract_tb(info.value.__traceback__) if f.filename.endswith("plan.py")][-1]
    assert "torch.cat(parts).cpu()" in frame.line, (frame.lineno, frame.line)


NATIVE = ["dss", "meco", "lswag", "swap"]
SYNCING = [(torch.linalg, "eigvalsh"), (torch.linalg, "eigh"), (torch.linalg, "svdvals"), (torch.linalg, "svd"),
           (torch, "unique"), (torch.Tensor, "unique"), (torch, "nonzero"), (torch.Tensor, "nonzero"),
           (torch, "masked_select"), (torch.Tensor, "masked_select")]


@pytest.mark.parametrize("name", NATIVE)
def test_the_native_proxies_call_no_op_that_syncs_on_cuda(name, monkeypatch, triton_off):
    """On CUDA these ops sync the device with the host (the linalg ones check cusolver's info; the rest
    size their output from the data), which the fake-tensor test above cannot see: none may run
    before the one transfer. dss and meco take their SVD / eigenvalues on the host, in finish."""
    def refuse(what):
        def call(*args, **kwargs):
            raise AssertionError(f"{what} syncs with the host on CUDA")
        return call

    for owner, attr in SYNCING:
        monkeypatch.setattr(owner, attr, refuse(attr))
    getitem = torch.Tensor.__getitem__

    def no_mask(self, index):
        parts = index if isinstance(index, tuple) else (index,)
        if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in parts):
            raise AssertionError("boolean-mask indexing syncs with the host on CUDA")
        return getitem(self, index)

    monkeypatch.setattr(torch.Tensor, "__getitem__", no_mask)
    model, (x, y) = small_vit(), batch(4, seed=3, dtype=torch.float32)
    assert math.isfinite(vitcore.score(model, x, y, proxies=[name])[name])


@requires_cuda
@pytest.mark.parametrize("fused", ["0", "1"])
@pytest.mark.parametrize("name", NATIVE)
def test_the_native_proxies_sync_once_on_cuda(name, fused, monkeypatch):
    """torch's sync debug mode reports every synchronizing CUDA op; "error" would stop at the planner's
    one transfer too, so the run is made in "warn" mode and the reports counted: exactly one, and it
    is that transfer (torch.cat(parts).cpu() in vitcore.proxies.plan)."""
    monkeypatch.setenv("VITCORE_TRITON", fused)
    model = small_vit().cuda()
    x, y = (t.cuda() for t in batch(4, seed=3, dtype=torch.float32))
    vitcore.score(model, x, y, proxies=[name])  # warm-up: kernel compilation and library handles
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = vitcore.score(model, x, y, proxies=[name])[name]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [(w.filename, w.lineno) for w in caught if "synchronizing CUDA operation" in str(w.message)]
    assert len(syncs) == 1, syncs
    (filename, lineno), = syncs
    assert filename.endswith("plan.py") and "torch.cat(parts).cpu()" in linecache.getline(filename, lineno), syncs
    assert math.isfinite(got)


@pytest.mark.parametrize("name", [p for p in PROXIES if UNITS[p].vit_only])
def test_vit_only_units_refuse_other_models(name, triton_off):
    """``vit_only`` says which units need a vitcore.ViT; they name the model they were given instead."""
    x, y = batch(6, seed=1, classes=3)
    with pytest.raises(TypeError, match="vitcore.ViT"):
        vitcore.score(bn_net().double(), x, y, proxies=[name])


def _broken(name, where):
    """The unit ``name`` with its reduce (or finish, or host) raising: a proxy's own bug on some network."""
    def boom(*args):
        raise RuntimeError(f"{name} broke in its {where}\nsecond line")

    return dataclasses.replace(UNITS[name], **{where: boom})


@pytest.mark.parametrize("name, where", [("meco", "reduce"), ("nwot", "finish"), ("flops", "host")])
def test_a_proxy_that_raises_leaves_the_others_scored(name, where, monkeypatch, triton_off):
    """One proxy raising in its own step took the whole network's record with it, every other proxy's score
    lost and the failing proxy unnamed; now the others are scored as alone and the failed one is named."""
    model = small_vit().double()
    x, y = batch(6, seed=1, classes=5)
    others = ["params", "grad_norm", "lswag", "dss"]
    alone = vitcore.score(model, x, y, proxies=others)
    monkeypatch.setitem(UNITS, name, _broken(name, where))
    with pytest.raises(vitcore.ProxyFailed, match=f"{name} failed: RuntimeError: {name} broke in its {where}$") as info:
        vitcore.score(model, x, y, proxies=others[:2] + [name] + others[2:])
    assert list(info.value.scores) == others[:2] + [name] + others[2:]
    assert math.isnan(info.value.scores[name]) and {k: info.value.scores[k] for k in others} == alone
    assert info.value.errors == {name: f"RuntimeError: {name} broke in its {where}"}


def _breaking(which, monkeypatch):
    """Make one shared pass raise: ``which`` in PASSES ("halves" is zico's own data pass, groups=2)."""
    plan = vitcore.proxies.plan
    name = {"data": "data_pass", "halves": "data_pass", "synflow": "synflow_grads", "hessian": "hessian_grad"}[which]
    real = getattr(plan, name)

    def pass_(*args, **kwargs):
        if name == "data_pass" and (which == "halves") != ("groups" in kwargs):
            return real(*args, **kwargs)
        raise RuntimeError(f"the {which} pass broke\nsecond line")

    monkeypatch.setattr(plan, name, pass_)


# which requested proxies read each pass (zico's halves are their own pass here: chunks=1 does not cut
# the batch in halves); grasp reads the data pass too
_READERS = {"data": ["grad_norm", "grasp", "nwot"], "halves": ["zico"], "synflow": ["synflow"],
            "hessian": ["grasp"]}


@pytest.mark.parametrize("which", list(_READERS))
def test_a_pass_that_raises_fails_only_the_proxies_that_read_it(which, monkeypatch, triton_off):
    """A failure inside a shared pass failed every proxy of the network; now the proxies that read the
    pass are NaN and named with the pass's error, and the others are scored as alone."""
    model = small_vit().double()
    x, y = batch(6, seed=1, classes=5)
    names = ["params", "grad_norm", "synflow", "grasp", "zico", "nwot"]
    lost = _READERS[which]
    alone = vitcore.score(model, x, y, proxies=[n for n in names if n not in lost])
    _breaking(which, monkeypatch)
    with pytest.raises(vitcore.ProxyFailed) as info:
        vitcore.score(model, x, y, proxies=names)
    assert list(info.value.scores) == names
    assert all(math.isnan(info.value.scores[n]) for n in lost)
    assert {n: v for n, v in info.value.scores.items() if n not in lost} == alone
    assert info.value.errors == {n: f"the {which} pass failed: "
                                    f"RuntimeError: the {which} pass broke" for n in lost}


@pytest.mark.parametrize("which", list(_READERS))
def test_a_pass_every_requested_proxy_reads_raises_its_own_error(which, monkeypatch, triton_off):
    """Nothing to keep: the pass's exception goes up unchanged."""
    _breaking(which, monkeypatch)
    x, y = batch(6, seed=1, classes=5)
    with pytest.raises(RuntimeError, match=f"^the {which} pass broke") as info:
        vitcore.score(small_vit().double(), x, y, proxies=_READERS[which])
    assert not isinstance(info.value, vitcore.ProxyFailed)


@pytest.mark.parametrize("names", [["params", "grad_norm"], ["meco", "zico"], ["synflow", "grasp"]])
def test_a_wrong_loss_fn_is_a_value_error_whatever_else_is_asked(names, triton_off):
    """A loss_fn that does not average is the caller's mistake: asking for a proxy that reads no data
    pass besides (params, meco, synflow) turned it into ProxyFailed."""
    x, y = batch(6, seed=1, classes=5)

    def per_example(logits, targets):
        return F.cross_entropy(logits, targets, reduction="none")

    with pytest.raises(ValueError, match=r"loss_fn returned a tensor of shape \(\d,\)") as info:
        vitcore.score(small_vit().double(), x, y, loss_fn=per_example, proxies=names)
    assert not isinstance(info.value, vitcore.ProxyFailed)


def test_a_data_pass_that_carries_zicos_halves_fails_zico_too(monkeypatch, triton_off):
    """chunks=2 of 6 cut the batch where its halves are cut: one pass serves both, and its failure is
    zico's as well as the data proxies'."""
    model = small_vit().double()
    x, y = batch(6, seed=1, classes=5)
    alone = vitcore.score(model, x, y, proxies=["params", "synflow"], chunks=2)
    _breaking("data", monkeypatch)
    with pytest.raises(vitcore.ProxyFailed) as info:
        vitcore.score(model, x, y, proxies=["params", "grad_norm", "zico", "synflow"], chunks=2)
    assert {n: v for n, v in info.value.scores.items() if n in alone} == alone
    assert math.isnan(info.value.scores["grad_norm"]) and math.isnan(info.value.scores["zico"])
    assert info.value.errors == {n: "the data pass failed: RuntimeError: the data pass broke"
                                 for n in ["grad_norm", "zico"]}


def test_out_of_memory_in_a_pass_some_proxies_skip_still_retries(monkeypatch, triton_off):
    """Out of memory is not the pass's readers' failure: score retries with twice the chunks."""
    plan = vitcore.proxies.plan
    real, tried = plan.data_pass, []

    def fits_in_two_chunks(model, inputs, targets, loss_fn, params, chunks, *args, **kwargs):
        tried.append(chunks)
        if chunks < 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, inputs, targets, loss_fn, params, chunks, *args, **kwargs)

    model = small_vit().double()
    x, y = batch(6, seed=1, classes=5)
    want = vitcore.score(model, x, y, proxies=["params", "grad_norm"], chunks=2)
    monkeypatch.setattr(plan, "data_pass", fits_in_two_chunks)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    tried.clear()
    assert vitcore.score(model, x, y, proxies=["params", "grad_norm"]) == want
    assert tried == [1, 2]


def test_a_scoring_run_keeps_the_other_proxies_of_a_network_a_proxy_failed_on(tmp_path, monkeypatch, capsys):
    from vitcore.cli import _print_table

    monkeypatch.setitem(UNITS, "meco", _broken("meco", "reduce"))
    arch = vitcore.Arch(embed_dim=12, depth=1, num_heads=[3], mlp_ratio=[2.0], head_dim=4, patch_size=4)
    records = vitcore.score_archs([arch], vitcore.load_batch("synthetic", 4, 0, vitcore.get_space("small")),
                                  str(tmp_path / "s.jsonl"), proxies=["params", "meco"], device="cpu")
    for record in records + vitcore.read_results(str(tmp_path / "s.jsonl")):  # returned, and the line written
        assert record["scores"]["params"] == record["params"] and math.isnan(record["scores"]["meco"])
        assert record["proxy_errors"] == {"meco": "RuntimeError: meco broke in its reduce"} and "error" not in record
    _print_table(records, ["params", "meco"], "params")
    assert f"{arch.id}  meco failed (scored NaN, the other proxies kept): RuntimeError: meco broke" in capsys.readouterr().out


def test_vit_only_units_are_refused_before_any_pass():
    calls = []
    model = bn_net().double()
    model.register_forward_hook(lambda *args: calls.append(1))
    x, y = batch(6, seed=1, classes=3)
    with pytest.raises(TypeError, match="dss, meco need a vitcore ViT or PiT .* got Sequential"):
        vitcore.score(model, x, y, proxies=["grad_norm", "dss", "meco"])
    assert not calls

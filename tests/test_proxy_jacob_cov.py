"""jacob_cov against foresight's recipe in float64: np.corrcoef of the input gradients, np.linalg.eig."""
import numpy as np
import pytest
import torch
from proxy_helpers import MODELS, U, batch, bound64, float64_train_copy

import vitcore
from vitcore.proxies.jacob_cov import corrcoef

K = 1e-5


def reference(model, x):
    """(score, abs bound): the bound is first order in the eigenvalues' perturbation δλ ≤ ||δC||_F,
    with δC from the correlations' length-F dot products (3F·u each), the gradients' own rounding
    (2·bound64) and the eigensolver's backward error (B·u·||C||, ||C|| ≤ B)."""
    model = float64_train_copy(model)
    xj = x.clone().requires_grad_(True)
    model(xj).sum().backward()
    J = xj.grad.reshape(len(x), -1).numpy()
    B, F_ = J.shape
    v = np.linalg.eig(np.corrcoef(J))[0].real
    score = -np.sum(np.log(v + K) + 1.0 / (v + K))
    u = U[torch.float64]
    dlam = B * (3 * F_ * u + 2 * bound64(model, B)) + B * B * u
    slope = np.abs(1.0 / (v + K) - 1.0 / (v + K) ** 2)
    return score, 2 * dlam * slope.sum()


@pytest.mark.parametrize("B", [2, 7])
@pytest.mark.parametrize("make", MODELS)
def test_jacob_cov_matches_float64(make, B, triton_off):
    torch.manual_seed(16)
    model = MODELS[make]().double()
    x, y = batch(B, seed=17)
    got = vitcore.score(model, x, y, proxies=["jacob_cov"])["jacob_cov"]
    value, tol = reference(model, x)
    assert abs(got - value) <= tol


def test_correlation_matches_numpy_and_is_nan_for_a_constant_row():
    x = torch.randn(5, 11, dtype=torch.float64)
    # each entry: length-11 dot products and norms, 3·11·u relative, |C_ij| <= 1
    np.testing.assert_allclose(corrcoef(x).numpy(), np.corrcoef(x.numpy()), rtol=0, atol=33 * U[torch.float64])
    x[2] = 3.0
    assert torch.isnan(corrcoef(x)[2]).all() and not torch.isnan(corrcoef(x)[0, 1])


def test_one_example_is_refused(triton_off):
    x, y = batch(1, seed=18)
    with pytest.raises(ValueError, match="jacob_cov needs at least 2 examples; the batch holds 1"):
        vitcore.score(MODELS["mlp"]().double(), x, y, proxies=["jacob_cov"])

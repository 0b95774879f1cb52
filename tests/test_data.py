"""The scoring minibatch (vitcore.data): digits, synthetic images, .npz files."""
import numpy as np
import pytest

from vitcore.data import load_batch
from vitcore.space import SPACES


def test_digits_batch_is_deterministic_and_normalised():
    a, b = load_batch("digits", 32, seed=1), load_batch("digits", 32, seed=1)
    assert a.inputs.shape == (32, 1, 8, 8) and a.num_classes == 10
    assert (a.inputs == b.inputs).all() and (a.targets == b.targets).all()
    assert abs(a.inputs.mean().item()) < 1e-5 and abs(a.inputs.std().item() - 1) < 0.05


def test_synthetic_batch_is_shaped_for_the_space():
    space = SPACES["imagenet"]
    batch = load_batch("synthetic", 3, seed=0, space=space)
    assert batch.inputs.shape == (3, space.in_chans, space.img_size, space.img_size)
    assert batch.num_classes == space.num_classes and ((0 <= batch.targets) & (batch.targets < 1000)).all()


def test_npz_batch_reads_images_and_labels(tmp_path):
    data = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(data, images=rng.random((5, 2, 4, 4)), labels=np.array([0, 3, 1, 2, 3]))
    batch = load_batch(str(data), 5, seed=0)
    assert batch.inputs.shape == (5, 2, 4, 4) and batch.num_classes == 4 and batch.name == str(data)
    assert sorted(batch.targets.tolist()) == [0, 1, 2, 3, 3]


def test_npz_data_with_nan_is_refused(tmp_path):
    data = tmp_path / "nan.npz"
    x = np.zeros((4, 8, 8), dtype=np.float32)
    x[1, 2, 3] = np.nan
    np.savez(data, x=x, y=np.arange(4))
    with pytest.raises(ValueError, match="images hold 1 NaN or infinite values"):
        load_batch(str(data), 2)

"""The scoring minibatch (vitcore.data): digits, synthetic images, .npz files."""
import os
import re

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from vitcore.data import load_batch
from vitcore.space import SPACES


def test_digits_batch_is_deterministic_and_normalised():
    a, b = load_batch("digits", 32, seed=1), load_batch("digits", 32, seed=1)
    assert a.inputs.shape == (32, 1, 8, 8) and a.num_classes == 10
    assert (a.inputs == b.inputs).all() and (a.targets == b.targets).all()
    digits = load_digits()
    idx = np.random.default_rng(1).choice(len(digits.target), size=32, replace=False)
    x = digits.images[idx, None].astype(np.float64)  # float64 reference: zero mean, unit (population) std
    ref = (x - x.mean()) / x.std()
    # fp32 rounding of the inputs, the 2048-long mean and std sums, the subtraction and the division
    atol = 8 * np.finfo(np.float32).eps * np.sqrt(ref.size) * np.abs(ref).max()
    assert np.abs(a.inputs.numpy() - ref).max() <= atol
    assert (a.targets.numpy() == digits.target[idx]).all()


def test_synthetic_batch_is_shaped_for_the_space():
    space = SPACES["imagenet"]
    batch = load_batch("synthetic", 3, seed=0, space=space)
    assert batch.inputs.shape == (3, space.in_chans, space.img_size, space.img_size)
    assert batch.num_classes == space.num_classes and ((0 <= batch.targets) & (batch.targets < 1000)).all()
    named = load_batch("synthetic", 3, seed=0, space="imagenet")  # a space's name: an AttributeError before
    assert torch.equal(named.inputs, batch.inputs) and torch.equal(named.targets, batch.targets)
    with pytest.raises(TypeError, match="space=5 must be a search space or its name"):
        load_batch("synthetic", 3, seed=0, space=5)


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
    message = f"{data}: images 'x' hold 1 NaN or infinite values, the first x[1, 2, 3] = nan"
    with pytest.raises(ValueError, match=re.escape(message)):
        load_batch(str(data), 2)


def _npz_bytes(tmp_path):
    full = tmp_path / "full.npz"
    np.savez(full, x=np.random.default_rng(0).random((40, 8, 8)), y=np.arange(40) % 4)
    return full.read_bytes()


@pytest.mark.parametrize("content", [
    lambda b: b"",  # empty
    lambda b: b[: len(b) // 2],  # cut off
    lambda b: b[:-20],  # the end of the archive's directory cut off
    lambda b: b"not an archive at all",
])
def test_an_unreadable_npz_is_a_clean_error(tmp_path, content):
    path = tmp_path / "bad.npz"
    path.write_bytes(content(_npz_bytes(tmp_path)))
    with pytest.raises(ValueError, match=f"{path}: not a readable .npz of images and labels"):
        load_batch(str(path), 2)


def test_npz_holding_one_array_or_text_labels(tmp_path):
    one = tmp_path / "one.npz"
    with open(one, "wb") as f:
        np.save(f, np.zeros((4, 8, 8)))  # an .npy under an .npz name
    with pytest.raises(ValueError, match="one .npy array, not an .npz archive"):
        load_batch(str(one), 2)
    text = tmp_path / "text.npz"
    np.savez(text, x=np.array([["a"] * 8] * 8 * 4).reshape(4, 8, 8), y=np.arange(4))
    with pytest.raises(ValueError, match=re.escape(f"{text}: images 'x' have dtype <U1; expected real numbers")):
        load_batch(str(text), 2)


def test_a_directory_is_reported_as_one(tmp_path):
    folder = tmp_path / "data.npz"
    folder.mkdir()
    with pytest.raises(ValueError, match="data file .* is a directory, not a file"):
        load_batch(str(folder), 2)


def test_a_synthetic_batch_larger_than_memory_is_refused_before_allocating():
    if not hasattr(os, "sysconf"):
        pytest.skip("the machine's memory is read with os.sysconf")
    with pytest.raises(ValueError, match=r"batch_size=1000000000: synthetic images of shape \(1000000000, 3, 224, 224\) "
                                         r"need 560760.5 GiB, more than this machine's"):
        load_batch("synthetic", 1_000_000_000, space=SPACES["imagenet"])


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(data=None), TypeError, "data=None must be a str"),
    (dict(batch_size=2.0), ValueError, "batch_size=2.0 must be a positive int"),
    (dict(batch_size=0), ValueError, "batch_size=0 must be a positive int"),
    (dict(seed=-1), ValueError, "seed=-1 must be a non-negative int"),
    (dict(seed="1"), ValueError, "seed='1' must be a non-negative int"),
    (dict(data="synthetic"), ValueError, "data='synthetic' needs a search space"),
])
def test_bad_arguments_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        load_batch(**{"data": "digits", "batch_size": 4, **kwargs})

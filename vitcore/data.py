"""One minibatch for scoring: the built-in digits images, synthetic noise, or a user's .npz file."""
import os
from dataclasses import dataclass

import numpy as np
import torch

DATA_CHOICES = ("digits", "synthetic", "PATH.npz")


@dataclass
class Batch:
    inputs: torch.Tensor  # (B, C, H, H) float32, normalised
    targets: torch.Tensor  # (B,) int64 class indices
    num_classes: int
    name: str

    @property
    def in_chans(self) -> int:
        return self.inputs.shape[1]

    @property
    def img_size(self) -> int:
        return self.inputs.shape[-1]


def _normalise(x: np.ndarray) -> np.ndarray:
    """Zero mean and unit variance over the whole batch (digits are 0..16 ink counts)."""
    return (x - x.mean()) / max(float(x.std()), 1e-12)


def _digits():
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    return digits.images[:, None].astype(np.float32), digits.target.astype(np.int64)  # (1797, 1, 8, 8)


def _npz(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path!r} does not exist")
    with np.load(path) as f:
        keys = set(f.files)
        xk = next((k for k in ("x", "images") if k in keys), None)
        yk = next((k for k in ("y", "labels") if k in keys), None)
        if xk is None or yk is None:
            raise ValueError(f"{path}: needs arrays 'x' (or 'images') and 'y' (or 'labels'); has {sorted(keys)}")
        x, y = np.asarray(f[xk], dtype=np.float32), np.asarray(f[yk])
    if x.ndim == 3:
        x = x[:, None]  # (N, H, W) -> (N, 1, H, W)
    if x.ndim != 4 or x.shape[2] != x.shape[3]:
        raise ValueError(f"{path}: images have shape {x.shape}, expected (N, C, H, H) or (N, H, H)")
    bad = np.count_nonzero(~np.isfinite(x))
    if bad:
        raise ValueError(f"{path}: images hold {bad} NaN or infinite values")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer) or (y < 0).any():
        raise ValueError(f"{path}: labels have shape {y.shape} and dtype {y.dtype}; expected {len(x)} ints >= 0")
    return x, y.astype(np.int64)


def load_batch(data: str = "digits", batch_size: int = 64, seed: int = 0, space=None) -> Batch:
    """``batch_size`` examples drawn without replacement with ``seed``.

    ``data`` is "digits" (scikit-learn's 8x8 digits, 10 classes), "synthetic" (Gaussian images
    shaped for ``space``, a SearchSpace, with random labels) or the path of an .npz file.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int")
    rng = np.random.default_rng(seed)
    if data == "digits":
        x, y = _digits()
    elif data == "synthetic":
        if space is None:
            raise ValueError("data='synthetic' needs a search space for the image shape")
        n = batch_size
        x = rng.standard_normal((n, space.in_chans, space.img_size, space.img_size), dtype=np.float32)
        y = rng.integers(0, space.num_classes, size=n)
        return Batch(torch.from_numpy(x), torch.from_numpy(y), space.num_classes, data)
    elif data.endswith(".npz"):
        x, y = _npz(data)
    else:
        raise ValueError(f"unknown data {data!r}; valid: {', '.join(DATA_CHOICES)}")
    if batch_size > len(x):
        raise ValueError(f"batch_size={batch_size} is larger than the {len(x)} examples of {data!r}")
    idx = rng.choice(len(x), size=batch_size, replace=False)
    inputs = torch.from_numpy(_normalise(x[idx]).astype(np.float32))
    return Batch(inputs, torch.from_numpy(y[idx]), int(y.max()) + 1, data)

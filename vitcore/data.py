"""One minibatch for scoring: the built-in digits images, synthetic noise, or a user's .npz file."""
import os
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from vitcore.paths import check_input_file

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
    path = check_input_file(path, "data file")
    try:
        loaded = np.load(path)  # allow_pickle=False: object arrays are refused
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("one .npy array, not an .npz archive of arrays")
        with loaded as f:
            keys = sorted(f.files)
            xk = next((k for k in ("x", "images") if k in keys), None)
            yk = next((k for k in ("y", "labels") if k in keys), None)
            x = np.asarray(f[xk], dtype=np.float32) if xk else None
            y = np.asarray(f[yk]) if yk else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # empty, cut off, not numeric
        raise ValueError(f"{path}: not a readable .npz of images and labels ({type(e).__name__}: {e})") from None
    if x is None or y is None:
        raise ValueError(f"{path}: needs arrays 'x' (or 'images') and 'y' (or 'labels'); has {keys}")
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


def _physical_memory() -> int:
    """Bytes of RAM (0 where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 0


def load_batch(data: str = "digits", batch_size: int = 64, seed: int = 0, space=None) -> Batch:
    """``batch_size`` examples drawn without replacement with ``seed``.

    ``data`` is "digits" (scikit-learn's 8x8 digits, 10 classes), "synthetic" (Gaussian images
    shaped for ``space``, a SearchSpace, with random labels) or the path of an .npz file with arrays
    ``x`` (or ``images``, (N, C, H, H) or (N, H, H)) and ``y`` (or ``labels``, N ints >= 0).
    Raises TypeError for arguments of the wrong type; FileNotFoundError for a missing file;
    ValueError for an unknown ``data``, a directory, an unreadable, empty or cut-off .npz, a batch
    larger than the data, or a synthetic batch larger than the machine's memory.
    """
    if not isinstance(data, str):
        raise TypeError(f"data={data!r} must be a str: {', '.join(DATA_CHOICES)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative int")
    rng = np.random.default_rng(seed)
    if data == "digits":
        x, y = _digits()
    elif data == "synthetic":
        if space is None:
            raise ValueError("data='synthetic' needs a search space for the image shape")
        shape = (batch_size, space.in_chans, space.img_size, space.img_size)
        nbytes = 4 * int(np.prod(shape, dtype=np.float64))  # float32 images
        if 0 < _physical_memory() < nbytes:
            raise ValueError(f"batch_size={batch_size}: synthetic images of shape {shape} need {nbytes / 2**30:.1f} GiB, "
                             f"more than this machine's {_physical_memory() / 2**30:.1f} GiB of memory")
        try:
            x = rng.standard_normal(shape, dtype=np.float32)
        except MemoryError:
            raise ValueError(f"batch_size={batch_size}: no memory for {nbytes / 2**30:.1f} GiB of synthetic images") \
                from None
        y = rng.integers(0, space.num_classes, size=batch_size)
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

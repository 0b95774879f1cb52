"""One minibatch for scoring: the built-in digits images, synthetic noise, or a user's .npz file."""
import os
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from vitcore.paths import check_input_file
from vitcore.space import get_space

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
    """Zero mean and unit variance over the whole batch (digits are 0..16 ink counts), as float32.

    Computed in float64 after scaling by the power of two nearest max|x| (exact, and the result does not
    change with the scale), so any finite images, float32 near its largest value or float64 beyond
    float32's range, normalise without overflow."""
    x = x.astype(np.float64)
    _, exponent = np.frexp(np.abs(x).max(initial=0.0))
    x = np.ldexp(x, -int(exponent))  # max|x| in [0.5, 1)
    return ((x - x.mean()) / max(float(x.std()), 1e-12)).astype(np.float32)


def _digits():
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    return digits.images[:, None].astype(np.float32), digits.target.astype(np.int64)  # (1797, 1, 8, 8)


MAX_CLASSES = 2**20  # labels are class indices: the head alone holds D·C weights (3 GiB at D=768, 2^20 classes)


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
            x = np.asarray(f[xk]) if xk else None
            y = np.asarray(f[yk]) if yk else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # empty, cut off, not numeric
        raise ValueError(f"{path}: not a readable .npz of images and labels ({type(e).__name__}: {e})") from None
    if x is None or y is None:
        raise ValueError(f"{path}: needs arrays 'x' (or 'images') and 'y' (or 'labels'); has {keys}")
    return check_arrays(path, x, xk, y, yk)


def check_arrays(path: str, x: np.ndarray, xk: str, y: np.ndarray, yk: str):
    """The images (N, C, H, H) in their own dtype and the labels as int64, after every check that a batch
    drawn from them could fail: ValueError naming ``path``, the array (``xk``, ``yk``) and the bad value.

    Images: real numbers (bool, int or float), shape (N, C, H, H) or (N, H, H) with at least one example
    and pixel, finite (the first NaN or infinity is named by its index). Labels: N integers (any int
    dtype; uint64 above 2^63 included) from 0 to ``MAX_CLASSES`` - 1."""
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{path}: images {xk!r} have dtype {x.dtype}; expected real numbers")
    if x.ndim not in (3, 4) or x.shape[-2] != x.shape[-1]:
        raise ValueError(f"{path}: images {xk!r} have shape {x.shape}, expected (N, C, H, H) or (N, H, H)")
    if x.size == 0:
        raise ValueError(f"{path}: images {xk!r} have shape {x.shape}: no examples or no pixels")
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{path}: images {xk!r} hold {np.count_nonzero(bad)} NaN or infinite values, the first "
                             f"{xk}{list(first)} = {x[first]}")
    if x.ndim == 3:
        x = x[:, None]  # (N, H, W) -> (N, 1, H, W)
    if y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "iu":
        raise ValueError(f"{path}: labels {yk!r} have shape {y.shape} and dtype {y.dtype}; expected {len(x)} ints")
    for i in (int(np.argmin(y)), int(np.argmax(y))):  # Python ints: a uint64 above 2^63 stays itself
        if not 0 <= int(y[i]) < MAX_CLASSES:
            raise ValueError(f"{path}: label {yk}[{i}] = {int(y[i])}; labels are class indices from 0 to "
                             f"{MAX_CLASSES - 1}")
    if int(y.max()) == 0:
        raise ValueError(f"{path}: every label {yk} is 0, so the models get a one-class head, whose cross-entropy "
                         "is 0 for every network (every gradient proxy 0): give labels of 2 or more classes")
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
    shaped for ``space``, a search space or its name, with random labels) or the path of an .npz file with arrays
    ``x`` (or ``images``, (N, C, H, H) or (N, H, H), any real dtype) and ``y`` (or ``labels``, N ints
    from 0 to ``MAX_CLASSES`` - 1), checked whole before a batch is drawn (``check_arrays``); a path
    ending in .npz in any case (``.NPZ``), or any existing file, is read as an .npz.
    Raises TypeError for arguments of the wrong type; FileNotFoundError for a missing file;
    ValueError for an unknown ``data``, a directory, an unreadable, empty or cut-off .npz, images or
    labels ``check_arrays`` refuses (naming the array and the first bad value), a batch
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
        space = get_space(space) if isinstance(space, str) else space
        if not all(hasattr(space, a) for a in ("in_chans", "img_size", "num_classes")):
            raise TypeError(f"space={space!r} must be a search space or its name (see vitcore.get_space)")
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
    elif data.lower().endswith(".npz") or os.path.isfile(data):  # an .npz by any name: its content decides
        x, y = _npz(data)
    else:
        raise ValueError(f"unknown data {data!r}; valid: {', '.join(DATA_CHOICES)}")
    if batch_size > len(x):
        raise ValueError(f"batch_size={batch_size} is larger than the {len(x)} examples of {data!r}")
    idx = rng.choice(len(x), size=batch_size, replace=False)
    inputs = torch.from_numpy(_normalise(x[idx]))
    return Batch(inputs, torch.from_numpy(y[idx]), int(y.max()) + 1, data)

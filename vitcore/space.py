"""ViT search spaces in the AutoFormer spirit: depth and width per network, heads and MLP ratio per block.

An ``Arch`` is one point of a space: everything but the data's image size, channels and classes,
which ``Arch.config(...)`` takes. Architectures serialise to JSON, and their ``id`` is a hash of
that JSON, so the same architecture has the same id in every run and on every machine.
"""
import hashlib
import json
import numbers
import random
from dataclasses import asdict, dataclass
from typing import Dict, List, Tuple

from vitcore.model import ViTConfig


@dataclass(frozen=True)
class SearchSpace:
    name: str
    img_size: int  # the data this space is made for: image side, channels, classes
    in_chans: int
    num_classes: int
    patch_sizes: Tuple[int, ...]
    embed_dims: Tuple[int, ...]
    depths: Tuple[int, ...]
    num_heads: Tuple[int, ...]  # choices per block
    mlp_ratios: Tuple[float, ...]  # choices per block
    head_dim: int  # every head is this wide, whatever the embedding width


SPACES: Dict[str, SearchSpace] = {
    # Small images (8x8 digits up to 32x32): patches of 2 or 4 divide 8, 16 and 32.
    "small": SearchSpace(
        name="small", img_size=8, in_chans=1, num_classes=10,
        patch_sizes=(2, 4), embed_dims=(32, 48, 64), depths=(1, 2, 3, 4),
        num_heads=(1, 2, 4), mlp_ratios=(2.0, 3.0, 4.0), head_dim=16,
    ),
    # AutoFormer-Tiny's choices at 224x224 with 16x16 patches.
    "imagenet": SearchSpace(
        name="imagenet", img_size=224, in_chans=3, num_classes=1000,
        patch_sizes=(16,), embed_dims=(192, 216, 240), depths=(12, 13, 14),
        num_heads=(3, 4), mlp_ratios=(3.5, 4.0), head_dim=64,
    ),
}


def get_space(name: str) -> SearchSpace:
    if name not in SPACES:
        raise ValueError(f"unknown search space {name!r}; valid: {', '.join(sorted(SPACES))}")
    return SPACES[name]


def _whole(v) -> int:
    if isinstance(v, numbers.Integral) or (isinstance(v, numbers.Real) and float(v).is_integer()):
        return int(v)
    raise TypeError("entries must be whole numbers")


def _real(v) -> float:
    if isinstance(v, numbers.Real):
        return float(v)
    raise TypeError("entries must be numbers")


def _entries(name: str, value, convert) -> tuple:
    """One entry per block (a list, tuple or 1-D array), each converted, or a TypeError naming ``name``."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TypeError(f"{name}={value!r} must be a list with one entry per block")
    try:
        if any(isinstance(v, bool) for v in value):
            raise TypeError("entries must be numbers, not bools")
        return tuple(convert(v) for v in value)
    except TypeError as e:
        raise TypeError(f"{name}={value!r}: {e}") from None


@dataclass(frozen=True)
class Arch:
    """One architecture: the choices a search space makes."""

    embed_dim: int
    depth: int
    num_heads: Tuple[int, ...]  # one per block
    mlp_ratio: Tuple[float, ...]  # one per block
    head_dim: int
    patch_size: int

    def __post_init__(self):
        # Whole numbers (2, 2.0, numpy ints) become ints and real numbers floats; anything else (a
        # string, 2.5 heads, True) is an error rather than silently another architecture.
        object.__setattr__(self, "num_heads", _entries("num_heads", self.num_heads, _whole))
        object.__setattr__(self, "mlp_ratio", _entries("mlp_ratio", self.mlp_ratio, _real))
        self.config(img_size=self.patch_size, in_chans=1, num_classes=1)  # validates the fields

    def config(self, img_size: int, in_chans: int, num_classes: int) -> ViTConfig:
        return ViTConfig(
            img_size=img_size, patch_size=self.patch_size, in_chans=in_chans, num_classes=num_classes,
            embed_dim=self.embed_dim, depth=self.depth, num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio, head_dim=self.head_dim,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["num_heads"], d["mlp_ratio"] = list(self.num_heads), list(self.mlp_ratio)
        return d

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no spaces; the id hashes exactly this text."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def id(self) -> str:
        return hashlib.sha1(self.to_json().encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, d: dict) -> "Arch":
        fields = set(cls.__dataclass_fields__)
        if not isinstance(d, dict) or set(d) - {"id"} != fields:
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"architecture {got} must have exactly the fields {sorted(fields)}")
        arch = cls(**{k: d[k] for k in fields})
        if "id" in d and d["id"] != arch.id:
            raise ValueError(f"architecture id {d['id']!r} does not match its fields (id {arch.id!r})")
        return arch

    @classmethod
    def from_json(cls, text: str) -> "Arch":
        return cls.from_dict(json.loads(text))


def sample(space: SearchSpace, n: int, seed: int = 0) -> List[Arch]:
    """``n`` distinct architectures drawn uniformly from ``space``; the same (space, n, seed), the same list."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} must be a positive int")
    rng = random.Random(f"{space.name}:{seed}")
    archs: Dict[str, Arch] = {}
    for _ in range(100 * n):
        depth = rng.choice(space.depths)
        arch = Arch(
            embed_dim=rng.choice(space.embed_dims),
            depth=depth,
            num_heads=tuple(rng.choice(space.num_heads) for _ in range(depth)),
            mlp_ratio=tuple(rng.choice(space.mlp_ratios) for _ in range(depth)),
            head_dim=space.head_dim,
            patch_size=rng.choice(space.patch_sizes),
        )
        archs.setdefault(arch.id, arch)
        if len(archs) == n:
            return list(archs.values())
    raise ValueError(f"space {space.name!r} has fewer than n={n} distinct architectures")

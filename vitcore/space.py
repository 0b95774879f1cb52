"""ViT search spaces in the AutoFormer spirit: depth and width per network, heads and MLP ratio per block.

An ``Arch`` is one point of a space: everything but the data's image size, channels and classes,
which ``Arch.config(...)`` takes. Architectures serialise to JSON, and their ``id`` is a hash of
that JSON, so the same architecture has the same id in every run and on every machine.

Head width: ``head_dim`` fixes every head's width d whatever the embedding width D (AutoFormer's
supernet: 64); ``head_dim=None`` (null or absent in JSON) gives each block heads D / H wide, as the
AutoFormer networks trained from scratch have (the QKV projection maps D to 3·D); then D must be
divisible by every block's H.

PiT (``vitcore.pit``): a ``PiTArch`` is a pooling ViT of stages (``base_dim``, blocks and heads per
stage, one MLP ratio); the "pit" space is Auto-Prox's PiT space. ``arch_from_dict`` reads either
family from its fields (a ``base_dim`` makes it a PiT).
"""
import hashlib
import json
import numbers
import random
import sys
from collections.abc import Mapping, Set as AbstractSet
from dataclasses import asdict, dataclass
from functools import lru_cache
from itertools import product
from typing import Dict, List, Optional, Tuple, Union

from tqdm import tqdm

from vitcore.model import ViTConfig, positive_int
from vitcore.paths import load_json
from vitcore.pit import PiTConfig


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
    head_dim: Optional[int]  # every head is this wide, whatever the embedding width; None: D / H

    def __post_init__(self):
        if self.head_dim is None:
            for d in self.embed_dims:
                for h in self.num_heads:
                    if d % h:
                        raise ValueError(f"space {self.name!r}: embed_dim={d} is not divisible by num_heads={h} "
                                         "(head_dim=None makes heads embed_dim / num_heads wide)")

    @property
    def size(self) -> int:
        """How many distinct architectures the space holds: Σ over depths L of
        |patch sizes| · |embed dims| · (|num_heads| · |mlp ratios|)^L (heads and ratio chosen per block)."""
        per_block = len(set(self.num_heads)) * len(set(self.mlp_ratios))
        return len(set(self.patch_sizes)) * len(set(self.embed_dims)) * sum(per_block**L for L in set(self.depths))

    def draw_fields(self, rng: random.Random) -> tuple:
        """One architecture's fields, every choice uniform (depth first, then per block), as the
        arguments of ``Arch``: cheap to compare, where building the ``Arch`` checks its config."""
        depth = rng.choice(self.depths)
        embed_dim = rng.choice(self.embed_dims)
        num_heads = tuple(rng.choice(self.num_heads) for _ in range(depth))
        mlp_ratio = tuple(rng.choice(self.mlp_ratios) for _ in range(depth))
        return embed_dim, depth, num_heads, mlp_ratio, self.head_dim, rng.choice(self.patch_sizes)

    def draw(self, rng: random.Random) -> "Arch":
        """One architecture, every choice uniform (``draw_fields``)."""
        return Arch(*self.draw_fields(rng))


@lru_cache(maxsize=None)
def _heads_sequences(stage_heads: Tuple[Tuple[int, ...], ...]) -> Tuple[Tuple[int, ...], ...]:
    """``PiTSpace.heads_sequences``, enumerated once per space rather than at every draw."""
    return tuple(h for h in product(*(sorted(set(c)) for c in stage_heads))
                 if all(b % a == 0 for a, b in zip(h, h[1:])))


@dataclass(frozen=True)
class PiTSpace:
    """A PiT space: a base width and an MLP ratio per network, blocks and heads per stage.

    Heads per stage are drawn among the sequences in which each stage's heads are a multiple of the
    stage's before (PiT's pooling needs it), uniformly."""

    name: str
    img_size: int  # the data this space is made for: image side, channels, classes
    in_chans: int
    num_classes: int
    patch_size: int
    stride: int
    base_dims: Tuple[int, ...]
    mlp_ratios: Tuple[float, ...]
    stage_depths: Tuple[Tuple[int, ...], ...]  # choices of blocks, per stage
    stage_heads: Tuple[Tuple[int, ...], ...]  # choices of heads, per stage

    def __post_init__(self):
        if len(self.stage_depths) != len(self.stage_heads) or not self.stage_heads:
            raise ValueError(f"space {self.name!r}: stage_depths and stage_heads need one tuple per stage")
        if not self.heads_sequences():
            raise ValueError(f"space {self.name!r}: no heads sequence has each stage a multiple of the one before")

    def heads_sequences(self) -> List[Tuple[int, ...]]:
        """Every heads-per-stage choice in which each stage's heads are a multiple of the stage's before."""
        return list(_heads_sequences(self.stage_heads))

    @property
    def size(self) -> int:
        """|base dims| · |MLP ratios| · Π_s |depth choices of s| · |valid heads sequences|."""
        n = len(set(self.base_dims)) * len(set(self.mlp_ratios)) * len(self.heads_sequences())
        for choices in self.stage_depths:
            n *= len(set(choices))
        return n

    def draw_fields(self, rng: random.Random) -> tuple:
        """One architecture's fields, every choice uniform (heads among the valid sequences), as the
        arguments of ``PiTArch``."""
        base_dim = rng.choice(self.base_dims)
        depth = tuple(rng.choice(c) for c in self.stage_depths)
        num_heads = rng.choice(_heads_sequences(self.stage_heads))
        return base_dim, depth, num_heads, rng.choice(self.mlp_ratios), self.patch_size, self.stride

    def draw(self, rng: random.Random) -> "PiTArch":
        """One architecture, every choice uniform (``draw_fields``)."""
        return PiTArch(*self.draw_fields(rng))


SPACES: Dict[str, Union[SearchSpace, PiTSpace]] = {
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
    # The same choices with heads embed_dim / num_heads wide: the AutoFormer-Tiny networks trained on
    # CIFAR-100 (../shared/data/autoformer-tiny-100.jsonl's c100 columns).
    "autoformer": SearchSpace(
        name="autoformer", img_size=224, in_chans=3, num_classes=100,
        patch_sizes=(16,), embed_dims=(192, 216, 240), depths=(12, 13, 14),
        num_heads=(3, 4), mlp_ratios=(3.5, 4.0), head_dim=None,
    ),
    # Auto-Prox's PiT space (lliai/Auto-Prox-AAAI24, configs/auto/search/pit-all.yaml) on 224² CIFAR-100.
    "pit": PiTSpace(
        name="pit", img_size=224, in_chans=3, num_classes=100, patch_size=16, stride=8,
        base_dims=(16, 24, 32, 40), mlp_ratios=(2.0, 4.0, 6.0, 8.0),
        stage_depths=((1, 2, 3), (4, 6, 8), (2, 4, 6)), stage_heads=((2, 4, 8),) * 3,
    ),
}


def get_space(name: str) -> Union[SearchSpace, PiTSpace]:
    if not isinstance(name, str):
        raise TypeError(f"space name must be a str, got {type(name).__name__}")
    if name not in SPACES:
        raise ValueError(f"unknown search space {name!r}; valid: {', '.join(sorted(SPACES))}")
    return SPACES[name]


def _whole(v) -> int:
    if isinstance(v, numbers.Integral) or (isinstance(v, numbers.Real) and float(v).is_integer()):
        return int(v)
    raise TypeError("entries must be whole numbers")


def _whole_fields(arch, names) -> None:
    """Set each field of ``names`` that holds a whole number of another type (192.0, a numpy int) to
    that int, so it serialises and hashes as the int does; any other value is left for the config's
    check to name (2.5, a string, a bool)."""
    for name in names:
        v = getattr(arch, name)
        if not isinstance(v, (bool, int)) and isinstance(v, numbers.Real) and float(v).is_integer():
            object.__setattr__(arch, name, int(v))


def _real(v) -> float:
    if isinstance(v, numbers.Real):
        return float(v)
    raise TypeError("entries must be numbers")


def _entries(name: str, value, convert, per: str = "block") -> tuple:
    """One entry per block, or per ``per`` (a list, tuple or 1-D array), each converted, or a TypeError
    naming ``name``."""
    if isinstance(value, (str, bytes, Mapping, AbstractSet)) or not hasattr(value, "__len__"):
        raise TypeError(f"{name}={value!r} must be a list with one entry per {per}")  # a set has no order
    try:
        if any(isinstance(v, bool) for v in value):
            raise TypeError("entries must be numbers, not bools")
        return tuple(convert(v) for v in value)
    except TypeError as e:
        raise TypeError(f"{name}={value!r}: {e}") from None
    except OverflowError:  # float(10**400)
        raise ValueError(f"{name}={value!r:.80}: an entry is beyond a float's range") from None


class _Serial:
    """JSON and id for an architecture class with ``to_dict`` and ``from_dict``."""

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no spaces; the id hashes exactly this text."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def id(self) -> str:
        return hashlib.sha1(self.to_json().encode()).hexdigest()[:12]

    @classmethod
    def from_json(cls, text: str):
        if not isinstance(text, (str, bytes)):
            raise TypeError(f"text must be a JSON string, got {type(text).__name__}")
        return cls.from_dict(load_json(text))


@dataclass(frozen=True)
class Arch(_Serial):
    """One ViT architecture: the choices a search space makes."""

    embed_dim: int
    depth: int
    num_heads: Tuple[int, ...]  # one per block
    mlp_ratio: Tuple[float, ...]  # one per block
    head_dim: Optional[int]  # d for every head; None: embed_dim / num_heads per block
    patch_size: int

    def __post_init__(self):
        # Whole numbers (2, 2.0, numpy ints) become ints and real numbers floats; anything else (a
        # string, 2.5 heads, True) is an error rather than silently another architecture.
        _whole_fields(self, ("embed_dim", "depth", "head_dim", "patch_size"))
        object.__setattr__(self, "num_heads", _entries("num_heads", self.num_heads, _whole))
        object.__setattr__(self, "mlp_ratio", _entries("mlp_ratio", self.mlp_ratio, _real))
        positive_int("patch_size", self.patch_size)  # before it stands in for the image size below
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

    @classmethod
    def from_dict(cls, d: dict) -> "Arch":
        """An architecture from its fields (and optionally its ``id``, checked); ``head_dim`` may be
        absent, meaning None (heads embed_dim / num_heads wide)."""
        return _from_fields(cls, d, optional={"head_dim": None})


def _from_fields(cls, d: dict, optional: dict):
    """``cls`` from the dict ``d`` of its fields (those in ``optional`` may be absent: their defaults) and
    optionally its ``id``, checked against the fields."""
    fields = set(cls.__dataclass_fields__)
    if not isinstance(d, dict):
        raise TypeError(f"architecture must be a dict, got {type(d).__name__}")
    given = set(d) - {"id"}
    if not fields - set(optional) <= given <= fields:
        absent = f" ({', '.join(sorted(optional))} may be absent)" if optional else ""
        raise ValueError(f"architecture {sorted(d)} must have exactly the fields {sorted(fields)}{absent}")
    arch = cls(**{k: d[k] if k in d else optional[k] for k in fields})
    if "id" in d and d["id"] != arch.id:
        raise ValueError(f"architecture id {d['id']!r} does not match its fields (id {arch.id!r})")
    return arch


@dataclass(frozen=True)
class PiTArch(_Serial):
    """One PiT (``vitcore.pit``): blocks and heads per stage, heads ``base_dim`` wide, one MLP ratio."""

    base_dim: int  # d, every head's width; stage s is base_dim · num_heads[s] wide
    depth: Tuple[int, ...]  # blocks per stage
    num_heads: Tuple[int, ...]  # heads per stage, each a multiple of the stage's before
    mlp_ratio: float
    patch_size: int = 16  # the patch embedding's kernel and stride (PiT's and Auto-Prox's 16 and 8)
    stride: int = 8

    def __post_init__(self):
        _whole_fields(self, ("base_dim", "patch_size", "stride"))  # 16.0 is 16, as in Arch
        object.__setattr__(self, "depth", _entries("depth", self.depth, _whole, per="stage"))
        object.__setattr__(self, "num_heads", _entries("num_heads", self.num_heads, _whole, per="stage"))
        positive_int("patch_size", self.patch_size)  # before it stands in for the image size below
        if isinstance(self.mlp_ratio, bool):
            raise TypeError(f"mlp_ratio={self.mlp_ratio!r} must be a number")
        try:
            object.__setattr__(self, "mlp_ratio", _real(self.mlp_ratio))
        except TypeError:
            raise TypeError(f"mlp_ratio={self.mlp_ratio!r} must be a number (one for every block)") from None
        except OverflowError:
            raise ValueError(f"mlp_ratio={self.mlp_ratio!r:.80} is beyond a float's range") from None
        self.config(img_size=self.patch_size, in_chans=1, num_classes=1)  # validates the fields

    def config(self, img_size: int, in_chans: int, num_classes: int) -> PiTConfig:
        return PiTConfig(
            img_size=img_size, patch_size=self.patch_size, stride=self.stride, in_chans=in_chans,
            num_classes=num_classes, base_dim=self.base_dim, depth=self.depth, num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["depth"], d["num_heads"] = list(self.depth), list(self.num_heads)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PiTArch":
        """A PiT from its fields (and optionally its ``id``, checked); ``patch_size`` and ``stride`` may be
        absent, meaning 16 and 8. A ``head_dim`` (a ViT's field) is accepted when it says what a PiT is,
        null or ``base_dim``: a PiT's heads are base_dim = D_s / H_s wide; any other value is a ValueError."""
        if isinstance(d, dict) and "head_dim" in d:
            if d["head_dim"] is not None and d["head_dim"] != d.get("base_dim"):
                raise ValueError(f"head_dim={d['head_dim']!r}: a PiT's heads are base_dim={d.get('base_dim')!r} wide")
            d = {k: v for k, v in d.items() if k != "head_dim"}
        return _from_fields(cls, d, optional={"patch_size": 16, "stride": 8})


AnyArch = Union[Arch, PiTArch]
ARCH_TYPES = (Arch, PiTArch)


def is_arch_id(value) -> bool:
    """True for a string of 12 lowercase hex digits: the form of vitcore's architecture ids (``_Serial.id``)."""
    return isinstance(value, str) and len(value) == 12 and all(c in "0123456789abcdef" for c in value)


def without_label(d):
    """``d`` without an ``id`` that is not of the form of vitcore's ids (a file's own label, "pit_017", 3);
    an id of that form stays, for ``from_dict`` to check against the fields. Anything else unchanged."""
    if isinstance(d, dict) and "id" in d and not is_arch_id(d["id"]):
        return {k: v for k, v in d.items() if k != "id"}
    return d


def arch_from_dict(d: dict) -> AnyArch:
    """A ViT (``Arch``) or, when ``d`` has a ``base_dim``, a PiT (``PiTArch``) from its fields.

    Raises TypeError for a non-dict or a field of the wrong type, ValueError for missing or extra
    fields and invalid values."""
    if isinstance(d, dict) and "base_dim" in d:
        return PiTArch.from_dict(d)
    return Arch.from_dict(d)


def sample(space: Union[SearchSpace, PiTSpace], n: int, seed: int = 0) -> List["AnyArch"]:
    """``n`` distinct architectures drawn uniformly from ``space``; the same (space, n, seed), the same list.

    Raises TypeError for a ``space`` that is not a SearchSpace or an ``n`` / ``seed`` that is not an
    int (Python's or NumPy's), ValueError for n < 1 or more than the space holds (``space.size``, checked before drawing), or
    a negative seed.
    """
    if not isinstance(space, (SearchSpace, PiTSpace)):
        raise TypeError(f"space must be a SearchSpace or PiTSpace (see get_space), got {type(space).__name__}")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n={n!r} must be an int")
    if n < 1:
        raise ValueError(f"n={n!r} must be a positive int")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed={seed!r} must be an int")
    n, seed = int(n), int(seed)  # NumPy ints as Arch takes them; the same list as the ints give
    if seed < 0:
        raise ValueError(f"seed={seed}: expected a non-negative int (as vitcore score and ViT take)")
    if n > space.size:
        raise ValueError(f"n={n}: space {space.name!r} holds {space.size:,} distinct architectures")
    rng = random.Random(f"{space.name}:{seed}")
    build = Arch if isinstance(space, SearchSpace) else PiTArch
    drawn: Dict[tuple, None] = {}  # distinct fields are distinct architectures (ids): built once kept
    # n near the space's size takes about n·ln(n) draws (the coupon collector's): a bar after a second
    with tqdm(total=n, desc="sampling", unit="arch", delay=1.0, disable=None, file=sys.stderr) as bar:
        for _ in range(100 * n):
            fields = space.draw_fields(rng)
            if fields not in drawn:
                drawn[fields] = None
                bar.update()
                if len(drawn) == n:
                    return [build(*fields) for fields in drawn]
    raise ValueError(f"space {space.name!r} has fewer than n={n} distinct architectures")

import json
import pathlib

import numpy as np
import pytest

from vitcore.cost import vit_cost
from vitcore.model import ViT
from vitcore.space import SPACES, Arch, SearchSpace, arch_from_dict, get_space, sample


@pytest.mark.parametrize("name", sorted(n for n, s in SPACES.items() if isinstance(s, SearchSpace)))  # PiT: test_pit
def test_sample_is_deterministic_distinct_and_in_the_space(name):
    space = get_space(name)
    a, b = sample(space, 20, seed=3), sample(space, 20, seed=3)
    assert [x.id for x in a] == [x.id for x in b]
    assert len({x.id for x in a}) == 20
    assert [x.id for x in sample(space, 20, seed=4)] != [x.id for x in a]
    for arch in a:
        assert arch.depth in space.depths and arch.embed_dim in space.embed_dims
        assert len(arch.num_heads) == len(arch.mlp_ratio) == arch.depth
        assert set(arch.num_heads) <= set(space.num_heads) and set(arch.mlp_ratio) <= set(space.mlp_ratios)
        assert arch.patch_size in space.patch_sizes and arch.head_dim == space.head_dim
        arch.config(space.img_size, space.in_chans, space.num_classes)  # a valid ViT


def test_imagenet_preset_is_autoformer_tiny():
    s = get_space("imagenet")
    assert (s.img_size, s.patch_sizes, s.embed_dims, s.depths) == (224, (16,), (192, 216, 240), (12, 13, 14))
    assert (s.num_heads, s.mlp_ratios, s.head_dim) == ((3, 4), (3.5, 4.0), 64)


def test_json_round_trip_and_stable_id():
    arch = Arch(embed_dim=48, depth=2, num_heads=[2, 4], mlp_ratio=[3.0, 2.0], head_dim=16, patch_size=4)
    assert Arch.from_json(arch.to_json()) == arch
    d = json.loads(arch.to_json())
    assert Arch.from_dict({**d, "id": arch.id}) == arch
    # The id hashes the canonical JSON; both are pinned so ids never change between versions.
    assert arch.to_json() == (
        '{"depth":2,"embed_dim":48,"head_dim":16,"mlp_ratio":[3.0,2.0],"num_heads":[2,4],"patch_size":4}'
    )
    assert arch.id == "7aee59c03cc4"
    assert Arch(48, 2, (2, 4), (3.0, 2.0), 16, 4).id == arch.id


def test_bad_architectures_and_names():
    with pytest.raises(ValueError, match="unknown search space 'tiny'; valid: autoformer, imagenet, pit, small"):
        get_space("tiny")
    with pytest.raises(ValueError, match="num_heads=.* has 1 entries, expected depth=2"):
        Arch(embed_dim=48, depth=2, num_heads=[2], mlp_ratio=[3.0, 2.0], head_dim=16, patch_size=4)
    with pytest.raises(ValueError, match="does not match its fields"):
        Arch.from_dict({**json.loads(sample(SPACES["small"], 1)[0].to_json()), "id": "0" * 12})
    with pytest.raises(ValueError, match="must have exactly the fields"):
        Arch.from_dict({"embed_dim": 48})
    with pytest.raises(ValueError, match="n=0"):
        sample(SPACES["small"], 0)


@pytest.mark.parametrize("field, value, error, message", [
    ("num_heads", "24", TypeError, "num_heads='24' must be a list with one entry per block"),
    ("num_heads", 2, TypeError, "num_heads=2 must be a list with one entry per block"),
    ("num_heads", [2.7, 3], TypeError, r"num_heads=\[2.7, 3\]: entries must be whole numbers"),
    ("num_heads", [True, 3], TypeError, r"num_heads=\[True, 3\]: entries must be numbers, not bools"),
    ("num_heads", ["2", 3], TypeError, r"num_heads=\['2', 3\]: entries must be whole numbers"),
    ("mlp_ratio", [None, 2.0], TypeError, r"mlp_ratio=\[None, 2.0\]: entries must be numbers"),
    ("mlp_ratio", "23", TypeError, "mlp_ratio='23' must be a list with one entry per block"),
    ("mlp_ratio", [float("inf"), 2.0], ValueError, r"mlp_ratio=\(inf, 2.0\): entries must be positive and finite"),
    ("mlp_ratio", [float("nan"), 2.0], ValueError, r"mlp_ratio=\(nan, 2.0\): entries must be positive and finite"),
    ("mlp_ratio", [10**400, 2.0], ValueError, "mlp_ratio=.*: an entry is beyond a float's range"),
    ("num_heads", {2: 0, 3: 0}, TypeError, r"num_heads=\{2: 0, 3: 0\} must be a list with one entry per block"),
    ("num_heads", {2, 3}, TypeError, r"num_heads=\{2, 3\} must be a list"),  # a set: in no order
    ("patch_size", 0, ValueError, "patch_size=0 must be positive"),  # named img_size before
    ("patch_size", -2, ValueError, "patch_size=-2 must be positive"),
    ("depth", 2.5, TypeError, "depth=2.5 must be an int"),
    ("embed_dim", "48", TypeError, "embed_dim='48' must be an int"),
])
def test_wrong_types_are_named_not_coerced(field, value, error, message):
    """A JSON architecture with a wrong type is an error, never a different architecture."""
    d = {"embed_dim": 48, "depth": 2, "num_heads": [2, 3], "mlp_ratio": [3.0, 2.0], "head_dim": 16, "patch_size": 4}
    with pytest.raises(error, match=message):
        Arch.from_dict({**d, field: value})


@pytest.mark.parametrize("num_heads, mlp_ratio", [
    ([2.0, 3.0], [3, 2]),  # JSON written by a float-typed tool
    (np.array([2, 3]), np.array([3.0, 2.0], dtype=np.float32)),
    ([np.int64(2), np.int64(3)], (np.float64(3.0), 2)),
])
def test_whole_and_real_numbers_of_any_type_are_the_same_architecture(num_heads, mlp_ratio):
    d = {"embed_dim": 48, "depth": 2, "head_dim": 16, "patch_size": 4}
    plain = Arch(num_heads=(2, 3), mlp_ratio=(3.0, 2.0), **d)
    other = Arch(num_heads=num_heads, mlp_ratio=mlp_ratio, **d)
    assert other == plain and other.id == plain.id and type(other.num_heads[0]) is int


@pytest.mark.parametrize("whole", [float, np.int64, np.float32])
def test_whole_numbers_of_any_type_in_scalar_fields_are_the_same_architecture(whole):
    """A truth written by a float-typed tool (pandas) has 192.0 for every int; it was refused for the
    scalar fields (embed_dim, depth, head_dim, patch_size) while the per-block lists took 3.0."""
    d = {"embed_dim": 192, "depth": 2, "num_heads": [3, 4], "mlp_ratio": [3.5, 4.0], "head_dim": 64, "patch_size": 16}
    plain = Arch.from_dict(d)
    other = Arch.from_dict({**d, **{k: whole(d[k]) for k in ("embed_dim", "depth", "head_dim", "patch_size")}})
    assert other == plain and other.id == plain.id and other.to_json() == plain.to_json()
    assert all(type(getattr(other, k)) is int for k in ("embed_dim", "depth", "head_dim", "patch_size"))


DEV_SET = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "autoformer-tiny-100.jsonl"
requires_dev_set = pytest.mark.skipif(not DEV_SET.exists(), reason=f"{DEV_SET} is not here")


def _dev_rows(k):
    with open(DEV_SET) as f:
        return [json.loads(line) for line, _ in zip(f, range(k))]


def _autoformer_params(D, ratios, classes):
    """Counted by hand for heads D / H wide (QKV maps D to 3D, whatever H), 224² images, 16² patches:
    patch conv 3·16·16·D + D, class token D, positions 197·D; per block two LayerNorms 4D, QKV 3D² + 3D,
    W^O D² + D, fc1 D·h + h, fc2 h·D + D with h = round(r·D); final LayerNorm 2D, head D·C + C."""
    total = 768 * D + D + D + 197 * D
    for r in ratios:
        h = round(r * D)
        total += 4 * D + (3 * D * D + 3 * D) + (D * D + D) + (D * h + h) + (h * D + D)
    return total + 2 * D + D * classes + classes


@requires_dev_set
@pytest.mark.parametrize("row", [0, 1, 2])
def test_dev_set_networks_are_built_as_described(row):
    """The dev set's networks (its README: heads embed_dim / num_heads wide, 224², 16² patches, a
    class token) from its JSON rows as they are (no head_dim key), CIFAR-100's 100 classes."""
    d = _dev_rows(row + 1)[row]
    arch = Arch.from_dict({k: v for k, v in d.items() if k != "acc"})
    assert arch.head_dim is None
    model = ViT(arch.config(224, 3, 100))
    D = d["embed_dim"]
    assert [b.attn.qkv.out_features for b in model.blocks] == [3 * D] * d["depth"]
    assert [b.attn.head_dim for b in model.blocks] == [D // h for h in d["num_heads"]]
    count = sum(p.numel() for p in model.parameters())
    assert count == _autoformer_params(D, d["mlp_ratio"], 100)
    assert vit_cost(arch.config(224, 3, 100)).params == count


def test_hand_count_of_one_autoformer_network():
    """The formula above written out for D = 192, two blocks (ratios 3.5, 4.0: h = 672, 768), 100 classes."""
    D = 192
    expected = (768 * 192 + 192) + 192 + 197 * 192  # patch conv, class token, positions
    expected += 4 * 192 + (3 * 192 * 192 + 3 * 192) + (192 * 192 + 192) + (192 * 672 + 672) + (672 * 192 + 192)
    expected += 4 * 192 + (3 * 192 * 192 + 3 * 192) + (192 * 192 + 192) + (192 * 768 + 768) + (768 * 192 + 192)
    expected += 2 * 192 + 192 * 100 + 100
    arch = Arch(embed_dim=D, depth=2, num_heads=[3, 4], mlp_ratio=[3.5, 4.0], head_dim=None, patch_size=16)
    assert sum(p.numel() for p in ViT(arch.config(224, 3, 100)).parameters()) == expected
    assert _autoformer_params(D, [3.5, 4.0], 100) == expected


def test_head_dim_null_or_absent_and_stable_ids():
    d = {"embed_dim": 48, "depth": 2, "num_heads": [2, 3], "mlp_ratio": [3.0, 2.0], "patch_size": 4}
    absent, null = Arch.from_dict(d), Arch.from_dict({**d, "head_dim": None})
    assert absent == null and absent.head_dim is None
    assert Arch.from_json(absent.to_json()) == absent and '"head_dim":null' in absent.to_json()
    assert absent.id != Arch.from_dict({**d, "head_dim": 16}).id
    assert [b.attn.head_dim for b in ViT(absent.config(8, 1, 10)).blocks] == [24, 16]


@pytest.mark.parametrize("embed_dim, heads", [(50, [3, 2]), (48, [5, 4])])
def test_indivisible_width_names_both(embed_dim, heads):
    bad = next(h for h in heads if embed_dim % h)
    with pytest.raises(ValueError, match=f"embed_dim={embed_dim} is not divisible by num_heads={bad}"):
        Arch(embed_dim=embed_dim, depth=2, num_heads=heads, mlp_ratio=[2.0, 2.0], head_dim=None, patch_size=4)


def test_a_space_with_per_block_head_widths():
    space = get_space("autoformer")
    for arch in sample(space, 5, seed=1):
        assert arch.head_dim is None
        cfg = arch.config(space.img_size, space.in_chans, space.num_classes)
        assert cfg.block_head_dim(arch.num_heads[0]) * arch.num_heads[0] == arch.embed_dim
    with pytest.raises(ValueError, match="embed_dim=50 is not divisible by num_heads=4"):
        SearchSpace(name="bad", img_size=8, in_chans=1, num_classes=2, patch_sizes=(4,), embed_dims=(48, 50),
                    depths=(1,), num_heads=(2, 4), mlp_ratios=(2.0,), head_dim=None)


@pytest.mark.parametrize("call, error, message", [
    (lambda: sample(SPACES["small"], 3, seed="1"), TypeError, "seed='1' must be an int"),
    (lambda: sample(SPACES["small"], 3, seed=1.5), TypeError, "seed=1.5 must be an int"),
    (lambda: sample(SPACES["small"], "3"), TypeError, "n='3' must be an int"),
    (lambda: sample("small", 3), TypeError, "space must be a SearchSpace .* got str"),
    (lambda: get_space(None), TypeError, "space name must be a str, got NoneType"),
    (lambda: Arch.from_dict([48, 2]), TypeError, "architecture must be a dict, got list"),
    (lambda: Arch.from_json(None), TypeError, "text must be a JSON string, got NoneType"),
    (lambda: Arch(48, 2, [2, 3], [3.0, 2.0], "16", 4), TypeError, "head_dim='16' must be a positive int or None"),
])
def test_public_entry_points_name_bad_values(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_space_size_is_the_count_of_distinct_architectures():
    """Issue 15 item 9: n beyond the space is refused before drawing (it used to make 100·n draws first:
    4.4 million for the small space's n=44,281). The count: Σ_L |patch|·|D|·(|H|·|ratio|)^L."""
    assert get_space("small").size == 2 * 3 * sum(9**L for L in (1, 2, 3, 4)) == 44_280
    tiny = SearchSpace(name="tiny", img_size=8, in_chans=1, num_classes=2, patch_sizes=(4,), embed_dims=(8, 16),
                       depths=(1, 2), num_heads=(1, 2), mlp_ratios=(2.0,), head_dim=4)
    assert tiny.size == 2 * (2 + 4)
    assert len({a.id for a in sample(tiny, tiny.size)}) == tiny.size  # every one of them can be drawn
    with pytest.raises(ValueError, match="n=13: space 'tiny' holds 12 distinct architectures"):
        sample(tiny, 13)
    with pytest.raises(ValueError, match="n=44281: space 'small' holds 44,280 distinct architectures"):
        sample(get_space("small"), 44_281)


def test_a_pit_mlp_ratio_beyond_a_float_is_named():
    d = {"base_dim": 16, "depth": [1, 1], "num_heads": [1, 2], "patch_size": 16, "stride": 8}
    with pytest.raises(ValueError, match="mlp_ratio=1000.* is beyond a float's range"):
        arch_from_dict({**d, "mlp_ratio": 10**400})

import json

import numpy as np
import pytest

from vitcore.space import SPACES, Arch, get_space, sample


@pytest.mark.parametrize("name", sorted(SPACES))
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
    with pytest.raises(ValueError, match="unknown search space 'tiny'; valid: imagenet, small"):
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
    ("depth", 2.0, TypeError, "depth=2.0 must be an int"),
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

"""The registry: every proxy file is listed, every listed unit is its file's, and the contract holds."""
import importlib
import pathlib

import pytest

import vitcore
from vitcore.passes import DATA_TAPS, PASSES
from vitcore.proxies import PROXIES, REGISTRY, UNITS
from vitcore.proxies.registry import INFRASTRUCTURE

PROXY_DIR = pathlib.Path(vitcore.proxies.__file__).parent


def test_every_proxy_file_is_registered():
    """A proxy file that the explicit list does not name would be silently missing from score."""
    files = {p.stem for p in PROXY_DIR.glob("*.py")} - set(INFRASTRUCTURE)
    assert files == set(PROXIES), (sorted(files - set(PROXIES)), sorted(set(PROXIES) - files))


@pytest.mark.parametrize("unit", REGISTRY, ids=[u.name for u in REGISTRY])
def test_each_unit_is_its_files_proxy(unit):
    module = importlib.import_module(f"vitcore.proxies.{unit.name}")
    assert module.PROXY is unit and UNITS[unit.name] is unit
    assert (unit.reduce is None) != (unit.host is None)
    assert set(unit.passes) <= set(PASSES) and set(unit.taps) <= set(DATA_TAPS)
    assert isinstance(unit.min_batch, int) and unit.min_batch >= 1
    assert module.__doc__ and unit.name in module.__doc__


def test_public_names_keep_their_order():
    assert vitcore.PROXIES == PROXIES == tuple(u.name for u in REGISTRY)
    assert PROXIES[:9] == ("grad_norm", "snip", "plain", "grasp", "synflow", "fisher", "jacob_cov", "nwot", "zico")
    assert set(PROXIES) >= {"params", "flops"}

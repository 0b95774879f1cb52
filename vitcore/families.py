"""Model families: how an architecture record (a JSON object) becomes an ``nn.Module`` to score.

A family's builder is a function ``builder(record, device, seed) -> torch.nn.Module``: ``record`` a
dict of JSON values (the line of an ``--archs`` file), ``device`` a ``torch.device``, ``seed`` a
non-negative int from which the builder draws the weights (the same record, device and seed should
give the same weights). The module takes the run's images (B, C, H, W) float32 and returns (B,
classes) logits. Three kinds (``get_family``):

    vitcore                  the spaces' ViTs and PiTs (``vitcore.space``): a record is an ``Arch`` or
                             ``PiTArch``'s fields, built for the batch's image size, channels and classes
    timm                     ``timm.create_model(record["model"], pretrained=False, **the other fields)``
                             (nothing is downloaded); ``img_size``, ``in_chans`` and ``num_classes`` default
                             to the batch's; its ViTs' attention runs the run's ``attention`` choice
                             (``vitcore.timm_attention``)
    package.module:function  any importable builder of the user's

The family's name and its builder's qualified name are part of a run's resume key
(``vitcore.runs.score_archs``). A record of the timm or a user's family is a ``Record``; its ``id`` is
the record's own string "id" field when it has one (a label such as "cnn-3"), otherwise the first 12
hex digits of the SHA-1 of its canonical JSON, as vitcore's architectures are named.
"""
import hashlib
import importlib
import inspect
import json
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
from torch import nn

VITCORE, TIMM = "vitcore", "timm"
FAMILY_HELP = "vitcore (the spaces' ViT and PiT), timm, or package.module:function"

Builder = Callable[[dict, torch.device, int], nn.Module]


@dataclass(frozen=True)
class Record:
    """One architecture of a timm or a user's family: its JSON fields (without its "id" label) and its id."""

    fields: dict
    label: Optional[str] = None  # the record's own "id", when it has one

    def __eq__(self, other) -> bool:
        """One architecture when the label and the JSON text of the fields are the same: ``true`` is not
        ``1``, nor ``3.0`` ``3``, to the builder that reads them (dict equality says they are)."""
        if not isinstance(other, Record):
            return NotImplemented
        return self.label == other.label and self.to_json() == other.to_json()

    def __post_init__(self):
        if not isinstance(self.fields, dict):
            raise TypeError(f"Record fields must be a dict of JSON values, got {type(self.fields).__name__}")
        if self.label is not None and not isinstance(self.label, str):
            raise TypeError(f'"id" {self.label!r:.40} must be a string')
        if self.label == "":
            raise ValueError('"id" is empty')
        try:
            json.dumps(self.fields, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"fields are not JSON ({e})") from None

    @property
    def id(self) -> str:
        if self.label is not None:
            return self.label
        return hashlib.sha1(self.to_json().encode()).hexdigest()[:12]

    def to_json(self) -> str:
        """Canonical JSON of the fields: sorted keys, no spaces; an unlabelled record's id hashes this text."""
        return json.dumps(self.fields, sort_keys=True, separators=(",", ":"))

    def to_dict(self) -> dict:
        return dict(self.fields) if self.label is None else {"id": self.label, **self.fields}

    @classmethod
    def from_dict(cls, d) -> "Record":
        """A record from a JSON object; TypeError for anything else or a non-string "id", ValueError for
        an empty one or values that are not JSON (NaN, infinity)."""
        if not isinstance(d, dict):
            raise TypeError(f"expected a JSON object, got {json.dumps(d)[:80] if _is_json(d) else type(d).__name__}")
        return cls({k: v for k, v in d.items() if k != "id"}, d.get("id"))


def _is_json(value) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Family:
    """A family: ``name`` as given (``vitcore``, ``timm`` or ``package.module:function``), ``builder`` the
    builder's qualified name (``module:qualname``; part of the resume key), ``build`` the builder (None
    for vitcore, whose architectures build themselves)."""

    name: str
    builder: str
    build: Optional[Builder] = None

    @property
    def builtin(self) -> bool:
        return self.name == VITCORE


def get_family(name) -> Family:
    """The family called ``name``. TypeError for a non-string; ValueError for an unknown name, a timm
    family without timm installed, a module that does not import, a function it does not have;
    TypeError for a builder that is not callable."""
    if not isinstance(name, str):
        raise TypeError(f"family={name!r} must be a string: {FAMILY_HELP}")
    if name == VITCORE:
        return Family(VITCORE, "vitcore.space:arch_from_dict")
    if name == TIMM:
        try:
            importlib.import_module("timm")
        except ImportError as e:
            raise ValueError(f"--family timm needs timm ({e}); install it with pip install 'vitcore[timm]'") from None
        return Family(TIMM, "vitcore.families:timm_builder", timm_builder)
    module_name, sep, function = name.partition(":")
    if not sep or not module_name or not function:
        raise ValueError(f"unknown family {name!r}; valid: {FAMILY_HELP}")
    try:
        module = importlib.import_module(module_name)
    except SystemExit as e:  # a script's argparse or sys.exit run at import
        raise ValueError(f"family {name!r}: importing module {module_name!r} exited (SystemExit {e.code!r:.40}): "
                         "put a script's argument parsing under if __name__ == '__main__'") from None
    except Exception as e:  # any failure of the user's module: ImportError, a SyntaxError, its own errors
        raise ValueError(f"family {name!r}: module {module_name!r} does not import ({type(e).__name__}: {e})") \
            from None
    builder = module
    for part in function.split("."):
        if not hasattr(builder, part):
            raise ValueError(f"family {name!r}: {module_name} has no {function!r}")
        builder = getattr(builder, part)
    if not callable(builder):
        raise TypeError(f"family {name!r}: {function} is a {type(builder).__name__}, not a function "
                        "(record, device, seed) -> nn.Module")
    try:
        signature = inspect.signature(builder)
    except (TypeError, ValueError):  # a callable whose signature Python cannot read: its calls will say
        signature = None
    if signature is not None:
        try:
            signature.bind({}, torch.device("cpu"), 0)
        except TypeError:
            raise TypeError(f"family {name!r}: {function}{signature} cannot be called as (record, device, seed), "
                            "the builder's arguments") from None
    qualified = f"{getattr(builder, '__module__', module_name)}:{getattr(builder, '__qualname__', function)}"
    return Family(name, qualified, builder)


class BrokenBuilder(TypeError):
    """A family's builder returned something that is not an ``nn.Module``: every record would fail, so a
    run stops (an error of one record's model is recorded and the run goes on)."""


def build_record(family: Family, record: Record, device: torch.device, seed: int,
                 shape: Tuple[int, int, int]) -> nn.Module:
    """``record``'s module from ``family``'s builder on ``device`` from ``seed``. ``shape`` (in_chans,
    img_size, num_classes) of the batch: timm's defaults for those fields (img_size only where the timm
    model takes one, so convolutional networks build too). ValueError naming the
    record for anything the builder raises (an invalid record: the run records it and goes on);
    TypeError when the builder returns something that is not an ``nn.Module`` (a broken builder: every
    record would fail)."""
    fields = dict(record.fields)
    if family.name == TIMM:
        for key, value in zip(("in_chans", "img_size", "num_classes"), shape):
            fields.setdefault(key, value)
    try:
        try:
            model = family.build(fields, device, seed)
        except TypeError as e:  # a timm model with no image size (ResNet, ConvNeXt): built for any size
            if family.name != TIMM or "img_size" in record.fields or "'img_size'" not in str(e):
                raise
            model = family.build({k: v for k, v in fields.items() if k != "img_size"}, device, seed)
    except (Exception, SystemExit) as e:  # the builder's own error on this record (sys.exit too)
        first = (f"{type(e).__name__}: {e}".splitlines() or [""])[0]  # its first line, the brackets kept whole
        raise ValueError(f"family {family.name} could not build record {record.id} ({first})") from None
    if not isinstance(model, nn.Module):
        raise BrokenBuilder(f"family {family.name}: {family.builder} returned a {type(model).__name__} for record "
                        f"{record.id}, not a torch.nn.Module")
    return model


def check_record(family: Family, record: Record, where: str) -> None:
    """ValueError naming ``where`` for a record that ``family`` cannot read at all (a timm record without a
    "model" string, or naming no timm model); a user's records are the user's builder's to judge."""
    if family.name != TIMM:
        return
    import timm

    model = record.fields.get("model")
    if not isinstance(model, str):
        raise ValueError(f'{where}: a timm record needs a "model" string (a timm model name), got {model!r}')
    if not timm.is_model(model):
        raise ValueError(f"{where}: {model!r} is not a timm model (timm.list_models() lists them)")


def timm_builder(record: dict, device: torch.device, seed: int) -> nn.Module:
    """``timm.create_model(record["model"], pretrained=False, **the other fields)`` with its weights drawn
    by torch's global generator seeded with ``seed`` (the caller's generator state restored after), on
    the CPU, then moved to ``device``: the same record and seed give the same weights on any device."""
    import timm

    overrides = {k: v for k, v in record.items() if k != "model"}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(record["model"], pretrained=False, **overrides)
    return model.to(device)

"""A user's model family for ``vitcore score --family vitcore.examples.cnn_family:build``: small CNNs from a dict.

A record such as ``{"id": "cnn-a", "widths": [8, 16], "kernel": 3, "in_chans": 1, "num_classes": 10}``
becomes conv(kernel) -> BatchNorm -> ReLU per width (each after the first halving the resolution with
stride 2), global average pooling and a linear classifier; ``in_chans`` and ``num_classes`` default
to 1 and 10, the 8x8 digits that ``vitcore score`` uses by default. The weights are drawn from
``torch.Generator(device).manual_seed(seed)``: the same record, device and seed give the same network.
"""
import torch
from torch import nn


def build(record: dict, device: torch.device, seed: int) -> nn.Module:
    """The CNN of ``record`` on ``device``, initialised from ``seed`` (Kaiming-normal convolutions)."""
    widths, kernel = record["widths"], record.get("kernel", 3)
    in_chans, num_classes = record.get("in_chans", 1), record.get("num_classes", 10)
    if not widths or any(not isinstance(w, int) or w < 1 for w in widths):
        raise ValueError(f"widths={widths!r}: expected a non-empty list of positive ints")
    layers, channels = [], in_chans
    for i, width in enumerate(widths):
        layers += [nn.Conv2d(channels, width, kernel, stride=1 if i == 0 else 2, padding=kernel // 2),
                   nn.BatchNorm2d(width), nn.ReLU()]
        channels = width
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))
    generator = torch.Generator(device).manual_seed(seed)
    model.to(device)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()  # in channels · kernel²
                m.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
                m.bias.zero_()
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.01, generator=generator)
                m.bias.zero_()
    return model

"""Built-in float architectures, for image ``(C, H, W)`` and time-series ``(C, L)`` input.

* ``mlp``: Flatten -> Dense(64) -> ReLU -> Dense(32) -> ReLU -> Dense(classes). The network of the
  forward-only experiment (AbdulQader et al., arXiv 2103.14007, train a small quantized MLP on an
  hls4ml FPGA).
* ``cnn``: two conv blocks (conv -> batch norm -> ReLU -> max pool) and a dense head, sized for a
  Cortex-M4 (about 2 k parameters for 8x8 digits). Images end with Flatten -> Dense; series end with
  a global average pool so any length works.
"""

from __future__ import annotations

import torch
from torch import nn

ARCHS = ("mlp", "cnn")


def build_float_net(
    arch: str, input_shape: tuple[int, ...], n_classes: int, width: int = 8, seed: int = 0,
) -> nn.Sequential:
    """A fresh float network for ``input_shape`` (without batch) and ``n_classes`` outputs.

    ``width`` is the first conv layer's channel count (the second has twice as many). The initial
    weights depend only on ``seed`` (the global RNG is left as it was).
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return _build(arch, input_shape, n_classes, width)


def _build(arch: str, input_shape: tuple[int, ...], n_classes: int, width: int) -> nn.Sequential:
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHS}")
    if len(input_shape) not in (2, 3):
        raise ValueError(f"input shape must be (C, H, W) or (C, L), got {input_shape}")
    if n_classes < 2:
        raise ValueError(f"need at least 2 classes, got {n_classes}")
    n_in = 1
    for d in input_shape:
        n_in *= d
    if arch == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(n_in, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                             nn.Linear(32, n_classes))
    c = input_shape[0]
    if len(input_shape) == 3:
        h, w = input_shape[1] // 4, input_shape[2] // 4
        if h < 1 or w < 1:
            raise ValueError(f"cnn needs images of at least 4x4, got {input_shape}")
        return nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * h * w, n_classes))
    if input_shape[1] < 4:
        raise ValueError(f"cnn needs series of length at least 4, got {input_shape}")
    return nn.Sequential(
        nn.Conv1d(c, width, 5, padding=2), nn.BatchNorm1d(width), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(width, 2 * width, 5, padding=2), nn.BatchNorm1d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(2 * width, n_classes))

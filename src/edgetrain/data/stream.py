"""The online protocol: a deployed model meets its data one labelled sample at a time.

At each step ``t`` the device first predicts on ``x`` and only then sees the label ``y`` and may
learn from it (predict-then-learn, the prequential evaluation of streaming learning), so accuracy
over the stream measures adaptation on data the model had not yet trained on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch

from .dataset import Split


class Sample(NamedTuple):
    """One step of a stream: step index ``t``, one input ``x`` (no batch dimension), label ``y``."""

    t: int
    x: torch.Tensor
    y: int


def stream(split: Split, seed: int | None = 0,
           order: torch.Tensor | None = None) -> Iterator[Sample]:
    """Yield the samples of ``split`` one at a time.

    The order is, in priority: ``order`` if given (a 1-D integer tensor of sample indices, usually a
    permutation, e.g. a class-clustered one from ``shift``; ``seed`` is then ignored), else a random
    permutation drawn from ``seed``, else (``seed=None``) the stored order. The same arguments
    always give the same stream.
    """
    x, y = split
    n = int(y.shape[0])
    if order is not None:
        order = torch.as_tensor(order)
        if order.dim() != 1 or order.dtype.is_floating_point or order.dtype == torch.bool:
            raise ValueError(f"order must be a 1-D integer tensor, got {order.dtype} with shape "
                             f"{tuple(order.shape)}")
        if order.numel() and (int(order.min()) < 0 or int(order.max()) >= n):
            raise ValueError(f"order holds indices {int(order.min())}..{int(order.max())}, "
                             f"expected 0..{n - 1}")
    elif seed is not None:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    else:
        order = torch.arange(n)
    labels = y[order].tolist()
    for t, (i, label) in enumerate(zip(order.tolist(), labels, strict=True)):
        yield Sample(t, x[i], label)

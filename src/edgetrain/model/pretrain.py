"""Float pre-training of a built-in network: the model as it was before deployment.

Plain mini-batch Adam on cross-entropy. This is the *source* of a deployed model, not an on-device
method (those live in ``train/``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def train_float(
    net: nn.Sequential,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int = 30,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
    weight_decay: float = 1e-4,
    on_epoch: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``net`` in place; returns the mean training loss per epoch.

    ``on_epoch(epoch, loss)`` is called after each epoch (progress bars hook in here).
    """
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"need matching non-empty inputs and labels, got {x.shape[0]} and {y.shape[0]}")
    if not torch.isfinite(x).all():
        raise ValueError("training inputs contain non-finite values")
    g = torch.Generator().manual_seed(seed)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    history = []
    for epoch in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g)
        total = 0.0
        for start in range(0, x.shape[0], batch_size):
            idx = perm[start:start + batch_size]
            opt.zero_grad()
            loss = loss_fn(net(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
        history.append(total / x.shape[0])
        if on_epoch is not None:
            on_epoch(epoch, history[-1])
    net.eval()
    return history


def float_accuracy(net: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of the float network (eval mode)."""
    net.eval()
    with torch.no_grad():
        return float((net(x).argmax(1) == y).double().mean())

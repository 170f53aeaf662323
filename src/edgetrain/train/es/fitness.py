"""Fitness of population members from their integer logits, and rank-based fitness shaping.

The fitness is computed on the device's own outputs: the raw integer logits of the deployed model,
read in the output format. ``ce`` is minus the mean cross-entropy (the smooth signal zeroth-order
methods need: MeZO, Malladi et al. 2023, arXiv 2305.17333, estimate the loss gradient); ``accuracy``
is the fraction classified correctly (what a minimal hardware unit counts with one comparator).
"""

from __future__ import annotations

import torch

from ...quant import Format, dequantize

FITNESS = ("ce", "accuracy")


def fitness(logits: torch.Tensor, y: torch.Tensor, out_fmt: Format, kind: str = "ce") -> torch.Tensor:
    """Fitness (higher is better) of each member: ``logits`` raw ints ``[P, B, C]``, labels ``[B]``.

    Returns float64 ``[P]``: ``-mean CE`` of the dequantized logits, or accuracy.
    """
    if kind not in FITNESS:
        raise ValueError(f"fitness must be one of {FITNESS}, got {kind!r}")
    if logits.ndim != 3 or logits.shape[1] != y.shape[0]:
        raise ValueError(f"logits must be [P, B, C] with B = {y.shape[0]} labels, got {tuple(logits.shape)}")
    if kind == "accuracy":
        return (logits.argmax(dim=2) == y.unsqueeze(0)).double().mean(dim=1)
    real = dequantize(logits, out_fmt).to(torch.float64)
    # log p_y = z_y - logsumexp(z): the one log-probability CE needs, without forming all of them
    # (log_softmax over [P, B, C] costs 2.5x as much here)
    picked = real.gather(2, y.view(1, -1, 1).expand(logits.shape[0], -1, 1)).squeeze(2)
    return (picked - torch.logsumexp(real, dim=2)).mean(dim=1)


def centered_ranks(f: torch.Tensor) -> torch.Tensor:
    """Centred ranks in ``[-0.5, 0.5]`` (Salimans et al. 2017, arXiv 1703.03864, fitness shaping):
    the worst member gets -0.5, the best +0.5; tied members share their average rank, so a
    population whose fitnesses are all equal yields all zeros (no update)."""
    n = f.numel()
    if n < 2:
        return torch.zeros_like(f, dtype=torch.float64)
    # average rank of ties: (#smaller) + (#equal - 1) / 2
    smaller = (f.unsqueeze(0) < f.unsqueeze(1)).sum(dim=1).double()
    equal = (f.unsqueeze(0) == f.unsqueeze(1)).sum(dim=1).double()
    rank = smaller + (equal - 1) / 2
    return rank / (n - 1) - 0.5

"""The two containers every loader returns (``Split``, ``Dataset``) and the stratified splitting
that carves one split out of another (``stratified_split``, ``with_online``).

A ``Dataset`` checks itself when it is built: float32 inputs, int64 labels in range, finite values,
one input shape. Every loader therefore hands the rest of the pipeline data that is already known
to be well formed, and an error names the dataset and split at fault instead of surfacing later as
a shape mismatch or a NaN loss.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import NamedTuple

import torch


class Split(NamedTuple):
    """One partition of a dataset: inputs ``x`` (float32, ``(N, *input_shape)``) and class indices
    ``y`` (int64, ``(N,)``)."""

    x: torch.Tensor
    y: torch.Tensor


def take(split: Split, index: torch.Tensor) -> Split:
    """The samples of ``split`` at ``index`` (a 1-D integer tensor), in that order."""
    return Split(split.x[index], split.y[index])


def check_split(split: Split, input_shape: tuple[int, ...], n_classes: int, where: str) -> None:
    """Raise ``ValueError`` unless ``split`` is well formed for ``input_shape`` and ``n_classes``.

    ``where`` names the split in the message (e.g. ``"mnist.train"``).
    """
    x, y = split
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError(f"{where}: x and y must be torch tensors, got {type(x).__name__} and "
                         f"{type(y).__name__}")
    if x.dtype != torch.float32:
        raise ValueError(f"{where}: x must be float32, got {x.dtype}")
    if y.dtype != torch.int64:
        raise ValueError(f"{where}: y must be int64, got {y.dtype}")
    if y.dim() != 1:
        raise ValueError(f"{where}: y must be 1-D, got shape {tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{where}: {x.shape[0]} inputs but {y.shape[0]} labels")
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise ValueError(f"{where}: each input has shape {tuple(x.shape[1:])}, expected "
                         f"{tuple(input_shape)}")
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        first = int((~finite).reshape(x.shape[0], -1).any(1).nonzero()[0, 0])
        raise ValueError(f"{where}: x holds {int((~finite).sum())} non-finite values "
                         f"(first in sample {first})")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(f"{where}: labels must lie in 0..{n_classes - 1}, found "
                         f"{int(y.min())}..{int(y.max())}")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A classification dataset as tensors plus what is needed to reproduce and describe it.

    ``input_shape`` excludes the batch dimension: ``(1, 8, 8)`` for digits, ``(C, L)`` for a time
    series. ``classes`` names class ``i`` at position ``i``. ``online`` is the part of the training
    data held back for on-device adaptation (see ``with_online``), ``None`` until carved out.
    ``meta`` is JSON-able provenance: source, citation, files and checksums, scaling or
    normalization, split seed.
    """

    name: str
    train: Split
    test: Split
    input_shape: tuple[int, ...]
    classes: tuple[str, ...]
    online: Split | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if not self.classes:
            raise ValueError(f"{self.name}: a dataset needs at least one class")
        for part in ("train", "test", "online"):
            split = getattr(self, part)
            if split is None:
                continue
            if not isinstance(split, Split):  # accept a plain (x, y) pair
                split = Split(*split)
                object.__setattr__(self, part, split)
            check_split(split, self.input_shape, self.n_classes, f"{self.name}.{part}")

    @property
    def n_classes(self) -> int:
        """Number of classes (the length of ``classes``)."""
        return len(self.classes)


def stratified_split(
    y: torch.Tensor, fraction: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split sample indices into ``(kept, held_out)`` with ``fraction`` of every class held out.

    Each class ``c`` with ``n_c`` samples gives ``round(fraction * n_c)`` of them (chosen by a
    ``torch.Generator`` seeded with ``seed``) to the held-out part, clamped so that a class with at
    least two samples keeps at least one on each side whenever ``0 < fraction < 1``. Stratifying per
    class keeps the class balance of both parts equal to the whole, which matters for small sets
    (digits has ~180 images per class). Both index tensors are sorted, so the parts keep the
    original sample order; the same ``seed`` always gives the same split.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    gen = torch.Generator().manual_seed(int(seed))
    held = []
    for c in torch.unique(y).tolist():
        members = (y == c).nonzero().flatten()
        n = members.numel()
        k = int(fraction * n + 0.5)
        if 0.0 < fraction < 1.0 and n >= 2:
            k = min(max(k, 1), n - 1)
        held.append(members[torch.randperm(n, generator=gen)[:k]])
    held_mask = torch.zeros(y.numel(), dtype=torch.bool)
    if held:
        held_mask[torch.cat(held)] = True
    return (~held_mask).nonzero().flatten(), held_mask.nonzero().flatten()


def with_online(ds: Dataset, fraction: float = 0.3, seed: int = 0) -> Dataset:
    """Carve a stratified, deterministic ``online`` split out of ``ds.train``.

    The returned dataset's ``train`` is what the model is pre-trained on before deployment and
    ``online`` is the data it meets afterwards, one sample at a time (see ``stream``); the two are
    disjoint and ``test`` is untouched. Normalization statistics already recorded by the loader
    (computed on the full training split) are kept as they are. ``meta["online"]`` records the
    fraction, seed and sizes.
    """
    if ds.online is not None:
        raise ValueError(f"{ds.name} already has an online split ({ds.online.y.numel()} samples)")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"online fraction must lie strictly between 0 and 1, got {fraction}")
    keep, held = stratified_split(ds.train.y, fraction, seed)
    meta = dict(ds.meta)
    meta["online"] = {"fraction": fraction, "seed": seed, "n_train": int(keep.numel()),
                      "n_online": int(held.numel())}
    return dataclasses.replace(ds, train=take(ds.train, keep), online=take(ds.train, held),
                               meta=meta)

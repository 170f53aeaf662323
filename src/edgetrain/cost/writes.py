"""Counting weight writes: a write is a stored value that changed.

On non-volatile weight memories (RRAM, PCM, MRAM, flash) each write costs energy and wears the
cell, so what matters is how many cells change, how often the busiest cell changes, and the
*write density* -- writes per cell per step (Gural et al., arXiv 2009.03887). A step that computes
an update but leaves a quantized weight unchanged (the update rounds to zero) writes nothing.

The counter is a pure value: ``record_writes`` and ``advance`` return new counters.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from ..device.profiles import NVM
from ..model.deployed import DeployedModel
from .ledger import Ledger


@dataclass(frozen=True, eq=False)
class WriteCounter:
    """Per-parameter int64 tensors of writes per cell, and the number of steps observed."""

    counts: Mapping[str, torch.Tensor]
    steps: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        object.__setattr__(self, "counts", dict(self.counts))

    @property
    def names(self) -> list[str]:
        return list(self.counts)


ShapeSource = DeployedModel | Mapping[str, torch.Tensor | tuple[int, ...]] | Iterable[
    tuple[str, torch.Tensor | tuple[int, ...]]]


def init_writes(params: ShapeSource) -> WriteCounter:
    """A zero counter for a model's parameters, or for ``{name: tensor or shape}`` / pairs."""
    if isinstance(params, DeployedModel):
        pairs = [(n, t.shape) for n, t, _ in params.params()]
    elif isinstance(params, Mapping):
        pairs = list(params.items())
    else:
        pairs = list(params)
    counts = {}
    for name, s in pairs:
        shape = tuple(s.shape) if isinstance(s, torch.Tensor) else tuple(s)
        counts[name] = torch.zeros(shape, dtype=torch.int64)
    return WriteCounter(counts, 0)


def record_writes(counter: WriteCounter, name: str, old: torch.Tensor,
                  new: torch.Tensor) -> WriteCounter:
    """Add one write to every cell of parameter ``name`` whose stored value changed."""
    if name not in counter.counts:
        raise KeyError(f"write counter has no parameter {name!r}; it has {counter.names}")
    prev = counter.counts[name]
    old, new = torch.as_tensor(old), torch.as_tensor(new)
    if old.shape != prev.shape or new.shape != prev.shape:
        raise ValueError(f"parameter {name}: expected shape {tuple(prev.shape)}, got old "
                         f"{tuple(old.shape)} and new {tuple(new.shape)}")
    counts = dict(counter.counts)
    counts[name] = prev + (old != new).to(torch.int64)
    return WriteCounter(counts, counter.steps)


def add_writes(counter: WriteCounter, name: str, cells: torch.Tensor) -> WriteCounter:
    """Add ``cells`` (a non-negative integer count per cell, the parameter's shape) to the counts
    of ``name``: for updates applied as several writes within one step (SGD on a convolution writes
    once per output-pixel term, Gural et al.)."""
    if name not in counter.counts:
        raise KeyError(f"write counter has no parameter {name!r}; it has {counter.names}")
    prev = counter.counts[name]
    cells = torch.as_tensor(cells)
    if cells.shape != prev.shape or cells.is_floating_point() or bool((cells < 0).any()):
        raise ValueError(f"parameter {name}: expected non-negative integer counts of shape {tuple(prev.shape)}, "
                         f"got {cells.dtype} {tuple(cells.shape)}")
    counts = dict(counter.counts)
    counts[name] = prev + cells.to(torch.int64)
    return WriteCounter(counts, counter.steps)


def record_model_writes(counter: WriteCounter, old: DeployedModel,
                        new: DeployedModel) -> WriteCounter:
    """Record the writes between two versions of a model (every counted parameter)."""
    for name, t_old, _ in old.params():
        if name in counter.counts:
            counter = record_writes(counter, name, t_old, new.param(name)[0])
    return counter


def advance(counter: WriteCounter, steps: int = 1) -> WriteCounter:
    """Count ``steps`` more training steps (the denominator of the write density)."""
    if steps < 0:
        raise ValueError(f"cannot advance by {steps} steps")
    return WriteCounter(counter.counts, counter.steps + steps)


def cells(counter: WriteCounter) -> int:
    return sum(c.numel() for c in counter.counts.values())


def total_writes(counter: WriteCounter) -> int:
    return int(sum(int(c.sum()) for c in counter.counts.values()))


def max_writes_per_cell(counter: WriteCounter) -> int:
    return max((int(c.max()) for c in counter.counts.values() if c.numel()), default=0)


def mean_write_density(counter: WriteCounter) -> float:
    """Writes / (cells x steps): the fraction of cells written in an average step."""
    denom = cells(counter) * counter.steps
    if denom == 0:
        raise ValueError("write density needs at least one cell and one step (call advance)")
    return total_writes(counter) / denom


def lifetime_steps(counter: WriteCounter, nvm: NVM) -> float:
    """Steps until the most-written cell reaches ``nvm.endurance_writes`` at the observed rate:
    ``endurance / (max_writes_per_cell / steps)``; ``inf`` if nothing was written."""
    peak = max_writes_per_cell(counter)
    if peak == 0:
        return math.inf
    if counter.steps == 0:
        raise ValueError("writes were recorded over zero steps (call advance)")
    return nvm.endurance_writes / (peak / counter.steps)


BitsSource = int | Mapping[str, int] | DeployedModel


def _bits_of(bits: BitsSource, name: str) -> int:
    if isinstance(bits, int):
        return bits
    if isinstance(bits, DeployedModel):
        return bits.param(name)[1].bits
    if name not in bits:
        raise KeyError(f"no bit width given for parameter {name!r}")
    return int(bits[name])


def write_energy_j(counter: WriteCounter, bits: BitsSource, nvm: NVM) -> float:
    """Energy of the recorded writes on ``nvm``.

    Each write of a cell is charged its full bit width (``bits``: one width for all, a
    ``{name: bits}`` map, or a model whose formats give the widths) at
    ``nvm.write_energy_per_bit_j``. A controller that writes only the flipped bits would spend
    less; full-width writes are the simple, conservative convention.
    """
    e = 0.0
    for name, c in counter.counts.items():
        e += int(c.sum()) * _bits_of(bits, name) * nvm.write_energy_per_bit_j
    return e


def writes_ledger(counter: WriteCounter) -> Ledger:
    """The write fields of a ledger from a counter (density ``None`` before any step)."""
    n = cells(counter) * counter.steps
    return Ledger(weight_writes=total_writes(counter), max_writes_per_cell=max_writes_per_cell(counter),
                  mean_write_density=mean_write_density(counter) if n else None,
                  write_cell_steps=n if n else None)


def summary(counter: WriteCounter) -> dict[str, dict[str, int]]:
    """Per parameter: cells, total writes and the busiest cell's writes (for tables)."""
    return {name: {"cells": c.numel(), "writes": int(c.sum()),
                   "max_per_cell": int(c.max()) if c.numel() else 0}
            for name, c in counter.counts.items()}

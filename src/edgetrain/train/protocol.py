"""The one protocol every on-device trainer follows (DESIGN.md, ``train/``).

A trainer is a small object holding only its *settings*; everything that changes while training
lives in an explicit state that ``init`` returns and ``step`` takes and returns (as optax does with
``init`` / ``update``). A step reports what it did on the shared :class:`~edgetrain.cost.Ledger`,
so every method is costed in the same units::

    state = trainer.init(model, seed)
    for batch in batches:
        state, info = trainer.step(state, batch)
    adapted = trainer.model(state)

``writes(model)`` names the parameters the trainer may change (``"<layer>.<weight|bias>"``);
every other parameter of the adapted model is bit-identical to the deployed one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch

from ..cost import Ledger
from ..model import DeployedModel


class Batch(NamedTuple):
    """Labelled samples as the trainer's model consumes them: raw integers in the deployed
    model's input format for the on-device methods, real values for float references."""

    x: torch.Tensor
    y: torch.Tensor


@dataclass(frozen=True)
class StepInfo:
    """What one step did: its ledger (work, memory, writes) and scalar metrics (loss, step size,
    acceptance...). Metric names are method-specific; the ledger's are not."""

    ledger: Ledger
    metrics: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Trainer(Protocol):
    """What every method implements; see the module docstring."""

    name: str

    def writes(self, model: DeployedModel) -> tuple[str, ...]: ...

    def init(self, model: DeployedModel, seed: int = 0) -> Any: ...

    def step(self, state: Any, batch: Batch) -> tuple[Any, StepInfo]: ...

    def model(self, state: Any) -> DeployedModel: ...


def check_batch(batch: Batch, input_shape: tuple[int, ...], integer: bool) -> Batch:
    """Validate a batch against the model's input: shapes, label count and dtype, finiteness."""
    x, y = batch
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise ValueError(f"batch x has shape {tuple(x.shape)}; expected (N, {', '.join(map(str, input_shape))})")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"batch y must be a vector of {x.shape[0]} labels, got shape {tuple(y.shape)}")
    if y.is_floating_point():
        raise TypeError(f"batch labels must be integers, got {y.dtype}")
    if integer and x.is_floating_point():
        raise TypeError("this trainer takes raw integer inputs (quantize_input() real values first)")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError("batch x has non-finite values")
    return Batch(x, y.to(torch.int64))

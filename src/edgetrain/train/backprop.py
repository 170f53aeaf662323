"""Float backprop fine-tuning of the same layers: the upper-bound reference for on-device methods.

The on-device trainers adapt a quantized model with integer arithmetic, forward passes only or
low-rank updates. To know how much they leave on the table, this reference does what a workstation
would: it starts from the deployed model's *dequantized* parameters (:func:`to_float_net`), trains
only the selected parameters with Adam on cross-entropy in float32, on real-valued inputs, with
exact gradients. Everything else is frozen (``requires_grad=False``), so the comparison is about
the update rule, not about which weights may move.

The reference is evaluated in float (:meth:`BackpropFinetune.net`); :meth:`BackpropFinetune.model`
also writes the trained values back into their own formats for an integer-exact evaluation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..cost import training_ledger
from ..model import DeployedModel
from ..model.to_float import to_float_net
from ..quant import Format, dequantize, quantize
from .protocol import Batch, StepInfo, check_batch
from .select import select_params


@dataclass(frozen=True)
class BackpropState:
    """The float network being trained, its optimizer, the deployed model it started from, the
    trained parameter names and the number of steps taken.

    ``net`` and ``optimizer`` are torch objects updated in place by each step: a returned state
    shares them with the one passed in, so keep a ``copy.deepcopy`` to replay from an old state.
    """

    net: nn.Sequential
    optimizer: torch.optim.Optimizer
    model: DeployedModel
    names: tuple[str, ...]
    steps: int = 0
    seed: int = 0


def _net_dtype(net: nn.Module) -> torch.dtype:
    """The floating dtype of ``net``'s parameters (float32 when it has none)."""
    for p in net.parameters():
        return p.dtype
    return torch.float32


def requantize_param(real: torch.Tensor, fmt: Format) -> torch.Tensor:
    """Real parameter values -> raw integers of ``fmt``, saturating at the format's range.

    Values are clamped to the representable real range first, so a wrapping fixed-point format
    saturates instead of wrapping a slightly too large weight to the opposite sign.
    """
    real = real.detach().to(torch.float64)
    lo = dequantize(torch.full(real.shape, fmt.raw_min, dtype=torch.int64), fmt)
    hi = dequantize(torch.full(real.shape, fmt.raw_max, dtype=torch.int64), fmt)
    raw = quantize(torch.minimum(torch.maximum(real, lo), hi), fmt)
    return raw.clamp(fmt.raw_min, fmt.raw_max)


@dataclass(frozen=True)
class BackpropFinetune:
    """Adam on cross-entropy over the parameters picked by ``params`` (a ``select_params`` spec),
    in float32, starting from the deployed model's dequantized parameters."""

    params: str = "last"
    lr: float = 1e-2
    name: str = "backprop-same-layers"

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"learning rate must be > 0, got {self.lr!r}")

    def writes(self, model: DeployedModel) -> tuple[str, ...]:
        """The parameters this trainer changes."""
        return select_params(model, self.params)

    def init(self, model: DeployedModel, seed: int = 0) -> BackpropState:
        """A float32 copy of ``model`` with only the selected parameters trainable.

        The step is deterministic, so ``seed`` is only recorded (the protocol passes one to every
        trainer).
        """
        names = self.writes(model)
        net = to_float_net(model, torch.float32)
        trained = []
        for name, p in net.named_parameters():
            p.requires_grad_(name in names)
            if name in names:
                trained.append(p)
        optimizer = torch.optim.Adam(trained, lr=self.lr)
        return BackpropState(net, optimizer, model, names, 0, seed)

    def step(self, state: BackpropState, batch: Batch) -> tuple[BackpropState, StepInfo]:
        """One Adam step on ``batch`` (real-valued inputs); reports the loss before the update."""
        x, y = _check_real_batch(batch, state.model)
        start = time.perf_counter()
        state.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(state.net(x.to(_net_dtype(state.net))), y)
        loss.backward()
        state.optimizer.step()
        wall_s = time.perf_counter() - start
        ledger = training_ledger(state.model, state.names, batch=x.shape[0]).replace(wall_s=wall_s)
        return replace(state, steps=state.steps + 1), StepInfo(ledger, {"loss": float(loss.detach())})

    def model(self, state: BackpropState) -> DeployedModel:
        """The deployed model with the trained parameters re-quantized into their own formats (for
        an integer-exact evaluation); every other parameter is the deployed one, untouched."""
        updates = {}
        for name in state.names:
            raw, fmt = state.model.param(name)
            real = state.net.get_parameter(name).detach().reshape(raw.shape)
            updates[name] = requantize_param(real, fmt)
        return state.model.with_params(updates)

    def net(self, state: BackpropState) -> nn.Sequential:
        """The float network as trained so far (the reference is evaluated in float)."""
        return state.net


def _check_real_batch(batch: Batch, model: DeployedModel) -> tuple[torch.Tensor, torch.Tensor]:
    """A validated real-valued batch: shapes, integer labels in range, finite float inputs."""
    x, y = check_batch(batch, model.input_shape, integer=False)
    if not x.is_floating_point():
        raise TypeError(f"backprop fine-tuning takes real-valued inputs, got {x.dtype} "
                        "(raw integers? dequantize them, or pass the real values)")
    if x.shape[0] == 0:
        raise ValueError("batch is empty")
    n_classes = model.output_shape[0]
    if int(y.min()) < 0 or int(y.max()) >= n_classes:
        raise ValueError(f"batch labels must lie in 0..{n_classes - 1}, found {int(y.min())}..{int(y.max())}")
    return x, y


def float_net_accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Fraction of ``x`` that the float network ``net`` classifies as ``y`` (argmax of its output)."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} inputs but {y.shape[0]} labels")
    if x.shape[0] == 0:
        raise ValueError("cannot compute accuracy on an empty set")
    dtype = _net_dtype(net)
    correct = 0
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            out = net(x[start:start + batch_size].to(dtype))
            correct += int((out.argmax(dim=1) == y[start:start + batch_size]).sum())
    return correct / x.shape[0]


def finetune(
    trainer: BackpropFinetune,
    model: DeployedModel,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int = 32,
    seed: int = 0,
    eval_x: torch.Tensor | None = None,
    eval_y: torch.Tensor | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> tuple[BackpropState, list[dict]]:
    """Fine-tune ``model`` on ``(x, y)`` for ``epochs`` shuffled passes; returns the final state and
    one record per epoch.

    Each epoch visits the samples in an order drawn from one ``torch.Generator`` seeded with
    ``seed``, so a run is reproducible. A record holds ``epoch`` (epochs completed), ``samples``
    (samples stepped on so far) and ``loss`` (mean pre-update loss over the epoch), plus
    ``accuracy``, the float net's accuracy on ``(eval_x, eval_y)``, when those are given.
    ``on_epoch(record)`` is called after each epoch (progress output hooks in here).
    """
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"need epochs >= 0 and batch_size >= 1, got {epochs} and {batch_size}")
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"need matching non-empty inputs and labels, got {x.shape[0]} and {y.shape[0]}")
    if (eval_x is None) != (eval_y is None):
        raise ValueError("give both eval_x and eval_y, or neither")
    state = trainer.init(model, seed)
    gen = torch.Generator().manual_seed(seed)
    history: list[dict] = []
    samples = 0
    for epoch in range(epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        loss_sum = 0.0
        for start in range(0, x.shape[0], batch_size):
            idx = perm[start:start + batch_size]
            state, info = trainer.step(state, Batch(x[idx], y[idx]))
            samples += idx.numel()
            loss_sum += info.metrics["loss"] * idx.numel()
        record: dict = {"epoch": epoch + 1, "samples": samples, "loss": loss_sum / x.shape[0]}
        if eval_x is not None and eval_y is not None:
            record["accuracy"] = float_net_accuracy(trainer.net(state), eval_x, eval_y)
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
    return state, history


__all__ = ["BackpropFinetune", "BackpropState", "finetune", "float_net_accuracy", "requantize_param"]

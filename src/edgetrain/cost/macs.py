"""Multiply-accumulate counts per layer: forward, backward to the input, backward to the weights.

Counts are per sample (multiply by the batch) and follow the dense-kernel convention: a
convolution is counted as ``c_out * c_in * kh * kw * h_out * w_out`` MACs, including kernel taps
that land on zero padding (what an im2col / CMSIS-NN style kernel executes). Each forward MAC
``y += w * x`` has exactly one partner in each backward product (``dx += w * dy`` and
``dw += x * dy``), so for Dense and Conv layers the three counts are equal. Bias additions and
requantization are not MACs and are not counted.

ReLU, MaxPool, Flatten and GlobalAvgPool count 0 MACs: they compare, route or add (an average
pool is an integer sum plus one requantization per channel); their backward passes are masks,
routing and broadcasts. Their cost is real but small next to the products and belongs in a
cycle model, not a MAC count.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from ..model.deployed import DeployedModel
from ..model.layers import Conv1d, Conv2d, Dense, Layer
from .ledger import Ledger


@dataclass(frozen=True)
class LayerMacs:
    """MACs of one layer (or a sum of layers) per sample, by phase."""

    forward: int = 0
    backward_input: int = 0
    backward_weight: int = 0

    @property
    def backward(self) -> int:
        return self.backward_input + self.backward_weight

    @property
    def total(self) -> int:
        return self.forward + self.backward

    def __add__(self, other: LayerMacs) -> LayerMacs:
        if not isinstance(other, LayerMacs):
            return NotImplemented
        return LayerMacs(self.forward + other.forward, self.backward_input + other.backward_input,
                         self.backward_weight + other.backward_weight)

    def __radd__(self, other: object) -> LayerMacs:
        if other == 0:
            return self
        return NotImplemented  # type: ignore[return-value]

    def __mul__(self, n: int) -> LayerMacs:
        """Scale by a sample count (batch, population)."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            return NotImplemented
        return LayerMacs(self.forward * n, self.backward_input * n, self.backward_weight * n)

    __rmul__ = __mul__


def layer_macs(layer: Layer, in_shape: tuple[int, ...]) -> LayerMacs:
    """MACs of ``layer`` applied to one sample of shape ``in_shape`` (without batch)."""
    out_shape = layer.out_shape(tuple(in_shape))
    if isinstance(layer, Dense):
        n = int(layer.weight.shape[0]) * int(layer.weight.shape[1])
    elif isinstance(layer, Conv2d | Conv1d):
        # weight [c_out, c_in, *kernel]; every output position does c_in * prod(kernel) MACs per
        # output channel
        n = layer.weight.numel() * math.prod(out_shape[1:])
    else:
        n = 0
    return LayerMacs(n, n, n)


def model_macs(model: DeployedModel) -> list[LayerMacs]:
    """Per-layer MACs (one entry per layer, in order), per sample."""
    shapes = model.shapes()
    return [layer_macs(layer, shapes[i]) for i, layer in enumerate(model.layers)]


def inference_macs(model: DeployedModel, batch: int = 1) -> int:
    """Forward MACs of the whole model for ``batch`` samples."""
    return sum(m.forward for m in model_macs(model)) * batch


def _trained_layers(model: DeployedModel, trained: Iterable[int | str]) -> tuple[set[int], set[int]]:
    """Split ``trained`` into (layers whose gradient is needed, layers whose *weight* is trained).

    Items are layer indices (weight and bias of that layer) or parameter names such as
    ``"3.bias"``. A bias gradient is a sum of output gradients: no MACs, but it still needs the
    output gradient of its layer, so it pulls backward-input MACs down to that layer.
    """
    n = len(model.layers)
    need, weight = set(), set()
    for t in trained:
        if isinstance(t, str):
            idx_s, _, p = t.partition(".")
            idx = int(idx_s)
            if idx < 0 or idx >= n or p not in model.layers[idx].params:
                raise ValueError(f"model has no parameter {t!r}")
            need.add(idx)
            if p == "weight":
                weight.add(idx)
        else:
            idx = int(t)
            if idx < 0 or idx >= n:
                raise ValueError(f"trained layer index {idx} out of range for {n} layers")
            if model.layers[idx].params:  # a parameter-free layer has nothing to train
                need.add(idx)
                weight.add(idx)
    return need, weight


def training_macs(model: DeployedModel, trained: Iterable[int | str], batch: int = 1) -> LayerMacs:
    """MACs of one backprop training step on ``batch`` samples, training ``trained``.

    ``trained`` holds layer indices (weight and bias) or parameter names (``"2.bias"``).

    - forward: the whole model (the loss needs the output);
    - backward-input: every layer *above* the earliest trained one, since the gradient has to
      flow from the loss down to that layer's output; never for layer 0's input (no one needs
      it), nor below the earliest trained layer;
    - backward-weight: only layers whose weight is trained (bias gradients cost no MACs).
    """
    per_layer = model_macs(model)
    need, weight = _trained_layers(model, trained)
    forward = sum(m.forward for m in per_layer)
    if not need:
        return LayerMacs(forward, 0, 0) * batch
    lowest = min(need)
    b_in = sum(m.backward_input for i, m in enumerate(per_layer) if i > lowest)
    b_w = sum(per_layer[i].backward_weight for i in weight)
    return LayerMacs(forward, b_in, b_w) * batch


def inference_ledger(model: DeployedModel, batch: int = 1) -> Ledger:
    """Ledger of ``batch`` forward passes: counts only (no device, no memory)."""
    m = inference_macs(model, batch)
    return Ledger(forward_passes=batch, macs_forward=m, macs_backward=0, macs=m)


def training_ledger(model: DeployedModel, trained: Iterable[int | str], batch: int = 1) -> Ledger:
    """Ledger of one backprop step on ``batch`` samples (MAC counts and forward passes)."""
    t = training_macs(model, trained, batch)
    return Ledger(forward_passes=batch, macs_forward=t.forward, macs_backward=t.backward,
                  macs=t.total)

"""The real-valued twin of ``backward.py``, for FQT's ``mixed`` and ``float32`` precision modes.

Deutel et al. (arXiv 2407.10734, sec. V) compare fully quantized training with two wider modes on the
same network and the same partial-update rule: ``float32`` (weights, activations and errors all float)
and ``mixed`` (the uint8 forward of the deployed model, float errors and gradients). Both need the
same backward with real numbers; only where the activations and weights come from differs:

* ``mixed``: the activations are the dequantized outputs of the integer forward (what the device
  computed) and the weights are the dequantized uint8 weights;
* ``float32``: :func:`forward_real` runs the network in float32 on float32 weights.

:func:`backward_real` then mirrors :func:`~edgetrain.train.fqt.backward.backward_uint8` step for
step, with the same per-sample dynamic partial updates (``kernels.partial_mask``) and the same MAC
count, so the three modes differ only in their number formats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ...model import DeployedModel
from ...model.layers import Conv1d, Conv2d, Dense, Flatten, GlobalAvgPool, MaxPool, ReLU
from ..gradients import _input_grad, _patches
from .kernels import partial_mask

LINEAR = (Dense, Conv2d, Conv1d)

RealParams = dict[int, tuple[torch.Tensor, torch.Tensor]]
"""Real weight and bias of every dense/conv layer, by layer index."""


@dataclass(frozen=True, eq=False)
class RealGrads:
    """A real-valued backward pass over a batch; fields as in ``backward.Grads`` (gradients are
    summed over the samples)."""

    weight: dict[int, torch.Tensor] = field(default_factory=dict)
    bias: dict[int, torch.Tensor] = field(default_factory=dict)
    rows: dict[int, torch.Tensor] = field(default_factory=dict)
    macs_backward: int = 0
    e_max: dict[int, float] = field(default_factory=dict)
    kept: dict[int, torch.Tensor] = field(default_factory=dict)


def _conv(layer: Conv2d | Conv1d, a: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, Conv2d):
        return F.conv2d(a, w, b, stride=layer.stride, padding=layer.padding)
    return F.conv1d(a, w, b, stride=layer.stride, padding=layer.padding)


def forward_real(model: DeployedModel, params: RealParams, x: torch.Tensor) -> list[torch.Tensor]:
    """Float forward of ``model``'s layer chain with the real ``params``: every layer's output."""
    outs: list[torch.Tensor] = []
    a = x
    for i, layer in enumerate(model.layers):
        if isinstance(layer, Dense):
            w, b = params[i]
            a = F.linear(a, w, b)
        elif isinstance(layer, (Conv2d, Conv1d)):
            w, b = params[i]
            a = _conv(layer, a, w, b)
        elif isinstance(layer, ReLU):
            a = torch.relu(a)
        elif isinstance(layer, MaxPool):
            a = (F.max_pool2d(a, layer.kernel, layer.stride) if len(layer.kernel) == 2
                 else F.max_pool1d(a, layer.kernel[0], layer.stride[0]))
        elif isinstance(layer, GlobalAvgPool):
            a = a.flatten(2).mean(2)
        elif isinstance(layer, Flatten):
            a = a.flatten(1)
        else:
            raise TypeError(f"no float forward for layer type {type(layer).__name__}")
        outs.append(a)
    return outs


def _maxpool_grad(layer: MaxPool, e: torch.Tensor, a_in: torch.Tensor) -> torch.Tensor:
    """Route each window's error to its first maximum (scan order), as ``kernels.maxpool_grad``."""
    k, s = layer.kernel, layer.stride
    if len(k) == 1:
        return _maxpool_grad(MaxPool(layer.fmt, (1, k[0]), (1, s[0])), e.unsqueeze(2), a_in.unsqueeze(2)).squeeze(2)
    b, c, h, w = a_in.shape
    cols = F.unfold(a_in, k, stride=s).reshape(b, c, k[0] * k[1], -1)  # [B, C, window, P]
    first = cols.argmax(2, keepdim=True)  # argmax returns the first maximum
    ones = torch.zeros_like(cols).scatter_(2, first, 1.0)
    routed = ones * e.reshape(b, c, 1, -1)
    return F.fold(routed.reshape(b, c * k[0] * k[1], -1), (h, w), k, stride=s)


def backward_real(
    model: DeployedModel,
    params: RealParams,
    x: torch.Tensor,
    outputs: list[torch.Tensor],
    y: torch.Tensor,
    trained: set[int],
    bias_only: frozenset[int] | set[int] = frozenset(),
    policy=None,
    e_max: dict[int, float] | None = None,
    saturated: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> RealGrads:
    """Real backward of cross-entropy from the forward ``outputs`` (one per layer) on input ``x``,
    for the dense/conv layers in ``trained`` (``bias_only`` of them get no weight gradient). ``policy``
    is a ``backward.PartialPolicy`` (or ``None`` for full updates). ``saturated`` (mixed mode) gives
    per dense/conv layer the masks of outputs at the bottom and top of their uint8 range; the error
    that would push those further out is dropped, as ``kernels.saturation_grad`` does."""
    if not trained:
        raise ValueError("backward_real needs at least one trained layer")
    for i in trained:
        if not isinstance(model.layers[i], LINEAR):
            raise ValueError(f"layer {i} ({model.layers[i].kind}) has no weights to train")
    logits = outputs[-1]
    e = torch.softmax(logits, dim=1)
    e[torch.arange(y.shape[0]), y] -= 1.0
    lowest = min(trained)
    maxima = dict(e_max or {})
    weight, bias, rows_used, kept_per_sample = {}, {}, {}, {}
    macs = 0
    batch = x.shape[0]
    for i in range(len(model.layers) - 1, lowest - 1, -1):
        layer = model.layers[i]
        a_in = x if i == 0 else outputs[i - 1]
        if isinstance(layer, LINEAR):
            w = params[i][0]
            n_out = w.shape[0]
            rows = None
            kept = torch.full((batch,), n_out, dtype=torch.int64)
            if saturated is not None and i in saturated:
                low, high = saturated[i]
                e = torch.where((e < 0) & high | (e > 0) & low, torch.zeros_like(e), e)
            if i in trained and policy is not None:
                scores = e.abs().reshape(batch, n_out, -1).mean(2)
                keep, kept, maxima[i] = partial_mask(scores, maxima.get(i, 0.0), policy.lam_min, policy.lam_max)
                e = e * keep.reshape(list(keep.shape) + [1] * (e.ndim - 2)).to(e.dtype)
                rows = torch.nonzero(keep.any(0)).reshape(-1)
            work = int(kept.sum()) * w[0].numel() * (math.prod(e.shape[2:]) if e.ndim > 2 else 1)
            if i in trained:
                dz = e.reshape(batch, n_out, -1)
                if i not in bias_only:
                    cols = a_in.unsqueeze(2) if isinstance(layer, Dense) else _patches(layer, a_in)
                    gw = torch.zeros(n_out, cols.shape[1], dtype=e.dtype)
                    sel = torch.arange(n_out) if rows is None else rows
                    if sel.numel():
                        gw[sel] = torch.einsum("bop,bkp->ok", dz[:, sel], cols)
                    weight[i] = gw.reshape(w.shape)
                    macs += work
                bias[i] = dz.sum((0, 2))
                rows_used[i] = torch.arange(n_out) if rows is None else rows
                kept_per_sample[i] = kept
            if i > lowest:
                e = _input_grad(layer, e, a_in.shape, w)
                macs += work
        elif isinstance(layer, ReLU):
            e = e * (outputs[i] > 0).to(e.dtype)
        elif isinstance(layer, MaxPool):
            e = _maxpool_grad(layer, e, a_in)
        elif isinstance(layer, GlobalAvgPool):
            positions = math.prod(a_in.shape[2:])
            e = (e / positions).reshape(*e.shape, *([1] * (a_in.ndim - 2))).expand(a_in.shape)
        elif isinstance(layer, Flatten):
            e = e.reshape(a_in.shape)
        else:
            raise TypeError(f"no float backward for layer type {type(layer).__name__}")
    return RealGrads(weight, bias, rows_used, macs, maxima, kept_per_sample)


__all__ = ["RealGrads", "RealParams", "backward_real", "forward_real"]

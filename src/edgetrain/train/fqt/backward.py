"""The uint8 backward pass of a deployed network, with dynamic partial updates (Deutel et al.,
arXiv 2407.10734, sec. IV).

``backward_uint8`` walks the layers from the loss down to the lowest trained layer using only the
integer kernels of ``kernels.py``: the loss head quantizes ``softmax - onehot`` to the error format,
each layer's input error is requantized to uint8, and weight/bias gradients come back as int32
accumulators with their real scale. With a ``policy`` it applies dynamic partial updates: for each
trained layer, ``k = dynamic_k(e, e_max, N, lam_min, lam_max)`` output structures (dense rows, conv
filters) with the largest mean |error| are kept, the others are pruned from the error tensor, and their
weight-gradient and error-propagation work is skipped, and not counted in ``macs_backward``.

Error formats: one per layer input (``e_fmts``, default the fixed range [-1, 1] of ``error_format``).

``per_sample=True`` also returns each sample's int32 weight and bias gradients (the ``*_samples``
kernels, vectorized over the batch), which the opt-in int16 block-float gradient buffer
(``blockfloat``) adds one sample at a time; the default path computes only the batch sums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ...model import DeployedModel
from ...model.forward import ForwardTrace, forward_int
from ...model.layers import Conv1d, Conv2d, Dense, Flatten, GlobalAvgPool, MaxPool, ReLU
from ...quant import Affine
from .kernels import (
    bias_grad,
    bias_grad_samples,
    conv_input_acc,
    conv_weight_grad,
    conv_weight_grad_samples,
    dense_input_acc,
    dense_weight_grad,
    dense_weight_grad_samples,
    error_format,
    global_avg_pool_acc,
    global_avg_pool_grad,
    maxpool_grad,
    partial_mask,
    prune_error_per_sample,
    quantize_error,
    relu_grad,
    requant_error,
    sample_channel_error,
    sample_error_level,
    saturation_grad,
    softmax_minus_onehot_table,
)


@dataclass(frozen=True)
class PartialPolicy:
    """Dynamic partial updates: the kept fraction moves between ``lam_min`` and ``lam_max`` with the
    layer's error relative to the largest seen. ``lam_min == lam_max`` is a fixed update rate."""

    lam_min: float = 0.1
    lam_max: float = 0.1

    def __post_init__(self) -> None:
        if not (0.0 <= self.lam_min <= self.lam_max <= 1.0):
            raise ValueError(f"need 0 <= lam_min <= lam_max <= 1, got {self.lam_min}, {self.lam_max}")


@dataclass(frozen=True, eq=False)
class Grads:
    """One backward pass over a batch: int32 gradient accumulators (summed over the samples) with
    their real scales, the structures each sample updated, the MACs actually done, the updated
    running maxima of the error, and the largest |error| seen before each error quantization.

    ``rows[i]`` are the output structures of layer ``i`` that at least one sample updated (ascending);
    ``kept[i]`` is ``[B]``: how many each sample kept. ``e_absmax[i]`` is the largest real |value| of
    the error at layer ``i``'s input before it was quantized (``i = len(layers)``: the loss head), what
    the moving-average range mode tracks.

    ``weight_samples`` / ``bias_samples`` are filled only by ``backward_uint8(..., per_sample=True)``:
    each sample's own int32 accumulators (``[B, *shape]``, same scales), what the int16 block-float
    buffer adds one at a time. In that mode ``weight`` / ``bias`` hold their exact sums (int64: a device
    with the block-float buffer never forms them, so they are not held to the int32 range).
    """

    weight: dict[int, tuple[torch.Tensor, float]] = field(default_factory=dict)
    bias: dict[int, tuple[torch.Tensor, float]] = field(default_factory=dict)
    rows: dict[int, torch.Tensor] = field(default_factory=dict)
    macs_backward: int = 0
    e_max: dict[int, float] = field(default_factory=dict)
    loss_error: torch.Tensor | None = None
    kept: dict[int, torch.Tensor] = field(default_factory=dict)
    e_absmax: dict[int, float] = field(default_factory=dict)
    weight_samples: dict[int, tuple[torch.Tensor, float]] = field(default_factory=dict)
    bias_samples: dict[int, tuple[torch.Tensor, float]] = field(default_factory=dict)

    def real_weight_grad(self, index: int) -> torch.Tensor:
        """Per-element float temporary of layer ``index``'s weight gradient."""
        acc, scale = self.weight[index]
        return acc.to(torch.float64) * scale

    def real_bias_grad(self, index: int) -> torch.Tensor:
        acc, scale = self.bias[index]
        return acc.to(torch.float64) * scale


def _check_uint8(model: DeployedModel, trained: set[int]) -> None:
    for i in trained:
        layer = model.layers[i]
        if not isinstance(layer, (Dense, Conv2d, Conv1d)):
            raise ValueError(f"layer {i} ({layer.kind}) has no weights to train")
    for i, layer in enumerate(model.layers):
        for fmt in ([layer.w_fmt, layer.in_fmt, layer.out_fmt] if isinstance(layer, (Dense, Conv2d, Conv1d))
                    else []):
            if not isinstance(fmt, Affine) or fmt.per_channel:
                raise ValueError(f"layer {i}: FQT needs per-tensor affine (uint8) formats; deploy with "
                                 f"--format uint8 (got {fmt.name})")


def _batch_grads(layer, e, ef, raw_in, rows, with_weight: bool):
    """(weight grad or None, bias grad, (None, None)): the int32 accumulators summed over the batch."""
    w = None
    if with_weight:
        w = (dense_weight_grad(e, ef, raw_in, layer.in_fmt, rows) if isinstance(layer, Dense)
             else conv_weight_grad(e, ef, raw_in, layer.in_fmt, tuple(layer.weight.shape[2:]), layer.stride,
                                   layer.padding, rows))
    return w, bias_grad(e, ef, rows), (None, None)


def _sample_grads(layer, e, ef, raw_in, rows, with_weight: bool):
    """(weight sum or None, bias sum, (weight per sample or None, bias per sample)): each sample's int32
    accumulators and their exact int64 sums."""
    w = None
    if with_weight:
        w = (dense_weight_grad_samples(e, ef, raw_in, layer.in_fmt, rows) if isinstance(layer, Dense)
             else conv_weight_grad_samples(e, ef, raw_in, layer.in_fmt, tuple(layer.weight.shape[2:]), layer.stride,
                                           layer.padding, rows))
    b = bias_grad_samples(e, ef, rows)
    total = None if w is None else (w[0].sum(0), w[1])
    return total, (b[0].sum(0), b[1]), (w, b)


def backward_uint8(
    model: DeployedModel,
    q: torch.Tensor,
    y: torch.Tensor,
    trained: set[int],
    trace: ForwardTrace | None = None,
    e_fmts: dict[int, Affine] | None = None,
    policy: PartialPolicy | None = None,
    e_max: dict[int, float] | None = None,
    bias_only: frozenset[int] | set[int] = frozenset(),
    per_sample: bool = False,
) -> Grads:
    """Integer backward of ``model`` on raw input ``q`` and labels ``y``, computing the weight and
    bias gradients of the ``trained`` layers (indices of dense/conv layers; those also in ``bias_only``
    get only their bias gradient, and their weight-gradient work is neither done nor counted).
    ``per_sample`` also keeps each sample's gradients (``Grads.weight_samples``); the errors, the
    kept rows and the MACs do not depend on it. See the module docstring."""
    if not trained:
        raise ValueError("backward_uint8 needs at least one trained layer")
    _check_uint8(model, trained)
    if trace is None:
        trace = forward_int(model, q, overflow="wrap", trace=True)
    e_fmts = dict(e_fmts or {})

    def fmt_of(i: int) -> Affine:  # error format of layer i's input (i = len(layers): the loss head)
        return e_fmts.get(i, error_format())

    n_layers = len(model.layers)
    real_g = softmax_minus_onehot_table(trace.outputs[-1], model.output_fmt, y)
    absmax = {n_layers: float(real_g.abs().max()) if real_g.numel() else 0.0}
    e = quantize_error(real_g, fmt_of(n_layers))
    loss_error = e
    ef = fmt_of(n_layers)
    lowest = min(trained)
    maxima = dict(e_max or {})
    weight, bias, rows_used, kept_per_sample = {}, {}, {}, {}
    weight_samples, bias_samples = {}, {}
    macs = 0
    batch = q.shape[0]
    for i in range(n_layers - 1, lowest - 1, -1):
        layer = model.layers[i]
        raw_in = q if i == 0 else trace.outputs[i - 1]
        in_ef = fmt_of(i)
        if isinstance(layer, (Dense, Conv2d, Conv1d)):
            n_out = layer.weight.shape[0]
            rows = None
            kept = torch.full((batch,), n_out, dtype=torch.int64)
            e = saturation_grad(e, ef, trace.outputs[i], layer.out_fmt)
            if i in trained and policy is not None:
                keep, kept, maxima[i] = partial_mask(sample_channel_error(e, ef), maxima.get(i, 0.0),
                                                     policy.lam_min, policy.lam_max, sample_error_level(e, ef))
                e = prune_error_per_sample(e, ef, keep)
                rows = torch.nonzero(keep.any(0)).reshape(-1)
            fan_in = layer.weight[0].numel()
            positions = math.prod(e.shape[2:]) if e.ndim > 2 else 1
            work = int(kept.sum()) * fan_in * positions
            if i in trained:
                grads = _sample_grads if per_sample else _batch_grads
                w_grad, bias[i], (w_samples, b_samples) = grads(layer, e, ef, raw_in, rows, i not in bias_only)
                if w_grad is not None:
                    weight[i] = w_grad
                    macs += work
                if w_samples is not None:
                    weight_samples[i] = w_samples
                if b_samples is not None:
                    bias_samples[i] = b_samples
                rows_used[i] = torch.arange(n_out) if rows is None else rows
                kept_per_sample[i] = kept
            if i > lowest:
                if isinstance(layer, Dense):
                    acc, scale = dense_input_acc(e, ef, layer.weight, layer.w_fmt)
                else:
                    acc, scale = conv_input_acc(e, ef, layer.weight, layer.w_fmt, tuple(raw_in.shape[1:]),
                                                layer.stride, layer.padding)
                absmax[i] = float(acc.abs().max()) * scale if acc.numel() else 0.0
                e = requant_error(acc, scale, in_ef)
                macs += work
        elif isinstance(layer, ReLU):
            e = relu_grad(e, ef, trace.outputs[i], layer.fmt)
        elif isinstance(layer, MaxPool):
            e = maxpool_grad(e, ef, raw_in, layer.kernel, layer.stride)
        elif isinstance(layer, GlobalAvgPool):
            acc, scale = global_avg_pool_acc(e, ef, tuple(raw_in.shape[1:]))
            absmax[i] = float(acc.abs().max()) * scale if acc.numel() else 0.0
            e = global_avg_pool_grad(e, ef, tuple(raw_in.shape[1:]), in_ef)
        elif isinstance(layer, Flatten):
            e = e.reshape(raw_in.shape)
        else:
            raise TypeError(f"no uint8 backward for layer type {type(layer).__name__}")
        if not isinstance(layer, (Dense, Conv2d, Conv1d, GlobalAvgPool)):
            in_ef = ef  # element-wise layers keep the error format
        ef = in_ef
    return Grads(weight, bias, rows_used, macs, maxima, loss_error, kept_per_sample, absmax, weight_samples,
                 bias_samples)


__all__ = ["Grads", "PartialPolicy", "backward_uint8"]

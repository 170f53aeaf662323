"""Two forwards through a ``DeployedModel``: integer-exact (what the device computes) and float.

Integer-exact semantics (the contract the C and hardware back ends must match bit for bit):

* Dense/Conv: ``acc = sum((a - z_a) * (w - z_w)) + (b << bias_shift)``, exact, then checked to
  fit a signed 32-bit accumulator; ``out = fit(round(acc * m / 2**shift) + z_out)`` (see
  ``quant.requantize``). For ``ap_fixed`` formats ``z = 0``, ``m = 1`` and this is a rounded shift
  by ``f_a + f_w - f_out`` bits. The accumulator is wide (32 bits), as in an hls4ml design whose
  ``accum_t`` is set wide enough; hls4ml's default of accumulating in the layer precision is not
  modelled.
* ReLU: ``max(q, z)``. MaxPool: max of raw values (monotone in the real value). Flatten: reshape.
* GlobalAvgPool: exact sum of ``q - z`` over positions, requantized by ``1 / positions``.

Inside the forward, activations are float64 tensors holding exact integers, so BLAS and oneDNN do
the products: float64 is exact while every partial sum stays below 2**53, which each layer checks
from its formats (falling back to int64 otherwise). Public results are int64.
"""

from __future__ import annotations

import functools
import itertools
import math
import weakref
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..quant import (
    FixedPoint,
    Format,
    dequantize,
    multipliers,
    quantize,
    requantize,
    scale_of,
    zero_point_of,
)
from .deployed import DeployedModel
from .layers import Conv1d, Conv2d, Dense, Flatten, GlobalAvgPool, Layer, MaxPool, ReLU

ACC_BITS = 32
ACC_MIN, ACC_MAX = -(1 << (ACC_BITS - 1)), (1 << (ACC_BITS - 1)) - 1
OVERFLOW_POLICIES = ("raise", "wrap")


class AccumulatorOverflowError(OverflowError):
    """An accumulator left the signed 32-bit range: the device would silently wrap here."""


@dataclass
class ForwardTrace:
    """Per-layer raw outputs of an integer forward and how many accumulators overflowed."""

    outputs: list[torch.Tensor] = field(default_factory=list)
    overflows: dict[int, int] = field(default_factory=dict)


def _ch_view(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a per-output-channel vector (or scalar) to broadcast over ``[N, C, ...]``."""
    if t.numel() == 1:
        return t.reshape(())
    return t.reshape([1, -1] + [1] * (ndim - 2))


def _span_bits(fmt: Format) -> int:
    """Bits needed for ``|q - z|`` (at most ``2**bits``)."""
    return fmt.bits + (0 if isinstance(fmt, FixedPoint) else 1)


def acc_scale(layer: Dense | Conv2d | Conv1d) -> torch.Tensor:
    """Real value of one accumulator step (float64; per output channel for per-channel weights)."""
    return scale_of(layer.in_fmt) * scale_of(layer.w_fmt, 1).reshape(-1)


def bias_shift(layer: Dense | Conv2d | Conv1d) -> int:
    """Left shift that aligns the stored bias to the accumulator's scale (0 for affine formats)."""
    ratio = (scale_of(layer.b_fmt, 1).reshape(-1) / acc_scale(layer)).tolist()
    shifts = {math.log2(r) for r in ratio}
    if len(shifts) != 1 or not all(s == int(s) and s >= 0 for s in shifts):
        raise ValueError(f"{layer.kind}: bias format {layer.b_fmt.name} is not aligned to the "
                         "accumulator (its scale must be the accumulator scale times 2**k, k >= 0)")
    return int(shifts.pop())


def requant_params(layer: Dense | Conv2d | Conv1d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(m, shift)`` int64 per output channel (or scalars) for this layer's requantization."""
    return multipliers(acc_scale(layer), layer.out_fmt)


class _Constants(NamedTuple):
    m: torch.Tensor  # requantization multipliers, per output channel or scalar
    shift: torch.Tensor
    bias: torch.Tensor  # bias aligned to the accumulator (int64)
    exact_f64: bool


_CONSTANTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _constants(layer: Dense | Conv2d | Conv1d) -> _Constants:
    """Per-layer constants derived from its formats and bias, computed once per layer object
    (layers are immutable; a trainer's new layer gets its own entry, dropped with the layer). The
    part that depends on the formats alone is shared by every layer with the same formats, so a
    trainer that rewrites a bias every sample does not recompute the requantization multipliers."""
    c = _CONSTANTS.get(layer)
    if c is None:
        m, s, shift, exact = _format_constants(layer.kind, layer.in_fmt, layer.w_fmt, layer.b_fmt, layer.out_fmt,
                                               layer.weight[0].numel())
        c = _Constants(m, s, torch.bitwise_left_shift(layer.bias, shift), exact)
        _CONSTANTS[layer] = c
    return c


@functools.lru_cache(maxsize=512)
def _format_constants(kind: str, in_fmt: Format, w_fmt: Format, b_fmt: Format, out_fmt: Format,
                      fan_in: int) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
    """``(m, shift, bias_shift, exact_f64)`` of a layer with these formats and fan-in (the tensors are
    shared between layers: read them, never write them in place)."""
    probe = Dense(torch.zeros(1, fan_in, dtype=torch.int64), torch.zeros(1, dtype=torch.int64), in_fmt, w_fmt,
                  b_fmt, out_fmt)
    m, s = requant_params(probe)
    return m, s, bias_shift(probe), _exact_in_float64(probe)


def _exact_in_float64(layer: Dense | Conv2d | Conv1d) -> bool:
    """Every partial sum of products plus the aligned bias stays below 2**53 in magnitude."""
    products = math.log2(layer.weight[0].numel()) + _span_bits(layer.in_fmt) + _span_bits(layer.w_fmt)
    return max(products, layer.b_fmt.bits + bias_shift(layer)) + 1 < 53


def _linear_acc(layer: Dense | Conv2d | Conv1d, a: torch.Tensor) -> torch.Tensor:
    """Exact accumulator of a dense or convolution layer for centred input ``a`` (bias included):
    float64 holding exact integers when that is exact for these formats, else int64."""
    w = layer.weight - zero_point_of(layer.w_fmt, layer.weight.ndim)
    const = _constants(layer)
    b = const.bias
    if not const.exact_f64:
        a, w = a.to(torch.int64), w.to(torch.int64)
        acc = a @ w.T if isinstance(layer, Dense) else _int_conv(layer, a, w)
        return acc + _ch_view(b, acc.ndim)
    a, w, b = a.to(torch.float64), w.to(torch.float64), b.to(torch.float64)
    if isinstance(layer, Dense):
        return torch.addmm(b, a, w.T)
    if isinstance(layer, Conv2d):  # channels-last runs the float64 convolution ~1.5x faster
        a = a.contiguous(memory_format=torch.channels_last)
        return F.conv2d(a, w, b, stride=layer.stride, padding=layer.padding)
    return F.conv1d(a, w, b, stride=layer.stride, padding=layer.padding)


def _int_conv(layer: Conv2d | Conv1d, a: torch.Tensor, w: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """int64 convolution via unfold + matmul, for formats too wide for exact float64. ``groups``
    splits the channels as ``F.conv2d`` does (the population forward runs one group per member)."""
    if isinstance(layer, Conv1d):
        a2, w2 = a.unsqueeze(2), w.unsqueeze(2)
        stride, padding = (1, layer.stride), (0, layer.padding)
    else:
        a2, w2, stride, padding = a, w, layer.stride, layer.padding
    n, kh, kw = a2.shape[0], w2.shape[2], w2.shape[3]
    h = (a2.shape[2] + 2 * padding[0] - kh) // stride[0] + 1
    wd = (a2.shape[3] + 2 * padding[1] - kw) // stride[1] + 1
    cols = F.unfold(a2.double(), (kh, kw), padding=padding, stride=stride).to(torch.int64)
    if groups == 1:
        out = w2.reshape(w2.shape[0], -1) @ cols
    else:  # [groups, out/groups, k] @ [n, groups, k, positions]: the k columns of group g are contiguous
        out = w2.reshape(groups, w2.shape[0] // groups, -1) @ cols.unflatten(1, (groups, -1))
    out = out.reshape(n, w2.shape[0], h, wd)
    return out.squeeze(2) if isinstance(layer, Conv1d) else out


def _max_pool(q: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
    """Max pooling (no padding) as an elementwise maximum over the window's strided views: one
    ``maximum`` per window position, several times faster than the float64 pooling kernel."""
    out_sizes = [(n - k) // s + 1 for n, k, s in zip(q.shape[2:], kernel, stride, strict=True)]
    result = None
    for offsets in itertools.product(*(range(k) for k in kernel)):
        index = [slice(None), slice(None)] + [
            slice(o, o + s * (n - 1) + 1, s) for o, s, n in zip(offsets, stride, out_sizes, strict=True)]
        view = q[tuple(index)]
        result = view if result is None else torch.maximum(result, view)
    return result


def _check_acc(acc: torch.Tensor, index: int, layer: Layer, policy: str, trace: ForwardTrace | None):
    lo, hi = (int(v) for v in torch.aminmax(acc))
    if lo >= ACC_MIN and hi <= ACC_MAX:
        return acc
    if policy == "raise":
        count = int(((acc < ACC_MIN) | (acc > ACC_MAX)).sum())
        raise AccumulatorOverflowError(
            f"layer {index} ({layer.kind}): {count} accumulator value(s) outside the signed "
            f"{ACC_BITS}-bit range (min {lo}, max {hi}); the device would wrap silently. "
            "Use a narrower format (fewer fractional bits, e.g. --format fixed16_6), or "
            "forward_int(..., overflow='wrap') to emulate the wrap.")
    if trace is not None:
        trace.overflows[index] = trace.overflows.get(index, 0) + int(((acc < ACC_MIN) | (acc > ACC_MAX)).sum())
    return torch.remainder(acc - ACC_MIN, 1 << ACC_BITS) + ACC_MIN


def layer_forward_int(
    layer: Layer, q: torch.Tensor, index: int = 0, overflow: str = "raise",
    trace: ForwardTrace | None = None,
) -> torch.Tensor:
    """One layer of the integer-exact forward on raw input ``q`` (batch first): int64, or float64
    holding exact integers; the result is float64 holding exact integers."""
    q = q.to(torch.float64)
    if isinstance(layer, (Dense, Conv2d, Conv1d)):
        z = int(zero_point_of(layer.in_fmt))
        a = q - z if z else q
        acc = _check_acc(_linear_acc(layer, a), index, layer, overflow, trace)
        c = _constants(layer)
        return requantize(acc, _ch_view(c.m, acc.ndim), _ch_view(c.shift, acc.ndim), layer.out_fmt).to(torch.float64)
    if isinstance(layer, ReLU):
        return torch.clamp(q, min=int(zero_point_of(layer.fmt)))
    if isinstance(layer, MaxPool):
        return _max_pool(q, layer.kernel, layer.stride)
    if isinstance(layer, GlobalAvgPool):
        positions = math.prod(q.shape[2:])
        acc = (q - zero_point_of(layer.in_fmt)).flatten(2).sum(dim=2)
        acc = _check_acc(acc, index, layer, overflow, trace)
        m, s = multipliers(scale_of(layer.in_fmt) / positions, layer.out_fmt)
        return requantize(acc, m, s, layer.out_fmt).to(torch.float64)
    if isinstance(layer, Flatten):
        return q.flatten(1)
    raise TypeError(f"unknown layer type {type(layer).__name__}")


def _check_input(model: DeployedModel, x: torch.Tensor, integer: bool) -> None:
    if tuple(x.shape[1:]) != model.input_shape:
        raise ValueError(f"input has shape {tuple(x.shape)}; the model expects (N, "
                         f"{', '.join(map(str, model.input_shape))})")
    if integer and x.is_floating_point():
        raise TypeError("forward_int takes raw integer input; use quantize_input() on real values")


def quantize_input(model: DeployedModel, x: torch.Tensor) -> torch.Tensor:
    """Real-valued input batch -> raw integers in the model's input format."""
    _check_input(model, x, integer=False)
    return quantize(x, model.input_fmt)


def forward_int(
    model: DeployedModel, q: torch.Tensor, overflow: str = "raise", trace: bool = False,
) -> torch.Tensor | ForwardTrace:
    """Integer-exact forward of raw input ``q`` ``[N, *input_shape]``; returns raw output logits.

    ``overflow='raise'`` (default) raises :class:`AccumulatorOverflowError` naming the layer;
    ``'wrap'`` emulates the two's-complement wrap of a 32-bit accumulator and, with
    ``trace=True``, counts the events. ``trace=True`` returns a :class:`ForwardTrace`.
    """
    if overflow not in OVERFLOW_POLICIES:
        raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}, got {overflow!r}")
    _check_input(model, q, integer=True)
    h = q.to(torch.float64)
    tr = ForwardTrace() if trace else None
    for i, layer in enumerate(model.layers):
        h = layer_forward_int(layer, h, i, overflow, tr)
        if tr is not None:
            tr.outputs.append(h.to(torch.int64))
    return tr if tr is not None else h.to(torch.int64)


def layer_forward_float(layer: Layer, x: torch.Tensor) -> torch.Tensor:
    """One layer in float64 with the stored (dequantized) parameters and no activation rounding."""
    if isinstance(layer, (Dense, Conv2d, Conv1d)):
        w, b = dequantize(layer.weight, layer.w_fmt), dequantize(layer.bias, layer.b_fmt).reshape(-1)
        if isinstance(layer, Dense):
            return x @ w.T + b
        conv = F.conv2d if isinstance(layer, Conv2d) else F.conv1d
        return conv(x, w, b, stride=layer.stride, padding=layer.padding)
    if isinstance(layer, ReLU):
        return torch.relu(x)
    if isinstance(layer, MaxPool):
        pool = F.max_pool2d if len(layer.kernel) == 2 else F.max_pool1d
        return pool(x, layer.kernel, layer.stride)
    if isinstance(layer, GlobalAvgPool):
        return x.flatten(2).mean(dim=2)
    if isinstance(layer, Flatten):
        return x.flatten(1)
    raise TypeError(f"unknown layer type {type(layer).__name__}")


def forward_float(model: DeployedModel, x: torch.Tensor) -> torch.Tensor:
    """Float reference: the deployed parameters in float64, activations never rounded.

    The gap between this and :func:`forward_int` is the activation quantization error alone.
    """
    _check_input(model, x, integer=False)
    x = x.to(torch.float64)
    for layer in model.layers:
        x = layer_forward_float(layer, x)
    return x


def predict(model: DeployedModel, x: torch.Tensor, batch_size: int = 1024,
            overflow: str = "raise") -> torch.Tensor:
    """Class predictions of the integer-exact forward for real-valued inputs ``x``."""
    preds = []
    for start in range(0, x.shape[0], batch_size):
        q = quantize_input(model, x[start:start + batch_size])
        preds.append(forward_int(model, q, overflow=overflow).argmax(dim=1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.int64)


def accuracy(model: DeployedModel, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024,
             overflow: str = "raise") -> float:
    """Fraction of ``x`` classified as ``y`` by the integer-exact forward."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} inputs but {y.shape[0]} labels")
    if x.shape[0] == 0:
        raise ValueError("cannot compute accuracy on an empty set")
    return float((predict(model, x, batch_size, overflow) == y).double().mean())


def output_real(model: DeployedModel, q_out: torch.Tensor) -> torch.Tensor:
    """Raw output integers -> real logits."""
    return dequantize(q_out, model.output_fmt)


__all__ = [
    "AccumulatorOverflowError", "ForwardTrace", "accuracy", "acc_scale", "bias_shift", "forward_float",
    "forward_int", "layer_forward_float", "layer_forward_int", "output_real", "predict",
    "quantize_input", "requant_params",
]

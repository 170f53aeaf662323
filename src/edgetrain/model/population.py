"""Integer-exact forward of a *population*: P copies of a model that differ in some parameters,
all on one shared input batch, computed as one batched forward (what an evolution-strategies step
evaluates) instead of P calls to :func:`~edgetrain.model.forward.forward_int`.

Member ``p``'s logits are bit for bit those of ``forward_int(model.with_params({n: members[n][p]}),
q, overflow)``, overflow behaviour included. That holds because nothing in the forward depends on
the order of summation: float64 sums of exact integers are exact while ``_exact_in_float64``
holds (it depends only on formats, which members share), and int64 sums are exact modulo 2**64.

Layout. Layers before the first layer with a per-member parameter run once on ``[B, ...]``. From
that layer on, activations hold the ``P * B`` rows of all members, ordered batch-major (row
``b * P + p``) or member-major (row ``p * B + b``), whichever the last population layer produced
for free: a convolution over all members gives ``[B, P * C, ...]``, which is batch-major, and a
batched matmul gives ``[P, B, n]``, which is member-major. Layers whose parameters are shared work
row by row, so they run on either order unchanged (``layer_forward_int``). A layer with per-member
parameters does one batched product: a single matmul or convolution over the stacked weights when
its input is still shared, else ``baddbmm`` (dense) or a convolution with ``groups=P``.
Requantization constants come from formats only, so members share them.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..quant import FixedPoint, in_range, requantize, zero_point_of
from .deployed import DeployedModel
from .forward import (
    OVERFLOW_POLICIES,
    AccumulatorOverflowError,
    _ch_view,
    _check_acc,
    _check_input,
    _constants,
    _int_conv,
    bias_shift,
    layer_forward_int,
)
from .layers import Conv1d, Conv2d, Dense, Layer

Linear = Dense | Conv2d | Conv1d

# How the rows of an activation are ordered: one per input (every member sees the same), or the
# P * B rows of all members, batch-major (row b * P + p) or member-major (row p * B + b).
SHARED, BATCH_MAJOR, MEMBER_MAJOR = "shared", "batch-major", "member-major"


@dataclass(frozen=True)
class _LayerMembers:
    """One layer's per-member parameters: int64 ``[P, *shape]``, or None where shared."""

    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None


class _Rows(NamedTuple):
    """Batch size, population size and row order of the current activation."""

    batch: int
    n_pop: int
    order: str

    def by_member(self, h: torch.Tensor) -> torch.Tensor:
        """``h`` as ``[P, B, ...]`` (a view; expanded when the input is still shared)."""
        if self.order == SHARED:
            return h.expand(self.n_pop, *h.shape)
        if self.order == MEMBER_MAJOR:
            return h.unflatten(0, (self.n_pop, self.batch))
        return h.unflatten(0, (self.batch, self.n_pop)).transpose(0, 1)

    def by_batch(self, h: torch.Tensor) -> torch.Tensor:
        """Population rows ``h`` as ``[B, P, ...]`` (a view of batch-major rows)."""
        if self.order == MEMBER_MAJOR:
            return h.unflatten(0, (self.n_pop, self.batch)).transpose(0, 1)
        return h.unflatten(0, (self.batch, self.n_pop))


def forward_int_population(
    model: DeployedModel, q: torch.Tensor, members: Mapping[str, torch.Tensor], overflow: str = "raise",
) -> torch.Tensor:
    """Integer-exact forward of P parameter variants of ``model`` on the raw input ``q``
    ``[B, *input_shape]``; returns raw logits int64 ``[P, B, *output_shape]``.

    ``members`` maps parameter names (as ``model.params()`` names them, ``"<layer>.weight"`` /
    ``"<layer>.bias"``) to int64 raw values ``[P, *param_shape]``, the same P >= 1 for every entry;
    parameters not named are the model's own. ``out[p]`` equals ``forward_int(model.with_params(
    {n: members[n][p] for n in members}), q, overflow)`` exactly. With ``overflow='raise'`` an
    accumulator overflow raises :class:`AccumulatorOverflowError` naming the layer and the
    overflowing members; ``'wrap'`` emulates the 32-bit wrap as ``forward_int`` does.
    """
    if overflow not in OVERFLOW_POLICIES:
        raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}, got {overflow!r}")
    _check_input(model, q, integer=False)
    if q.is_floating_point() or q.is_complex() or q.dtype == torch.bool:
        raise TypeError(f"forward_int_population takes raw integer input, got {q.dtype}; "
                        "use quantize_input() on real values")
    n_pop, per_layer = _split_members(model, members)
    first = min(per_layer)
    h = q.to(torch.float64)
    for i, layer in enumerate(model.layers[:first]):
        h = layer_forward_int(layer, h, i, overflow)
    rows = _Rows(q.shape[0], n_pop, SHARED)
    for i in range(first, len(model.layers)):
        layer, mem = model.layers[i], per_layer.get(i)
        try:
            if mem is None:
                h = layer_forward_int(layer, h, i, overflow)
            else:
                h, order = _population_layer(layer, mem, i, h, rows, overflow)
                rows = rows._replace(order=order)
        except AccumulatorOverflowError:
            raise _name_members(layer, mem, i, h, rows) from None
    return rows.by_member(h.to(torch.int64)).contiguous()


def _split_members(model: DeployedModel, members: Mapping[str, torch.Tensor]) -> tuple[int, dict[int, _LayerMembers]]:
    """Check ``members`` against the model's parameters and group them by layer: ``(P, {layer
    index: its per-member parameters})``. Every error names the parameter and what was expected."""
    if not isinstance(members, Mapping):
        raise TypeError(f"members must be a dict of parameter name -> [P, ...] tensor, got {type(members).__name__}")
    specs = {name: (raw, fmt) for name, raw, fmt in model.params()}
    if not members:
        raise ValueError(f"members is empty: name at least one parameter (one of {list(specs)}) to give the "
                         "population its size; use forward_int for the model alone")
    n_pop, first_name = None, None
    grouped: dict[int, dict[str, torch.Tensor]] = {}
    for name, raw in members.items():
        if name not in specs:
            raise KeyError(f"members: the model has no parameter {name!r}; valid names are {list(specs)}")
        old, fmt = specs[name]
        if not isinstance(raw, torch.Tensor):
            raise TypeError(f"members[{name!r}] must be a torch.Tensor, got {type(raw).__name__}")
        if raw.is_floating_point() or raw.is_complex() or raw.dtype == torch.bool:
            raise TypeError(f"members[{name!r}]: raw values must be integers (int64), got {raw.dtype}")
        expected = ", ".join(["P", *map(str, old.shape)])
        if raw.ndim != old.ndim + 1 or raw.shape[1:] != old.shape:
            raise ValueError(f"members[{name!r}]: expected shape [{expected}] (P members of the "
                             f"{tuple(old.shape)} parameter), got {list(raw.shape)}")
        if raw.shape[0] < 1:
            raise ValueError(f"members[{name!r}]: the population needs P >= 1 members, got 0")
        if n_pop is None:
            n_pop, first_name = raw.shape[0], name
        elif raw.shape[0] != n_pop:
            raise ValueError(f"members[{name!r}] has P = {raw.shape[0]} members but members[{first_name!r}] "
                             f"has P = {n_pop}; every entry must have the same P")
        raw = raw.to(torch.int64)
        if not in_range(raw, fmt):
            flat = raw.flatten(1)
            bad = torch.nonzero((flat < fmt.raw_min).any(1) | (flat > fmt.raw_max).any(1)).flatten().tolist()
            raise ValueError(f"members[{name!r}]: member(s) {bad} have values outside the range of "
                             f"{fmt.name} [{fmt.raw_min}, {fmt.raw_max}]")
        index, kind = name.split(".")
        grouped.setdefault(int(index), {})[kind] = raw
    return n_pop, {i: _LayerMembers(**params) for i, params in grouped.items()}


def _population_layer(
    layer: Layer, mem: _LayerMembers, index: int, h: torch.Tensor, rows: _Rows, overflow: str,
) -> tuple[torch.Tensor, str]:
    """A dense or convolution layer with per-member parameters on input rows ``h`` (ordered as
    ``rows`` says): returns the ``P * B`` output rows (float64 holding exact integers), and their
    order."""
    if not isinstance(layer, (Dense, Conv2d, Conv1d)):  # only these have parameters
        raise TypeError(f"layer {index} ({layer.kind}) has no parameters to vary")
    z = int(zero_point_of(layer.in_fmt))
    acc, order = _population_acc(layer, h - z if z else h, mem, rows)
    acc = _check_acc(acc, index, layer, overflow, None)
    c = _constants(layer)
    out = requantize(acc, _ch_view(c.m, acc.ndim), _ch_view(c.shift, acc.ndim), layer.out_fmt)
    return out.to(torch.float64), order


def _population_acc(layer: Linear, a: torch.Tensor, mem: _LayerMembers, rows: _Rows) -> tuple[torch.Tensor, str]:
    """Exact accumulators of every member (bias included) and their row order: float64 when the
    layer's formats make that exact, else int64, as in ``forward._linear_acc``."""
    const = _constants(layer)
    dtype = torch.float64 if const.exact_f64 else torch.int64
    a = a.to(dtype)
    if mem.bias is None:
        bias = const.bias.reshape(1, -1).expand(rows.n_pop, -1)
    else:
        bias = torch.bitwise_left_shift(mem.bias, _bias_shift(layer)).reshape(rows.n_pop, -1)
    bias = bias.to(dtype)  # [P, out]
    if mem.weight is None:
        return _add_member_bias(_shared_weight_product(layer, a, _centred(layer, layer.weight, dtype)), bias, rows)
    w = _centred(layer, mem.weight, dtype)  # [P, out, in, ...]
    if isinstance(layer, Dense):
        return _dense_population(a, w, bias, rows)
    return _conv_population(layer, a, w, bias, rows), BATCH_MAJOR


def _bias_shift(layer: Linear) -> int:
    """``forward.bias_shift`` (formats only), computed once per layer object: it costs more than
    the shift itself."""
    shift = _BIAS_SHIFTS.get(layer)
    if shift is None:
        shift = _BIAS_SHIFTS[layer] = bias_shift(layer)
    return shift


_BIAS_SHIFTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _centred(layer: Linear, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``weight - z_w`` (the layer's weight zero points, per output channel where per-channel) in
    ``dtype``; ``weight`` is the layer's own ``[out, ...]`` or the members' ``[P, out, ...]``. The
    subtraction is skipped when every zero point is 0 (fixed point, symmetric int8)."""
    fmt = layer.w_fmt
    if isinstance(fmt, FixedPoint) or not any(fmt.zero_point):
        return weight.to(dtype)
    return (weight - zero_point_of(fmt, layer.weight.ndim)).to(dtype)


def _shared_weight_product(layer: Linear, a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``a`` times the shared weight, row by row, without bias, in ``a``'s dtype."""
    if isinstance(layer, Dense):
        return a @ w.T
    if a.dtype == torch.int64:
        return _int_conv(layer, a, w)
    if isinstance(layer, Conv2d):
        return F.conv2d(a.contiguous(memory_format=torch.channels_last), w, stride=layer.stride,
                        padding=layer.padding)
    return F.conv1d(a, w, stride=layer.stride, padding=layer.padding)


def _add_member_bias(prod: torch.Tensor, bias: torch.Tensor, rows: _Rows) -> tuple[torch.Tensor, str]:
    """Add per-member biases ``[P, out]`` to a shared-weight product, keeping its row order (a
    shared input becomes batch-major rows)."""
    spatial = [1] * (prod.ndim - 2)
    if rows.order == MEMBER_MAJOR:
        acc = prod.unflatten(0, (rows.n_pop, rows.batch)) + bias.reshape(rows.n_pop, 1, -1, *spatial)
        return acc.flatten(0, 1), MEMBER_MAJOR
    acc = prod.unflatten(0, (rows.batch, -1)) + bias.reshape(rows.n_pop, -1, *spatial)
    return acc.flatten(0, 1), BATCH_MAJOR


def _dense_population(a: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, rows: _Rows) -> tuple[torch.Tensor, str]:
    """Dense accumulators with per-member weights ``w`` ``[P, out, in]`` and bias ``[P, out]``.

    A shared input ``[B, in]`` meets all members' weights in one matmul against the stacked
    ``[P * out, in]`` matrix, whose ``[B, P * out]`` output is batch-major rows. Per-member input
    takes one ``baddbmm`` over ``[P, B, in]``, whose output is member-major rows.
    """
    n_pop, n_out = w.shape[0], w.shape[1]
    if rows.order == SHARED:
        stacked = w.reshape(n_pop * n_out, -1)
        if a.dtype == torch.float64:
            acc = torch.addmm(bias.reshape(-1), a, stacked.T)
        else:
            acc = a @ stacked.T + bias.reshape(-1)
        return acc.reshape(rows.batch * n_pop, n_out), BATCH_MAJOR
    acc = torch.baddbmm(bias.unsqueeze(1), rows.by_member(a), w.transpose(1, 2))  # [P, B, out]
    return acc.flatten(0, 1), MEMBER_MAJOR


def _conv_population(layer: Conv2d | Conv1d, a: torch.Tensor, w: torch.Tensor, bias: torch.Tensor,
                     rows: _Rows) -> torch.Tensor:
    """Convolution accumulators with per-member weights ``w`` ``[P, out, in, k...]``, as
    batch-major rows.

    All members run as one convolution with ``P * out`` output channels: on a shared input
    ``[B, in, ...]`` directly, on population rows (seen as ``[B, P * in, ...]``) with
    ``groups=P``. Its ``[B, P * out, ...]`` output is the ``[B * P, out, ...]`` rows reshaped.
    """
    n_pop, n_out = w.shape[0], w.shape[1]
    groups = 1 if rows.order == SHARED else n_pop
    x = a if rows.order == SHARED else rows.by_batch(a).flatten(1, 2)
    stacked = w.flatten(0, 1)  # [P * out, in, k...]
    if a.dtype == torch.int64:
        acc = _int_conv(layer, x, stacked, groups)
        acc = acc + bias.reshape(1, -1, *[1] * (acc.ndim - 2))
    elif isinstance(layer, Conv2d):
        acc = F.conv2d(x.contiguous(memory_format=torch.channels_last), stacked, bias.reshape(-1),
                       stride=layer.stride, padding=layer.padding, groups=groups)
    else:
        acc = F.conv1d(x, stacked, bias.reshape(-1), stride=layer.stride, padding=layer.padding, groups=groups)
    return acc.unflatten(1, (n_pop, n_out)).flatten(0, 1)


def _name_members(
    layer: Layer, mem: _LayerMembers | None, index: int, h: torch.Tensor, rows: _Rows,
) -> AccumulatorOverflowError:
    """The error for an overflow at layer ``index``: the layer is re-run member by member (only on
    this failure path) to say which members overflow, with the first one's own ``forward_int``
    message."""
    failing, first_message = [], ""
    per_member = rows.by_member(h)
    for p in range(rows.n_pop):
        member_layer = layer
        if mem is not None:
            values = {"weight": mem.weight, "bias": mem.bias}
            member_layer = dataclasses.replace(layer, **{k: v[p] for k, v in values.items() if v is not None})
        try:
            layer_forward_int(member_layer, per_member[p], index, "raise")
        except AccumulatorOverflowError as e:
            failing.append(p)
            first_message = first_message or str(e)
    return AccumulatorOverflowError(f"population member(s) {failing} of {rows.n_pop}: {first_message}")


__all__ = ["forward_int_population"]

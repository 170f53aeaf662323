"""Tests of ``edgetrain.model``: the integer-exact forward against a scalar reference, float vs
integer tolerances, conversion passes, model files and the ``DeployedModel`` API.

The scalar reference (``tests/scalar_reference.py``) is an independent plain-Python-integer
implementation of the integer contract; every comparison with it is exact (bit for bit).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import struct
from fractions import Fraction

import pytest
import scalar_reference as ref
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from edgetrain.model import (
    Conv1d,
    Conv2d,
    Dense,
    DeployedModel,
    Flatten,
    GlobalAvgPool,
    MaxPool,
    ReLU,
)
from edgetrain.model.arch import build_float_net
from edgetrain.model.convert import convert, drop_noops, fold_batchnorm
from edgetrain.model.forward import (
    AccumulatorOverflowError,
    accuracy,
    forward_float,
    forward_int,
    quantize_input,
)
from edgetrain.model.io import ModelFileError, load_model, model_from_bytes, model_to_bytes, save_model
from edgetrain.model.pretrain import float_accuracy, train_float
from edgetrain.quant import (
    Affine,
    FixedPoint,
    affine_from_range,
    dequantize,
    parse_fixed,
    quantize,
    quantize_multiplier,
)

ROUNDINGS = ("floor", "nearest", "nearest_even")  # every deterministic mode
SCHEMES = ("fixed16_6", "fixed8_3:nearest:saturate", "int8", "uint8")
ARCHS = (("cnn", (1, 8, 8)), ("mlp", (1, 8, 8)), ("cnn", (3, 16)))
HEAD = 52  # magic (10) + version (2) + sha256 (32) + spec length (8)


# ----------------------------------------------------------------------------------------------
# helpers


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def assert_matches_reference(model: DeployedModel, q: torch.Tensor) -> ref.RefTrace:
    """forward_int (final and every traced layer output) == the scalar reference, bit for bit, with
    overflow='raise' (same layer named) and with overflow='wrap' (same outputs, same counts)."""
    wrapped = ref.forward(model, q.tolist(), overflow="wrap")
    if wrapped.overflows:
        first = min(wrapped.overflows)
        kind = model.layers[first].kind
        with pytest.raises(AccumulatorOverflowError, match=rf"^layer {first} \({kind}\)"):
            forward_int(model, q)
    else:
        tr = forward_int(model, q, trace=True)
        assert [t.tolist() for t in tr.outputs] == wrapped.outputs
        assert tr.overflows == {}
        assert forward_int(model, q).tolist() == wrapped.outputs[-1]
    tr = forward_int(model, q, overflow="wrap", trace=True)
    assert len(tr.outputs) == len(model.layers)
    for i, (got, want) in enumerate(zip(tr.outputs, wrapped.outputs, strict=True)):
        assert got.dtype == torch.int64
        assert tuple(got.shape) == (q.shape[0], *model.shapes()[i + 1])
        assert got.tolist() == want, f"layer {i} ({model.layers[i].kind}) differs from the reference"
    assert tr.overflows == wrapped.overflows
    return wrapped


def random_raw(rng: random.Random, fmt, shape: tuple[int, ...], mode: str) -> torch.Tensor:
    """Raw integers in ``fmt``'s range: 'full' (uniform), 'small' (near the zero point), or
    'extreme' (range ends and zero point only)."""
    lo, hi = ref.raw_range(fmt)
    z = ref.zero(fmt)
    n = math.prod(shape)
    if mode == "full":
        vals = [rng.randint(lo, hi) for _ in range(n)]
    elif mode == "small":
        vals = [min(max(z + rng.randint(-3, 3), lo), hi) for _ in range(n)]
    else:
        vals = [rng.choice((lo, hi, z)) for _ in range(n)]
    return torch.tensor(vals, dtype=torch.int64).reshape(shape)


def randomize_batchnorm(net: nn.Module, seed: int) -> nn.Module:
    """Give every batch norm non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return net


def with_checksum(data: bytes) -> bytes:
    """Recompute a model file's checksum after editing it (what a careless hand edit would do)."""
    body = data[HEAD - 8:]
    return data[:12] + hashlib.sha256(body).digest() + body


def split_file(data: bytes) -> tuple[dict, bytes]:
    (spec_len,) = struct.unpack_from("<Q", data, HEAD - 8)
    return json.loads(data[HEAD:HEAD + spec_len]), data[HEAD + spec_len:]


def join_file(data: bytes, spec: dict, payload: bytes) -> bytes:
    spec_bytes = json.dumps(spec, sort_keys=True).encode()
    return with_checksum(data[:HEAD - 8] + struct.pack("<Q", len(spec_bytes)) + spec_bytes + payload)


def converted(arch: str, shape: tuple[int, ...], scheme: str, seed: int = 0, n_classes: int = 10):
    net = randomize_batchnorm(build_float_net(arch, shape, n_classes, seed=seed), seed)
    g = torch.Generator().manual_seed(seed)
    calib = torch.rand((64, *shape), generator=g) * 2 - 0.5
    model, _ = convert(net, calib, scheme, meta={"arch": arch, "classes": list(range(n_classes))})
    return net, model, calib


# ----------------------------------------------------------------------------------------------
# the reference's own multiplier agrees with edgetrain's (both are checked, not assumed)


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=2.0**-40, max_value=2.0**20, allow_nan=False, allow_infinity=False))
def test_reference_multiplier_matches_quantize_multiplier(real):
    m, shift = ref.multiplier(real)
    assert (m, shift) == quantize_multiplier(real)
    assert m == 1 or 2**30 <= m < 2**31
    # m * 2**-shift is M to within half a unit of m (relative error <= 2**-31)
    assert abs(Fraction(m) / 2**shift - Fraction(real)) <= Fraction(real) / 2**31


def test_reference_rounding_modes():
    f = Fraction
    cases = {f(5, 2): (2, 3, 2), f(7, 2): (3, 4, 4), f(-5, 2): (-3, -2, -2), f(-7, 4): (-2, -2, -2),
             f(9, 4): (2, 2, 2), f(3): (3, 3, 3)}
    for x, (fl, near, even) in cases.items():
        assert (ref.round_fraction(x, "floor"), ref.round_fraction(x, "nearest"),
                ref.round_fraction(x, "nearest_even")) == (fl, near, even)


# ----------------------------------------------------------------------------------------------
# bit-exactness on random small models built directly from the layer dataclasses


class Formats:
    """Draws the formats of one random model: all fixed point, or all affine."""

    def __init__(self, draw, family: str):
        self.draw, self.family = draw, family

    def act(self, acc_scale: float | None = None):
        """An activation format; given the accumulator scale of the layer that produces it, half
        the time one whose requantization is a right shift by 1-3 bits, so that ties occur."""
        d = self.draw
        near = acc_scale is not None and d(st.booleans())
        if self.family == "fixed":
            signed = d(st.booleans()) or d(st.booleans())  # mostly signed
            width = d(st.one_of(st.integers(2 if signed else 1, 16), st.integers(17, 32)))
            if near:
                frac = -int(math.log2(acc_scale)) - d(st.integers(1, 3))
            else:
                frac = d(st.integers(-2, 12))
            return FixedPoint(width, width - frac, signed, d(st.sampled_from(ROUNDINGS)),
                              d(st.sampled_from(("wrap", "saturate"))))
        signed = d(st.booleans())
        bits = d(st.sampled_from((8, 8, 4)))
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        scale = acc_scale * 2 ** d(st.integers(1, 3)) if near else d(st.floats(2.0**-8, 2.0))
        return Affine(bits, signed, (scale,), (d(st.integers(lo, hi)),), None,
                      d(st.sampled_from(ROUNDINGS)))

    def weight(self, c_out: int):
        d = self.draw
        if self.family == "fixed":
            width = d(st.one_of(st.integers(2, 16), st.integers(17, 32)))  # wide ones reach the int64 path
            return FixedPoint(width, width - d(st.integers(-2, 12)), d(st.sampled_from((True, True, False))))
        if d(st.booleans()):  # int8 per output channel (zero points usually 0, sometimes not)
            scales = tuple(d(st.floats(2.0**-8, 1.0)) for _ in range(c_out))
            zps = tuple(d(st.sampled_from((0, 0, -3, 5))) for _ in range(c_out))
            return Affine(8, True, scales, zps, 0)
        return Affine(8, False, (d(st.floats(2.0**-8, 1.0)),), (d(st.integers(0, 255)),))

    def bias(self, in_fmt, w_fmt):
        d = self.draw
        k = d(st.integers(0, 3))  # bias scale = accumulator scale * 2**k
        if self.family == "fixed":
            frac = (in_fmt.width - in_fmt.integer_bits) + (w_fmt.width - w_fmt.integer_bits) - k
            width = d(st.integers(2, 32))
            return FixedPoint(width, width - frac, True)
        scales = tuple(in_fmt.scale[0] * s * 2**k for s in w_fmt.scale)
        return Affine(32, True, scales, (0,) * len(scales), 0 if len(scales) > 1 else None)


@st.composite
def small_models(draw):
    """A random tiny model (and a batch of raw inputs) exercising every layer type."""
    fam = Formats(draw, draw(st.sampled_from(("fixed", "affine"))))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    value_mode = draw(st.sampled_from(("full", "small", "extreme", "full")))
    rank = draw(st.sampled_from((0, 1, 2)))  # spatial dimensions of the input
    channels = draw(st.integers(1, 3))
    spatial = tuple(draw(st.integers(1, 6 if rank == 2 else 10)) for _ in range(rank))
    shape = (channels, *spatial) if rank else (draw(st.integers(1, 6)),)
    input_fmt = fmt = fam.act()
    layers = []

    def linear(cls, c_out, c_in, kernel, **hyper):
        nonlocal fmt
        w_fmt = fam.weight(c_out)
        b_fmt = fam.bias(fmt, w_fmt)
        out_fmt = fam.act(ref.scale_float(fmt) * ref.scale_float(w_fmt))
        weight = random_raw(rng, w_fmt, (c_out, c_in, *kernel), value_mode)
        bias = random_raw(rng, b_fmt, (c_out,), draw(st.sampled_from(("small", "full"))))
        if value_mode != "extreme":
            bias = bias.clamp(-(1 << 20), 1 << 20)
        layers.append(cls(weight, bias, fmt, w_fmt, b_fmt, out_fmt, **hyper))
        fmt = out_fmt

    if draw(st.booleans()):
        layers.append(ReLU(fmt))
    cur = shape
    for _ in range(draw(st.integers(0, 2)) if rank else 0):
        c_out = draw(st.integers(1, 3))
        pads = tuple(draw(st.integers(0, 2)) for _ in range(rank))
        kernel = tuple(draw(st.integers(1, min(3, n + 2 * p))) for n, p in zip(cur[1:], pads, strict=True))
        strides = tuple(draw(st.integers(1, 3)) for _ in range(rank))
        if rank == 2:
            linear(Conv2d, c_out, cur[0], kernel, stride=strides, padding=pads)
        else:
            linear(Conv1d, c_out, cur[0], kernel, stride=strides[0], padding=pads[0])
        cur = layers[-1].out_shape(cur)
        if draw(st.booleans()):
            layers.append(ReLU(fmt))
        if draw(st.booleans()):
            k = tuple(draw(st.integers(1, min(2, n))) for n in cur[1:])
            s = tuple(draw(st.integers(1, 2)) for _ in cur[1:])
            layers.append(MaxPool(fmt, k, s))
            cur = layers[-1].out_shape(cur)
    if rank:
        if draw(st.booleans()):
            out_fmt = fam.act(ref.scale_float(fmt) / math.prod(cur[1:]))
            layers.append(GlobalAvgPool(fmt, out_fmt))
            fmt = out_fmt
            cur = layers[-1].out_shape(cur)
        layers.append(Flatten(fmt))
        cur = layers[-1].out_shape(cur)
    for j in range(draw(st.integers(0 if rank else 1, 2))):
        if j and draw(st.booleans()):
            layers.append(ReLU(fmt))
        linear(Dense, draw(st.integers(1, 4)), cur[0], ())
        cur = layers[-1].out_shape(cur)
    model = DeployedModel(shape, input_fmt, tuple(layers), {})
    q = random_raw(rng, input_fmt, (3, *shape), draw(st.sampled_from(("full", "small", "extreme"))))
    return model, q


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_models())
def test_random_models_bit_exact(case):
    model, q = case
    assert_matches_reference(model, q)


@pytest.mark.parametrize("overflow", ["wrap", "saturate"])
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_requantization_every_accumulator_fixed(rounding, overflow):
    """Every 8-bit accumulator value through a 2-bit right shift into a 4-bit output, checked against
    hand-written formulas (and the reference): floor = ``a >> 2``, nearest = ``(a + 2) >> 2``,
    nearest_even = Python's ``round(a / 4)``, then wrap or saturate to [-8, 7]."""
    in_fmt, w_fmt = FixedPoint(8, 4), FixedPoint(8, 8)  # 4 and 0 fractional bits: acc = a, scale 2**-4
    out_fmt = FixedPoint(4, 2, True, rounding, overflow)  # 2 fractional bits: shift by 2
    dense = Dense(torch.ones(1, 1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64), in_fmt, w_fmt,
                  FixedPoint(8, 4), out_fmt)
    model = DeployedModel((1,), in_fmt, (dense,))
    a = list(range(-128, 128))
    rounded = {"floor": [v >> 2 for v in a], "nearest": [(v + 2) >> 2 for v in a],
               "nearest_even": [round(v / 4) for v in a]}[rounding]
    want = [((r + 8) % 16 - 8) if overflow == "wrap" else min(max(r, -8), 7) for r in rounded]
    q = torch.tensor(a).reshape(-1, 1)
    assert forward_int(model, q).reshape(-1).tolist() == want
    assert_matches_reference(model, q)


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_requantization_every_accumulator_affine(rounding):
    """Affine, per-channel: M = 1/2 and 1/4 exactly (so ties occur), input, weight and output zero
    points, a bias, saturation at both ends of int8."""
    in_fmt = Affine(8, False, (1.0,), (100,))
    w_fmt = Affine(8, True, (1.0, 0.5), (0, 3), axis=0)
    b_fmt = Affine(32, True, (1.0, 0.5), (0, 0), axis=0)
    out_fmt = Affine(8, True, (2.0,), (-5,), None, rounding)
    dense = Dense(torch.tensor([[1], [4]]), torch.tensor([1, -2]), in_fmt, w_fmt, b_fmt, out_fmt)
    model = DeployedModel((1,), in_fmt, (dense,))
    q = torch.arange(256).reshape(-1, 1)
    half = {"floor": lambda v: v // 2, "nearest": lambda v: (v + 1) // 2,
            "nearest_even": lambda v: round(v / 2)}[rounding]
    acc0 = [(v - 100) * 1 + 1 for v in range(256)]  # scale 1 -> M = 1/2
    acc1 = [(v - 100) * (4 - 3) - 2 for v in range(256)]  # scale 0.5 -> M = 1/4
    quarter = {"floor": lambda v: v // 4, "nearest": lambda v: (v + 2) // 4,
               "nearest_even": lambda v: round(v / 4)}[rounding]
    want = [[min(max(half(x) - 5, -128), 127), min(max(quarter(y) - 5, -128), 127)]
            for x, y in zip(acc0, acc1, strict=True)]
    assert forward_int(model, q).tolist() == want
    assert_matches_reference(model, q)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize(("arch", "shape"), ARCHS)
def test_converted_archs_bit_exact(arch, shape, scheme):
    _, model, calib = converted(arch, shape, scheme, seed=len(scheme))
    g = torch.Generator().manual_seed(1)
    x = torch.cat([calib[:3], torch.rand((2, *shape), generator=g) * 8 - 4])  # some out of range
    q = quantize_input(model, x)
    assert not assert_matches_reference(model, q).overflows


# ----------------------------------------------------------------------------------------------
# accumulator overflow

F16 = FixedPoint(16, 16)  # integers in [-32768, 32767]


def overflow_model() -> DeployedModel:
    """ReLU -> Dense (accumulator up to 4 * 32767**2 > 2**31) -> ReLU."""
    w = torch.tensor([[32767] * 4, [-32768, 32767, 1, 0], [1, 1, 1, 1]])
    dense = Dense(w, torch.zeros(3, dtype=torch.int64), F16, F16, F16, FixedPoint(16, 16, overflow="saturate"))
    return DeployedModel((4,), F16, (ReLU(F16), dense, ReLU(dense.out_fmt)))


def test_overflow_raises_naming_layer():
    q = torch.tensor([[32767, 32767, 32767, 32767], [1, 2, 3, 4]])
    with pytest.raises(AccumulatorOverflowError, match=r"layer 1 \(dense\): 1 accumulator"):
        forward_int(overflow_model(), q)
    assert forward_int(overflow_model(), q[1:]).tolist() == [[32767, 32767, 10]]


def test_overflow_wrap_matches_reference_and_counts():
    model = overflow_model()
    q = torch.tensor([[32767, 32767, 32767, 32767], [32767, 32767, 0, 0], [5, 6, 7, 8]])
    tr = forward_int(model, q, overflow="wrap", trace=True)
    want = ref.forward(model, q.tolist(), overflow="wrap")
    assert [t.tolist() for t in tr.outputs] == want.outputs
    assert tr.overflows == want.overflows == {1: 1}
    # 4 * 32767**2 = 4294705156 wraps to -262140, which saturates to -32768 in the output format
    assert tr.outputs[1][0, 0] == -32768
    with pytest.raises(ref.ReferenceOverflow):
        ref.forward(model, q.tolist(), overflow="raise")
    with pytest.raises(ValueError, match="overflow must be one of"):
        forward_int(model, q, overflow="saturate")


def test_overflow_in_global_avg_pool_and_conv():
    f32 = FixedPoint(32, 32)
    gap = DeployedModel((2, 2), f32, (GlobalAvgPool(f32, f32),))
    q = torch.tensor([[[2**31 - 1, 2**31 - 1], [-5, 7]]])
    with pytest.raises(AccumulatorOverflowError, match=r"layer 0 \(globalavgpool\)"):
        forward_int(gap, q)
    tr = forward_int(gap, q, overflow="wrap", trace=True)
    want = ref.forward(gap, q.tolist(), overflow="wrap")
    assert tr.outputs[0].tolist() == want.outputs[0] and tr.overflows == want.overflows == {0: 1}

    w = torch.full((2, 1, 3, 3), 32767)
    conv = Conv2d(w, torch.zeros(2, dtype=torch.int64), F16, F16, F16, F16, (1, 1), (1, 1))
    model = DeployedModel((1, 3, 3), F16, (ReLU(F16), conv))
    q = torch.full((2, 1, 3, 3), 32767)
    q[1] = 3
    with pytest.raises(AccumulatorOverflowError, match=r"layer 1 \(conv2d\)"):
        forward_int(model, q)
    tr = forward_int(model, q, overflow="wrap", trace=True)
    want = ref.forward(model, q.tolist(), overflow="wrap")
    assert [t.tolist() for t in tr.outputs] == want.outputs
    assert tr.overflows == want.overflows and tr.overflows[1] > 0


# ----------------------------------------------------------------------------------------------
# float vs integer forward, per layer type, with stated tolerances
#
# Notation: x real input, q = quantize_input(x), x_hat = dequantize(q), y(.) = forward_float (the
# deployed parameters in float64, activations never rounded), y_int = dequantize(forward_int(q)).
#
# (A) Same input: y_int vs y(x_hat). Only the output requantization differs.
#     * ReLU, MaxPool, Flatten: nothing is rounded, so they are equal (exactly).
#     * Dense/Conv/GlobalAvgPool: the integer accumulator is exactly y(x_hat) / s_acc (parameters
#       and input are the same dequantized values), so the only error is rounding
#       acc * m / 2**shift to the output grid:
#         - fixed point, floor: y_int in (y - lsb_out, y]: one-sided, below one output LSB;
#         - affine, nearest: at most s_out / 2. The output format is derived from the range of the
#           values it must hold (affine_from_range over y(x) and y(x_hat)); its zero point is
#           rounded, so a value at the range's edge maps to a code within [qmin - 1/2, qmax + 1/2],
#           and the nearest code in [qmin, qmax] is still within half a step;
#         - plus the multiplier error |m 2**-shift - M| <= M 2**-31, i.e. at most |y| 2**-31
#           (zero for fixed point except for an average over a non-power-of-two pool);
#         - plus 1e-9 for float64 rounding inside forward_float.
# (B) Real input: y_int vs y(x). Add the input-quantization effect, bounded by
#     L * delta_in with delta_in = max|x - x_hat| (< lsb_in = 2**-10 for floor fixed16_6,
#     <= s_in / 2 for nearest affine over the calibrated range, both asserted) and L the
#     Lipschitz constant in the max norm: max over outputs of the sum of |w| over the inputs it
#     reads (the dequantized weights' row L1 norm) for Dense/Conv, 1 for ReLU, MaxPool, Flatten
#     and the mean.
# fixed16_6 covers [-32, 32); the cases keep |y| < 32 (asserted), so nothing wraps.

FIX = parse_fixed("fixed16_6")  # floor, wrap; lsb 2**-10


def _layer_cases():
    g = torch.Generator().manual_seed(7)

    def w(*shape):
        return torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1

    return {
        "dense": ((6,), lambda: (Dense, w(4, 6), w(4))),
        "conv2d": ((2, 5, 5), lambda: (Conv2d, w(3, 2, 3, 3), w(3), (2, 1), (1, 0))),
        "conv1d": ((2, 9), lambda: (Conv1d, w(3, 2, 3), w(3), 2, 1)),
        "relu": ((2, 4, 4), None),
        "maxpool2d": ((2, 5, 4), None),
        "maxpool1d": ((3, 7), None),
        "globalavgpool": ((3, 3, 5), None),
        "flatten": ((2, 3, 2), None),
    }


def _single_layer_model(name: str, family: str, x: torch.Tensor) -> DeployedModel:
    """One layer of type ``name`` in ``family`` formats ('fixed': fixed16_6 everywhere; 'uint8' /
    'int8': activations affine from their range, int8 per-channel weights, int32 biases)."""
    shape, make = _layer_cases()[name]

    def act_fmt(*ts):
        if family == "fixed":
            return FIX
        both = torch.cat([t.reshape(-1) for t in ts])
        return affine_from_range(float(both.min()), float(both.max()), 8, signed=family == "int8")

    in_fmt = act_fmt(x)
    x_hat = dequantize(quantize(x, in_fmt), in_fmt)
    if make is None:
        layer = {"relu": lambda: ReLU(in_fmt), "maxpool2d": lambda: MaxPool(in_fmt, (2, 2), (2, 1)),
                 "maxpool1d": lambda: MaxPool(in_fmt, (3,), (2,)), "flatten": lambda: Flatten(in_fmt),
                 "globalavgpool": lambda: GlobalAvgPool(in_fmt, act_fmt(x.flatten(2).mean(2),
                                                                        x_hat.flatten(2).mean(2)))}[name]()
        return DeployedModel(shape, in_fmt, (layer,))
    cls, weight, bias, *hyper = make()
    if family == "fixed":
        w_fmt = b_fmt = FIX
    else:
        flat = weight.reshape(weight.shape[0], -1)
        w_fmt = affine_from_range(flat.min(1).values, flat.max(1).values, 8, signed=True, symmetric=True,
                                  axis=0)
        scales = tuple(in_fmt.scale[0] * s for s in w_fmt.scale)
        b_fmt = Affine(32, True, scales, (0,) * len(scales), 0)
    qw, qb = quantize(weight, w_fmt), quantize(bias, b_fmt)
    probe = DeployedModel(shape, in_fmt, (cls(qw, qb, in_fmt, w_fmt, b_fmt, FIX, *hyper),))
    out_fmt = act_fmt(forward_float(probe, x), forward_float(probe, x_hat))
    return DeployedModel(shape, in_fmt, (cls(qw, qb, in_fmt, w_fmt, b_fmt, out_fmt, *hyper),))


def _lipschitz(layer) -> float:
    """Max over outputs of sum |w| over the inputs it reads; 1 for parameter-free layers."""
    if isinstance(layer, (Dense, Conv2d, Conv1d)):
        w = dequantize(layer.weight, layer.w_fmt)
        return float(w.abs().reshape(w.shape[0], -1).sum(1).max())
    return 1.0


@pytest.mark.parametrize("family", ["fixed", "uint8", "int8"])
@pytest.mark.parametrize("name", list(_layer_cases()))
def test_float_vs_int_within_tolerance(name, family):
    shape = _layer_cases()[name][0]
    g = torch.Generator().manual_seed(sum(map(ord, name + family)))  # stable across processes
    x = torch.rand((16, *shape), generator=g, dtype=torch.float64) * 6 - 3
    model = _single_layer_model(name, family, x)
    layer, out_fmt = model.layers[0], model.output_fmt
    q = quantize_input(model, x)
    x_hat = dequantize(q, model.input_fmt)
    y_int = dequantize(forward_int(model, q), out_fmt)
    y_hat = forward_float(model, x_hat)
    y_real = forward_float(model, x)
    if family == "fixed":
        assert max(float(y_hat.abs().max()), float(y_real.abs().max())) < 31  # no wrap-around

    # (A) same input: output requantization only
    mult = float(y_hat.abs().max()) * 2**-31
    err = y_hat - y_int
    if not isinstance(layer, (Dense, Conv2d, Conv1d, GlobalAvgPool)):
        assert torch.equal(y_int, y_hat)
        e_out = 0.0
    elif isinstance(out_fmt, FixedPoint):
        e_out = out_fmt.lsb
        assert float(err.min()) >= -(mult + 1e-9)  # floor never rounds up
        assert float(err.max()) <= e_out + mult + 1e-9
    else:
        e_out = out_fmt.scale[0] / 2
        assert float(err.abs().max()) <= e_out + mult + 1e-9

    # (B) real input: plus the input-quantization effect
    delta_in = float((x - x_hat).abs().max())
    assert delta_in <= (FIX.lsb if family == "fixed" else model.input_fmt.scale[0] / 2) + 1e-12
    bound = e_out + mult + _lipschitz(layer) * delta_in + 1e-9
    assert float((y_int - y_real).abs().max()) <= bound


# ----------------------------------------------------------------------------------------------
# conversion


def _bn_nets():
    return {
        "cnn2d": (build_float_net("cnn", (1, 8, 8), 10, seed=1), (1, 8, 8)),
        "cnn1d": (build_float_net("cnn", (3, 16), 5, seed=2), (3, 16)),
        "mlp_bn": (nn.Sequential(nn.Flatten(), nn.Linear(12, 7, bias=False), nn.BatchNorm1d(7), nn.ReLU(),
                                 nn.Dropout(0.5), nn.Linear(7, 3), nn.BatchNorm1d(3, affine=False)), (12,)),
        "conv_stride": (nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.Identity(), nn.Conv2d(4, 3, 1), nn.BatchNorm2d(3)), (2, 7, 7)),
    }


@pytest.mark.parametrize("name", list(_bn_nets()))
def test_batchnorm_folding_is_exact(name):
    net, shape = _bn_nets()[name]
    net = randomize_batchnorm(net, 3).double().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn((10, *shape), generator=g, dtype=torch.float64)
    folded = fold_batchnorm(drop_noops(list(net)))
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout, nn.Identity)) for m in folded)
    with torch.no_grad():
        want = net(x)
        got = nn.Sequential(*folded)(x)
    assert got.dtype == torch.float64
    assert float((got - want).abs().max()) <= 1e-10


def test_convert_leaves_the_float_net_unchanged():
    net = build_float_net("mlp", (1, 8, 8), 10, seed=0)
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(16, 1, 8, 8)
    convert(net, x, "int8")
    assert net.training
    for k, v in net.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k])
    net(x)  # still runs on float32 input


@pytest.mark.parametrize(("net", "shape", "exc", "pattern"), [
    (nn.Sequential(nn.Flatten(), nn.Sigmoid()), (4,), TypeError, r"module 1 \(Sigmoid\) is not supported"),
    (nn.Sequential(nn.Sequential(nn.Linear(4, 3)), nn.Tanh()), (4,), TypeError, r"\(Tanh\) is not supported"),
    (nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.ReLU()), (2, 5, 5), ValueError, r"conv at position 0.*groups"),
    (nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.BatchNorm2d(4)), (2, 5, 5), ValueError,
     r"conv at position 0.*groups"),
    (nn.Sequential(nn.Conv2d(1, 4, 3, dilation=2), nn.BatchNorm2d(4)), (1, 8, 8), ValueError,
     r"conv at position 0.*dilation"),
    (nn.Sequential(nn.Conv1d(1, 2, 3, padding=1, padding_mode="reflect"), nn.BatchNorm1d(2)), (1, 8),
     ValueError, r"conv at position 0.*zero padding"),
    (nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.BatchNorm1d(3)), (4,), ValueError,
     r"batch norm at position 2 does not follow a Linear/Conv"),
    (nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 3)), (4,), ValueError, r"batch norm at position 0"),
    (nn.Sequential(nn.MaxPool2d(2, padding=1)), (1, 4, 4), ValueError, r"max pool at position 0"),
    (nn.Sequential(nn.AdaptiveAvgPool2d(2)), (1, 4, 4), ValueError, r"adaptive average pool at position 0"),
    (nn.Sequential(nn.Flatten(start_dim=2)), (1, 4, 4), ValueError, r"flatten at position 0"),
], ids=["sigmoid", "nested-tanh", "grouped", "grouped+bn", "dilated+bn", "reflect+bn", "bn-after-relu",
        "bn-first", "pool-padding", "adaptive-2", "flatten-dim"])
def test_unsupported_modules_are_refused(net, shape, exc, pattern):
    with pytest.raises(exc, match=pattern):
        convert(net, torch.rand((4, *shape)), "fixed16_6")


def test_convert_rejects_non_sequential_and_bad_calibration():
    with pytest.raises(TypeError, match="Sequential"):
        convert(nn.Linear(3, 2), torch.rand(4, 3))
    with pytest.raises(ValueError, match="non-empty batch"):
        convert(nn.Sequential(nn.Linear(3, 2)), torch.rand(0, 3))
    with pytest.raises(ValueError, match="unknown format"):
        convert(nn.Sequential(nn.Linear(3, 2)), torch.rand(4, 3), "float16")


@pytest.mark.slow
def test_digits_conversion_keeps_accuracy():
    """A cnn trained a few epochs on sklearn digits loses at most 2 accuracy points in fixed16_6."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(digits.target, dtype=torch.int64)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    x_tr, y_tr, x_te, y_te = x[:1300], y[:1300], x[1300:], y[1300:]
    net = build_float_net("cnn", (1, 8, 8), 10, seed=0)
    train_float(net, x_tr, y_tr, epochs=6, lr=1e-2, seed=0)
    float_acc = float_accuracy(net, x_te, y_te)
    assert float_acc >= 0.85  # the comparison below must be about a trained net
    model, report = convert(net, x_tr[:256], "fixed16_6", meta={"dataset": "digits"})
    assert report.worst_out_of_range() == 0.0
    int_acc = accuracy(model, x_te, y_te)
    assert int_acc >= float_acc - 0.02, (float_acc, int_acc)
    assert float_accuracy(net, x_te, y_te) == float_acc  # conversion did not touch the net


# ----------------------------------------------------------------------------------------------
# model files


def _assert_same_model(a: DeployedModel, b: DeployedModel) -> None:
    assert a.input_shape == b.input_shape and a.input_fmt == b.input_fmt and a.meta == b.meta
    assert len(a.layers) == len(b.layers)
    for la, lb in zip(a.layers, b.layers, strict=True):
        assert type(la) is type(lb)
        for f in dataclasses.fields(la):
            va, vb = getattr(la, f.name), getattr(lb, f.name)
            if isinstance(va, torch.Tensor):
                assert vb.dtype == torch.int64 and torch.equal(va, vb), f.name
            else:
                assert va == vb and type(va) is type(vb), f.name
    assert [(n, f) for n, _, f in a.params()] == [(n, f) for n, _, f in b.params()]


@pytest.mark.parametrize(("arch", "shape", "scheme"), [
    ("cnn", (1, 8, 8), "fixed16_6"), ("cnn", (1, 8, 8), "int8"), ("mlp", (1, 8, 8), "uint8"),
    ("cnn", (3, 16), "fixed8_3:nearest:saturate"), ("cnn", (3, 16), "int8"),
])
def test_save_load_round_trip(tmp_path, arch, shape, scheme):
    _, model, calib = converted(arch, shape, scheme)
    model = dataclasses.replace(model, meta={**model.meta, "note": "round trip", "nested": {"a": [1, 2.5]}})
    path = save_model(model, tmp_path / "sub" / "m.etm")
    assert path.is_file() and not list(path.parent.glob(".*tmp"))
    loaded = load_model(path)
    _assert_same_model(model, loaded)
    q = quantize_input(model, calib[:5])
    assert torch.equal(forward_int(model, q), forward_int(loaded, q))
    assert torch.equal(forward_float(model, calib[:5]), forward_float(loaded, calib[:5]))
    assert model_to_bytes(loaded) == path.read_bytes()


def _tiny_file() -> tuple[DeployedModel, bytes]:
    fmt = parse_fixed("fixed12_4:nearest")
    w = torch.tensor([[100, -2048, 2047], [0, 5, -7]])
    dense = Dense(w, torch.tensor([3, -4]), fmt, fmt, FixedPoint(24, 8), FixedPoint(12, 4, overflow="saturate"))
    model = DeployedModel((3,), fmt, (ReLU(fmt), dense), {"arch": "tiny"})
    return model, model_to_bytes(model)


def test_every_flipped_bit_is_detected():
    _, data = _tiny_file()
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 1 << (i % 8)
        with pytest.raises(ModelFileError) as info:
            model_from_bytes(bytes(bad), "m.etm")
        msg = str(info.value)
        assert msg.startswith("m.etm: ")
        if i < 10:
            assert "bad magic" in msg
        elif i < 12:
            assert "version" in msg
        else:
            assert "checksum mismatch" in msg, (i, msg)


def test_truncated_wrong_magic_and_missing_files(tmp_path):
    model, data = _tiny_file()
    for n in (0, 9, HEAD - 1):
        with pytest.raises(ModelFileError, match="too short"):
            model_from_bytes(data[:n])
    for n in (HEAD, HEAD + 5, len(data) // 2, len(data) - 1):
        with pytest.raises(ModelFileError, match="checksum mismatch"):
            model_from_bytes(data[:n])
    with pytest.raises(ModelFileError, match="bad magic"):
        model_from_bytes(b"NOTAMODEL!" + data[10:])
    path = tmp_path / "t.etm"
    path.write_bytes(data[:-3])
    with pytest.raises(ModelFileError, match=r"t\.etm: checksum mismatch"):
        load_model(path)
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "missing.etm")
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path)
    _assert_same_model(model, model_from_bytes(data))


def test_hand_edited_files_with_recomputed_checksum_are_refused():
    model, data = _tiny_file()
    spec, payload = split_file(data)
    arr = spec["layers"][1]["arrays"]["weight"]
    assert arr["dtype"] == "<i2"  # 12-bit values stored in 16 bits: room for out-of-range values
    # a weight edited to 2048 = raw_max + 1 of fixed12_4
    edited = payload[:arr["offset"]] + struct.pack("<h", 2048) + payload[arr["offset"] + 2:]
    with pytest.raises(ModelFileError, match=r"layer 1 weight: values outside the range of fixed12_4"):
        model_from_bytes(join_file(data, spec, edited))
    # the weight format narrowed in the spec, so the stored weights no longer fit
    narrowed = json.loads(json.dumps(spec))
    narrowed["layers"][1]["w_fmt"]["width"] = 8
    with pytest.raises(ModelFileError, match=r"layer 1 weight: values outside the range of fixed8_4"):
        model_from_bytes(join_file(data, narrowed, payload))
    # other inconsistencies
    wrong_shape = json.loads(json.dumps(spec))
    wrong_shape["layers"][1]["arrays"]["weight"]["shape"] = [3, 2]
    with pytest.raises(ModelFileError, match="malformed model spec"):
        model_from_bytes(join_file(data, wrong_shape, payload))
    big = json.loads(json.dumps(spec))
    big["layers"][1]["arrays"]["weight"]["shape"] = [2, 30]
    with pytest.raises(ModelFileError, match="does not fit the payload"):
        model_from_bytes(join_file(data, big, payload))
    with pytest.raises(ModelFileError, match="payload is"):
        model_from_bytes(join_file(data, spec, payload + b"\0"))
    unknown = json.loads(json.dumps(spec))
    unknown["layers"][0]["kind"] = "softmax"
    with pytest.raises(ModelFileError, match="unknown layer kind 'softmax'"):
        model_from_bytes(join_file(data, unknown, payload))
    garbage = with_checksum(data[:HEAD - 8] + struct.pack("<Q", 5) + b"{nope" + payload)
    with pytest.raises(ModelFileError, match="malformed model spec"):
        model_from_bytes(garbage)
    _assert_same_model(model, model_from_bytes(with_checksum(data)))


def test_save_refuses_out_of_range_parameters(tmp_path):
    f = parse_fixed("fixed16_6")
    model = DeployedModel((1,), f, (Dense(torch.tensor([[40000]]), torch.tensor([0]), f, f, f, f),))
    with pytest.raises(ValueError, match="outside the range of fixed16_6"):
        save_model(model, tmp_path / "x.etm")
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------
# DeployedModel API


def test_deployed_model_params_and_shapes():
    _, model, _ = converted("cnn", (1, 8, 8), "int8")
    assert [k.kind for k in model.layers] == ["conv2d", "relu", "maxpool", "conv2d", "relu", "maxpool",
                                               "flatten", "dense"]
    assert [n for n, _, _ in model.params()] == ["0.weight", "0.bias", "3.weight", "3.bias", "7.weight",
                                                  "7.bias"]
    assert model.shapes() == [(1, 8, 8), (8, 8, 8), (8, 8, 8), (8, 4, 4), (16, 4, 4), (16, 4, 4), (16, 2, 2),
                              (64,), (10,)]
    assert model.output_shape == (10,) and model.num_params() == 8 * 9 + 8 + 16 * 72 + 16 + 640 + 10
    for name, raw, fmt in model.params():
        assert raw.dtype == torch.int64
        assert fmt.raw_min <= int(raw.min()) and int(raw.max()) <= fmt.raw_max, name
    w, fmt = model.param("3.weight")
    assert fmt.per_channel and fmt.axis == 0 and len(fmt.scale) == 16 and tuple(w.shape) == (16, 8, 3, 3)
    _, model1d, _ = converted("cnn", (3, 16), "fixed16_6")
    assert model1d.shapes() == [(3, 16), (8, 16), (8, 16), (8, 8), (16, 8), (16, 8), (16,), (16,), (10,)]
    with pytest.raises(ValueError, match=r"layer 1 \(dense\): dense layer expects input shape \(5,\)"):
        DeployedModel((4,), FIX, (ReLU(FIX), Dense(torch.zeros(2, 5, dtype=torch.int64),
                                                   torch.zeros(2, dtype=torch.int64), FIX, FIX, FIX, FIX)))


def test_with_param_checks_and_is_pure():
    _, model, _ = converted("mlp", (1, 8, 8), "uint8")
    old, _ = model.param("3.bias")
    new = model.with_param("3.bias", torch.full_like(old, 7, dtype=torch.int32))
    assert torch.equal(model.param("3.bias")[0], old)  # the original is untouched
    assert new.param("3.bias")[0].dtype == torch.int64 and bool((new.param("3.bias")[0] == 7).all())
    assert new.layers[1] is model.layers[1] and new.layers[3] is not model.layers[3]
    with pytest.raises(ValueError, match=r"parameter 3\.bias: expected shape \(32,\), got \(31,\)"):
        model.with_param("3.bias", old[:-1])
    with pytest.raises(TypeError, match="must be integers"):
        model.with_param("3.bias", old.double())
    w, _ = model.param("1.weight")
    with pytest.raises(ValueError, match=r"outside the range of uint8 \[0, 255\]"):
        model.with_param("1.weight", torch.full_like(w, 256))
    with pytest.raises(ValueError, match="outside the range"):
        model.with_param("1.weight", torch.full_like(w, -1))
    assert model.with_param("1.weight", torch.full_like(w, 255)).param("1.weight")[0].max() == 255
    with pytest.raises(KeyError, match="no parameter '2.weight'"):
        model.with_param("2.weight", w)
    both = model.with_params({"1.weight": torch.zeros_like(w), "3.bias": torch.ones_like(old)})
    assert int(both.param("1.weight")[0].abs().sum()) == 0 and int(both.param("3.bias")[0].sum()) == 32


# ----------------------------------------------------------------------------------------------
# determinism of the built-in architectures


@pytest.mark.parametrize(("arch", "shape"), ARCHS)
def test_build_float_net_is_seeded_and_leaves_global_rng(arch, shape):
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    a = build_float_net(arch, shape, 10, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    b = build_float_net(arch, shape, 10, seed=5)
    c = build_float_net(arch, shape, 10, seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.set_rng_state(state)
    assert torch.equal(torch.rand(3), expected)


def test_conversion_report_counts_wrap_before_relu_in_fixed_point():
    """ap_fixed wraps: a negative pre-activation can wrap positive and pass the ReLU, so the
    report must judge the pre-ReLU range (only affine schemes fold the ReLU into the clamp)."""
    from torch import nn

    from edgetrain.model.convert import convert

    lin = nn.Linear(1, 1)
    with torch.no_grad():
        lin.weight.fill_(-3.5)
        lin.bias.zero_()
    net = nn.Sequential(lin, nn.ReLU(), nn.Linear(1, 1))
    _, report = convert(net, torch.full((4, 1), 2.0), "fixed8_3")  # -7.0 is below fixed8_3's -4
    out_rows = [r for r in report.rows if r["layer"] == 0 and r["tensor"] == "output"]
    assert out_rows[0]["out_of_range"] == 1.0 and report.worst_out_of_range() == 1.0

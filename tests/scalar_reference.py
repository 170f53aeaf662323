"""A deliberately slow, independent scalar reference of edgetrain's integer-exact forward.

Everything here is plain Python integers, nested lists and :class:`fractions.Fraction`: no torch
arithmetic and no edgetrain arithmetic (``requantize``, ``round_shift``, ``multipliers``,
``quantize_multiplier``, ``forward_int`` are never called). Layers are read only through their raw
parameters (``.tolist()``), hyper-parameters and formats (widths, scales, zero points, modes).

Semantics implemented (the contract in ``edgetrain/model/forward.py``):

* Dense/Conv: ``acc = sum((a - z_a) * (w - z_w)) + (b << bias_shift)`` over the zero-padded input
  (padding is the real value 0, i.e. ``a == z_a``); the accumulator must fit signed 32 bits
  (``overflow='raise'``) or wraps in two's complement (``'wrap'``). Then
  ``out = fit(round(acc * m / 2**shift) + z_out)`` with the output format's rounding and overflow.
* ReLU ``max(q, z)``; MaxPool max of raw values in each window (no padding); Flatten channel-major;
  GlobalAvgPool exact sum of ``q - z`` per channel, then requantized by ``1 / positions``.

The multiplier ``m * 2**-shift`` represents ``M = s_acc / s_out``, where ``M`` is the IEEE double
obtained from the stored double scales (``s_in * s_w`` then ``/ s_out``; ``s_in / positions / s_out``
for the average pool), exactly what a code generator computing in C ``double`` gets. From there
everything is exact: an exact power of two gives ``m = 1``; otherwise ``m`` is ``M * 2**shift``
rounded half-to-even with ``2**30 <= m < 2**31``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

ACC_MIN, ACC_MAX = -(1 << 31), (1 << 31) - 1


class ReferenceOverflow(OverflowError):
    """Raised by the reference with ``overflow='raise'`` when an accumulator leaves int32."""

    def __init__(self, index: int):
        super().__init__(f"layer {index}: accumulator outside int32")
        self.index = index


@dataclass
class RefTrace:
    outputs: list = field(default_factory=list)  # per layer: nested lists, batch first
    overflows: dict = field(default_factory=dict)  # layer index -> number of wrapped accumulators


# ----------------------------------------------------------------------------------------------
# formats, read field by field


def is_fixed(fmt) -> bool:
    return hasattr(fmt, "integer_bits")


def raw_range(fmt) -> tuple[int, int]:
    bits = fmt.width if is_fixed(fmt) else fmt.bits
    if fmt.signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def scale_float(fmt, channel: int = 0) -> float:
    """The real value of one raw step, as the stored double (per channel for per-channel formats)."""
    if is_fixed(fmt):
        return math.ldexp(1.0, -(fmt.width - fmt.integer_bits))
    return fmt.scale[channel if len(fmt.scale) > 1 else 0]


def zero(fmt, channel: int = 0) -> int:
    if is_fixed(fmt):
        return 0
    return fmt.zero_point[channel if len(fmt.zero_point) > 1 else 0]


def fit(v: int, fmt) -> int:
    lo, hi = raw_range(fmt)
    if is_fixed(fmt) and fmt.overflow == "wrap":
        span = hi - lo + 1
        return (v - lo) % span + lo
    return min(max(v, lo), hi)


def round_fraction(x: Fraction, mode: str) -> int:
    """Round an exact rational with one of the deterministic rounding modes."""
    if mode == "floor":
        return math.floor(x)
    if mode == "nearest":  # ties toward +infinity
        return math.floor(x + Fraction(1, 2))
    if mode == "nearest_even":
        fl = math.floor(x)
        rest = x - fl
        if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and fl % 2 == 1):
            return fl + 1
        return fl
    raise NotImplementedError(f"the scalar reference has no rounding mode {mode!r}")


def power_of_two_exponent(r: Fraction) -> int | None:
    """``k`` if ``r == 2**k`` exactly, else None."""
    num, den = r.numerator, r.denominator
    if num > 0 and num & (num - 1) == 0 and den & (den - 1) == 0:
        return num.bit_length() - den.bit_length()
    return None


def multiplier(real: float) -> tuple[int, int]:
    """``(m, shift)`` with ``m * 2**-shift`` representing the positive double ``real``."""
    r = Fraction(real)
    if r <= 0:
        raise ValueError(f"multiplier must be positive, got {real}")
    k = power_of_two_exponent(r)
    if k is not None:
        return 1, -k
    shift = 0
    while r * 2**shift >= 2**31:
        shift -= 1
    while r * 2**shift < 2**30:
        shift += 1
    m = round(r * 2**shift)  # Fraction.__round__ is half-to-even
    if m == 2**31:
        m, shift = m // 2, shift - 1
    return m, shift


def requant(acc: int, m: int, shift: int, out_fmt) -> int:
    value = Fraction(acc * m) / Fraction(2) ** shift
    return fit(round_fraction(value, out_fmt.rounding) + zero(out_fmt), out_fmt)


def check_acc(acc: int, index: int, policy: str, trace: RefTrace) -> int:
    if ACC_MIN <= acc <= ACC_MAX:
        return acc
    if policy == "raise":
        raise ReferenceOverflow(index)
    trace.overflows[index] = trace.overflows.get(index, 0) + 1
    return (acc - ACC_MIN) % (1 << 32) + ACC_MIN


# ----------------------------------------------------------------------------------------------
# layers (one sample at a time)


def _linear_setup(layer, c_out: int):
    """Per output channel: weight zero point, bias shift and (m, shift), from the formats alone."""
    in_f, w_f, b_f, out_f = layer.in_fmt, layer.w_fmt, layer.b_fmt, layer.out_fmt
    zw, bshift, ms = [], [], []
    for o in range(c_out):
        s_acc = scale_float(in_f) * scale_float(w_f, o)  # one double multiplication
        k = power_of_two_exponent(Fraction(scale_float(b_f, o)) / Fraction(s_acc))
        if k is None or k < 0:
            raise ValueError("bias scale must be the accumulator scale times 2**k, k >= 0")
        zw.append(zero(w_f, o))
        bshift.append(k)
        ms.append(multiplier(s_acc / scale_float(out_f)))
    return zero(in_f), zw, bshift, ms


def dense(layer, a: list, index: int, policy: str, trace: RefTrace) -> list:
    w, b = layer.weight.tolist(), layer.bias.tolist()
    za, zw, bshift, ms = _linear_setup(layer, len(w))
    out = []
    for o in range(len(w)):
        acc = 0
        for i in range(len(a)):
            acc += (a[i] - za) * (w[o][i] - zw[o])
        acc += b[o] * 2 ** bshift[o]
        acc = check_acc(acc, index, policy, trace)
        out.append(requant(acc, ms[o][0], ms[o][1], layer.out_fmt))
    return out


def conv2d(layer, a: list, index: int, policy: str, trace: RefTrace) -> list:
    w, b = layer.weight.tolist(), layer.bias.tolist()
    c_out, c_in, kh, kw = len(w), len(w[0]), len(w[0][0]), len(w[0][0][0])
    sh, sw = layer.stride
    ph, pw = layer.padding
    h, wd = len(a[0]), len(a[0][0])
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    za, zw, bshift, ms = _linear_setup(layer, c_out)
    out = []
    for o in range(c_out):
        plane = []
        for y in range(oh):
            row = []
            for x in range(ow):
                acc = 0
                for c in range(c_in):
                    for dy in range(kh):
                        iy = y * sh - ph + dy
                        if not 0 <= iy < h:
                            continue
                        for dx in range(kw):
                            ix = x * sw - pw + dx
                            if not 0 <= ix < wd:
                                continue
                            acc += (a[c][iy][ix] - za) * (w[o][c][dy][dx] - zw[o])
                acc += b[o] * 2 ** bshift[o]
                acc = check_acc(acc, index, policy, trace)
                row.append(requant(acc, ms[o][0], ms[o][1], layer.out_fmt))
            plane.append(row)
        out.append(plane)
    return out


def conv1d(layer, a: list, index: int, policy: str, trace: RefTrace) -> list:
    w, b = layer.weight.tolist(), layer.bias.tolist()
    c_out, c_in, k = len(w), len(w[0]), len(w[0][0])
    s, p, n = layer.stride, layer.padding, len(a[0])
    length = (n + 2 * p - k) // s + 1
    za, zw, bshift, ms = _linear_setup(layer, c_out)
    out = []
    for o in range(c_out):
        row = []
        for t in range(length):
            acc = 0
            for c in range(c_in):
                for d in range(k):
                    it = t * s - p + d
                    if 0 <= it < n:
                        acc += (a[c][it] - za) * (w[o][c][d] - zw[o])
            acc += b[o] * 2 ** bshift[o]
            acc = check_acc(acc, index, policy, trace)
            row.append(requant(acc, ms[o][0], ms[o][1], layer.out_fmt))
        out.append(row)
    return out


def relu(layer, a, z: int | None = None):
    z = zero(layer.fmt) if z is None else z
    if isinstance(a, list):
        return [relu(layer, v, z) for v in a]
    return max(a, z)


def maxpool(layer, a: list) -> list:
    if len(layer.kernel) == 1:
        (k,), (s,) = layer.kernel, layer.stride
        return [[max(ch[t * s + d] for d in range(k)) for t in range((len(ch) - k) // s + 1)] for ch in a]
    (kh, kw), (sh, sw) = layer.kernel, layer.stride
    out = []
    for ch in a:
        h, wd = len(ch), len(ch[0])
        out.append([[max(ch[y * sh + dy][x * sw + dx] for dy in range(kh) for dx in range(kw))
                     for x in range((wd - kw) // sw + 1)] for y in range((h - kh) // sh + 1)])
    return out


def flat(a) -> list:
    """Channel-major (row-major) flattening of nested lists."""
    if not isinstance(a, list):
        return [a]
    out = []
    for v in a:
        out.extend(flat(v))
    return out


def global_avg_pool(layer, a: list, index: int, policy: str, trace: RefTrace) -> list:
    z = zero(layer.in_fmt)
    out = []
    for ch in a:
        values = flat(ch)
        acc = check_acc(sum(v - z for v in values), index, policy, trace)
        m, shift = multiplier(scale_float(layer.in_fmt) / len(values) / scale_float(layer.out_fmt))
        out.append(requant(acc, m, shift, layer.out_fmt))
    return out


def layer_forward(layer, a, index: int, policy: str, trace: RefTrace):
    kind = layer.kind
    if kind == "dense":
        return dense(layer, a, index, policy, trace)
    if kind == "conv2d":
        return conv2d(layer, a, index, policy, trace)
    if kind == "conv1d":
        return conv1d(layer, a, index, policy, trace)
    if kind == "relu":
        return relu(layer, a)
    if kind == "maxpool":
        return maxpool(layer, a)
    if kind == "globalavgpool":
        return global_avg_pool(layer, a, index, policy, trace)
    if kind == "flatten":
        return flat(a)
    raise TypeError(f"the scalar reference has no layer kind {kind!r}")


def forward(model, batch: list, overflow: str = "raise") -> RefTrace:
    """Run ``batch`` (nested lists of raw input integers, batch first) through ``model``.

    Returns every layer's output (nested lists, batch first) and the per-layer count of
    accumulators that wrapped. ``overflow='raise'`` raises :class:`ReferenceOverflow` instead.
    """
    if overflow not in ("raise", "wrap"):
        raise ValueError(overflow)
    trace = RefTrace()
    acts = [list(sample) if isinstance(sample, list) else sample for sample in batch]
    for index, layer in enumerate(model.layers):
        acts = [layer_forward(layer, a, index, overflow, trace) for a in acts]
        trace.outputs.append(acts)
    return trace

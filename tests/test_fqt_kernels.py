"""The uint8 backward kernels of fully quantized training (``edgetrain.train.fqt.kernels``) against a
slow, independent scalar reference written here.

The reference below is plain Python integers and nested lists: every sum of centred products is an
explicit loop (the transposed convolution is written as "for each output position and kernel tap, add
into the input position it came from"), checked against the signed 32-bit range, and requantized with
``scalar_reference.multiplier`` / ``scalar_reference.requant`` on the double scale ``s_e * s_w / s_out``
(``s_e / positions / s_out`` for the global average pool), exactly as ``scalar_reference`` does for the
forward. No torch or edgetrain arithmetic is used for the reference values; tensors are read only
through ``.tolist()`` and formats only through their scale and zero point.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
import scalar_reference as ref
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgetrain.quant import Affine, affine_from_range, dequantize, quantize
from edgetrain.train.fqt.kernels import (
    ACC_MAX,
    ACC_MIN,
    bias_grad,
    channel_error,
    conv_input_grad,
    conv_weight_grad,
    dense_input_grad,
    dense_weight_grad,
    dynamic_k,
    error_format,
    global_avg_pool_grad,
    maxpool_grad,
    prune_error,
    quantize_error,
    relu_grad,
    softmax_ce_error,
    top_k_rows,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# derandomize: the same examples on every run (the suite must be deterministic); no example database.
PROPERTY = settings(max_examples=25, deadline=None, derandomize=True, database=None)
SEEDS = st.integers(0, 2**32 - 1)


# ----------------------------------------------------------------------------------------------
# the scalar reference (plain Python ints, nested lists)


def zeros(*shape: int) -> list:
    if len(shape) == 1:
        return [0] * shape[0]
    return [zeros(*shape[1:]) for _ in range(shape[0])]


def nested_map(f, x):
    if isinstance(x, list):
        return [nested_map(f, v) for v in x]
    return f(x)


def check32(acc):
    """Every accumulator of the reference must fit a signed 32-bit register."""
    for v in ref.flat(acc):
        if not ACC_MIN <= v <= ACC_MAX:
            raise OverflowError("reference: accumulator outside int32")
    return acc


def requant_all(acc: list, real: float, out_fmt: Affine) -> list:
    """``scalar_reference`` requantization of every accumulator with the multiplier of the double ``real``."""
    m, shift = ref.multiplier(real)
    return nested_map(lambda v: ref.requant(v, m, shift, out_fmt), acc)


def input_grad_ratio(e_fmt: Affine, w_fmt: Affine, out_fmt: Affine) -> float:
    return ref.scale_float(e_fmt) * ref.scale_float(w_fmt) / ref.scale_float(out_fmt)


def ref_dense_input_acc(e: list, ze: int, w: list, zw: int) -> list:
    """``acc[b][i] = sum_o (e[b][o] - ze) (w[o][i] - zw)``."""
    n_out, n_in = len(w), len(w[0])
    out = zeros(len(e), n_in)
    for b in range(len(e)):
        for i in range(n_in):
            acc = 0
            for o in range(n_out):
                acc += (e[b][o] - ze) * (w[o][i] - zw)
            out[b][i] = acc
    return check32(out)


def ref_dense_weight_acc(e: list, ze: int, a: list, za: int) -> list:
    """``acc[o][i] = sum_b (e[b][o] - ze) (a[b][i] - za)``."""
    n_out, n_in = len(e[0]), len(a[0])
    out = zeros(n_out, n_in)
    for o in range(n_out):
        for i in range(n_in):
            acc = 0
            for b in range(len(e)):
                acc += (e[b][o] - ze) * (a[b][i] - za)
            out[o][i] = acc
    return check32(out)


def ref_bias_acc(e: list, ze: int) -> list:
    """``acc[c] = sum over batch and positions of (e - ze)``."""
    out = zeros(len(e[0]))
    for sample in e:
        for c, plane in enumerate(sample):
            for v in ref.flat(plane):
                out[c] += v - ze
    return check32(out)


def ref_conv2d_input_acc(e: list, ze: int, w: list, zw: int, in_shape, stride, padding) -> list:
    """Transposed convolution: every output position and kernel tap adds into the input position it read."""
    c_in, h, wd = in_shape
    c_out, kh, kw = len(w), len(w[0][0]), len(w[0][0][0])
    sh, sw = stride
    ph, pw = padding
    out = zeros(len(e), c_in, h, wd)
    for b in range(len(e)):
        for o in range(c_out):
            for y in range(len(e[b][o])):
                for x in range(len(e[b][o][y])):
                    ev = e[b][o][y][x] - ze
                    for c in range(c_in):
                        for dy in range(kh):
                            iy = y * sh - ph + dy
                            if not 0 <= iy < h:
                                continue
                            for dx in range(kw):
                                ix = x * sw - pw + dx
                                if 0 <= ix < wd:
                                    out[b][c][iy][ix] += ev * (w[o][c][dy][dx] - zw)
    return check32(out)


def ref_conv2d_weight_acc(e: list, ze: int, a: list, za: int, kernel, stride, padding) -> list:
    """``acc[o][c][dy][dx] = sum_{b,y,x} (e[b][o][y][x] - ze) (a[b][c][iy][ix] - za)``; padding is real 0."""
    c_out, c_in = len(e[0]), len(a[0])
    h, wd = len(a[0][0]), len(a[0][0][0])
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    out = zeros(c_out, c_in, kh, kw)
    for o in range(c_out):
        for c in range(c_in):
            for dy in range(kh):
                for dx in range(kw):
                    acc = 0
                    for b in range(len(e)):
                        for y in range(len(e[b][o])):
                            iy = y * sh - ph + dy
                            if not 0 <= iy < h:
                                continue
                            for x in range(len(e[b][o][y])):
                                ix = x * sw - pw + dx
                                if 0 <= ix < wd:
                                    acc += (e[b][o][y][x] - ze) * (a[b][c][iy][ix] - za)
                    out[o][c][dy][dx] = acc
    return check32(out)


def ref_conv1d_input_acc(e: list, ze: int, w: list, zw: int, in_shape, stride: int, padding: int) -> list:
    c_in, n = in_shape
    c_out, k = len(w), len(w[0][0])
    out = zeros(len(e), c_in, n)
    for b in range(len(e)):
        for o in range(c_out):
            for t in range(len(e[b][o])):
                ev = e[b][o][t] - ze
                for c in range(c_in):
                    for d in range(k):
                        it = t * stride - padding + d
                        if 0 <= it < n:
                            out[b][c][it] += ev * (w[o][c][d] - zw)
    return check32(out)


def ref_conv1d_weight_acc(e: list, ze: int, a: list, za: int, k: int, stride: int, padding: int) -> list:
    c_out, c_in, n = len(e[0]), len(a[0]), len(a[0][0])
    out = zeros(c_out, c_in, k)
    for o in range(c_out):
        for c in range(c_in):
            for d in range(k):
                acc = 0
                for b in range(len(e)):
                    for t in range(len(e[b][o])):
                        it = t * stride - padding + d
                        if 0 <= it < n:
                            acc += (e[b][o][t] - ze) * (a[b][c][it] - za)
                out[o][c][d] = acc
    return check32(out)


def ref_relu_grad(e: list, ze: int, out_q: list, z_act: int) -> list:
    if isinstance(e, list):
        return [ref_relu_grad(ev, ze, qv, z_act) for ev, qv in zip(e, out_q, strict=True)]
    return e if out_q > z_act else ze


def ref_maxpool2d_grad(e: list, ze: int, a: list, kernel, stride) -> list:
    """Each window's error goes to its first maximum in scan order (row by row); the rest hold ``ze``."""
    kh, kw = kernel
    sh, sw = stride
    out = nested_map(lambda _: ze, a)
    for b in range(len(a)):
        for c in range(len(a[b])):
            for y in range(len(e[b][c])):
                for x in range(len(e[b][c][y])):
                    best = None
                    for dy in range(kh):
                        for dx in range(kw):
                            v = a[b][c][y * sh + dy][x * sw + dx]
                            if best is None or v > best[0]:
                                best = (v, y * sh + dy, x * sw + dx)
                    out[b][c][best[1]][best[2]] = e[b][c][y][x]
    return out


def ref_maxpool1d_grad(e: list, ze: int, a: list, k: int, s: int) -> list:
    out = nested_map(lambda _: ze, a)
    for b in range(len(a)):
        for c in range(len(a[b])):
            for t in range(len(e[b][c])):
                best = None
                for d in range(k):
                    v = a[b][c][t * s + d]
                    if best is None or v > best[0]:
                        best = (v, t * s + d)
                out[b][c][best[1]] = e[b][c][t]
    return out


def ref_global_avg_pool_grad(e: list, e_fmt: Affine, in_shape, out_fmt: Affine) -> list:
    positions = 1
    for d in in_shape[1:]:
        positions *= d
    m, shift = ref.multiplier(ref.scale_float(e_fmt) / positions / ref.scale_float(out_fmt))
    ze = ref.zero(e_fmt)
    out = []
    for sample in e:
        chans = []
        for c in range(in_shape[0]):
            q = ref.requant(check32([sample[c] - ze])[0], m, shift, out_fmt)
            chans.append(nested_map(lambda _, q=q: q, zeros(*in_shape[1:])))
        out.append(chans)
    return out


# ----------------------------------------------------------------------------------------------
# random data (deterministic from a seed)


def pow2_fmt(rng: random.Random, scale_near: float | None = None) -> Affine:
    """A power-of-two scale: the requantization is then a pure rounded shift and rounding ties are common."""
    k = rng.randint(-8, 2) if scale_near is None else round(math.log2(scale_near)) + rng.randint(-1, 1)
    return Affine(8, False, (2.0**k,), (rng.randint(0, 255),))


def rand_fmt(rng: random.Random) -> Affine:
    """A uint8 format from a random range, now and then one-sided (zero point 0 or 255), [-1, 1] or with a
    power-of-two scale."""
    kind = rng.random()
    if kind < 0.1:
        return error_format()
    if kind > 0.75:
        return pow2_fmt(rng)
    lo, hi = -rng.uniform(0.01, 4.0), rng.uniform(0.01, 4.0)
    if kind < 0.2:
        lo = 0.0
    elif kind < 0.3:
        hi = 0.0
    return affine_from_range(lo, hi, bits=8, signed=False)


def rand_fmts(rng: random.Random, n: int) -> list[Affine]:
    """``n`` random formats; in a third of the draws all have power-of-two scales, so that (with
    ``out_fmt_for``) the requantization is an exact shift where rounding ties decide the last bit."""
    if rng.random() < 0.35:
        return [pow2_fmt(rng) for _ in range(n)]
    return [rand_fmt(rng) for _ in range(n)]


def rand_raw(rng: random.Random, *shape: int, levels: list[int] | None = None) -> list:
    """Raw uint8 values, with extra weight on the extremes (or drawn from ``levels``, for ties)."""

    def one(_):
        if levels is not None:
            return rng.choice(levels)
        r = rng.random()
        return 0 if r < 0.1 else 255 if r < 0.2 else rng.randint(0, 255)

    return nested_map(one, zeros(*shape))


def out_fmt_for(rng: random.Random, acc: list, s_acc: float) -> Affine:
    """An output format that fits the accumulators' real range more or less (saturating a little,
    or leaving room), or occasionally an unrelated random one."""
    kind = rng.random()
    if kind < 0.2:
        return rand_fmt(rng)
    amax = max([abs(v) for v in ref.flat(acc)] + [1])
    half = amax * s_acc * rng.uniform(0.4, 1.5)
    if ref.power_of_two_exponent(Fraction(s_acc)) is not None and kind > 0.3:
        return pow2_fmt(rng, 2 * half / 255)
    return affine_from_range(-half * rng.uniform(0.5, 1.2), half * rng.uniform(0.5, 1.2))


def T(x: list, uint8: bool = False) -> torch.Tensor:
    t = torch.tensor(x, dtype=torch.int64)
    return t.to(torch.uint8) if uint8 else t


def I64(x: list) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.int64)


def assert_exact(got: torch.Tensor, want: list) -> None:
    assert got.dtype == torch.int64
    expected = I64(want)
    assert got.shape == expected.shape
    assert torch.equal(got, expected), f"max |diff| {int((got - expected).abs().max())}"


# ----------------------------------------------------------------------------------------------
# dense


@PROPERTY
@given(b=st.integers(1, 3), n_out=st.integers(1, 7), n_in=st.integers(1, 7), seed=SEEDS, uint8=st.booleans())
def test_dense_input_grad_matches_reference(b, n_out, n_in, seed, uint8):
    rng = random.Random(seed)
    e_fmt, w_fmt = rand_fmts(rng, 2)
    e, w = rand_raw(rng, b, n_out), rand_raw(rng, n_out, n_in)
    acc = ref_dense_input_acc(e, ref.zero(e_fmt), w, ref.zero(w_fmt))
    out_fmt = out_fmt_for(rng, acc, ref.scale_float(e_fmt) * ref.scale_float(w_fmt))
    want = requant_all(acc, input_grad_ratio(e_fmt, w_fmt, out_fmt), out_fmt)
    got = dense_input_grad(T(e, uint8), e_fmt, T(w, uint8), w_fmt, out_fmt)
    assert_exact(got, want)


@PROPERTY
@given(b=st.integers(1, 3), n_out=st.integers(1, 7), n_in=st.integers(1, 7), seed=SEEDS, uint8=st.booleans())
def test_dense_weight_grad_matches_reference(b, n_out, n_in, seed, uint8):
    rng = random.Random(seed)
    e_fmt, a_fmt = rand_fmt(rng), rand_fmt(rng)
    e, a = rand_raw(rng, b, n_out), rand_raw(rng, b, n_in)
    acc, scale = dense_weight_grad(T(e, uint8), e_fmt, T(a, uint8), a_fmt)
    assert_exact(acc, ref_dense_weight_acc(e, ref.zero(e_fmt), a, ref.zero(a_fmt)))
    assert scale == ref.scale_float(e_fmt) * ref.scale_float(a_fmt)


@pytest.mark.parametrize(("rounding", "want"), [
    ("nearest", [99, 99, 100, 100, 101, 101, 102]),  # ties toward +infinity: -1.5 -> -1, 0.5 -> 1
    ("nearest_even", [98, 99, 100, 100, 100, 101, 102]),  # -1.5 -> -2, -0.5 -> 0, 0.5 -> 0, 1.5 -> 2
    ("floor", [98, 99, 99, 100, 100, 101, 101]),
])
def test_input_grad_rounding_ties_follow_the_output_format(rounding, want):
    """acc = -3..3 at s_e s_w = 0.5 * 0.25 into s_out = 0.25: out = round(acc / 2) + 100, hand-counted."""
    e_fmt = Affine(8, False, (0.5,), (0,))
    w_fmt = Affine(8, False, (0.25,), (3,))
    out_fmt = Affine(8, False, (0.25,), (100,), rounding=rounding)
    e, w = I64([[1]]), I64([[0, 1, 2, 3, 4, 5, 6]])
    assert dense_input_grad(e, e_fmt, w, w_fmt, out_fmt).tolist() == [want]
    acc = ref_dense_input_acc(e.tolist(), 0, w.tolist(), 3)
    assert requant_all(acc, input_grad_ratio(e_fmt, w_fmt, out_fmt), out_fmt) == [want]
    got = conv_input_grad(I64([[[1]]]), e_fmt, I64([[[0, 1, 2, 3, 4, 5, 6]]]), w_fmt, out_fmt, (1, 7), 1, 0)
    assert got.tolist() == [[want]]


@pytest.mark.parametrize("shape", [(1, 4), (3, 5), (2, 3, 6), (3, 2, 4, 5)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bias_grad_matches_reference(shape, seed):
    rng = random.Random(seed)
    e_fmt = rand_fmt(rng)
    e = rand_raw(rng, *shape)
    acc, scale = bias_grad(T(e), e_fmt)
    assert_exact(acc, ref_bias_acc(e, ref.zero(e_fmt)))
    assert scale == ref.scale_float(e_fmt)


# ----------------------------------------------------------------------------------------------
# convolution


@st.composite
def conv2d_cases(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.sampled_from([(0, 0), (1, 1), (1, 0)]))
    sh, sw = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2]))
    h = max(1, kh - 2 * ph) + draw(st.integers(0, 4))
    w = max(1, kw - 2 * pw) + draw(st.integers(0, 4))
    return {
        "b": draw(st.integers(1, 3)), "c_in": draw(st.integers(1, 3)), "c_out": draw(st.integers(1, 3)),
        "kernel": (kh, kw), "stride": (sh, sw), "padding": (ph, pw), "hw": (h, w),
        "out_hw": ((h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1),
    }


@PROPERTY
@given(case=conv2d_cases(), seed=SEEDS, uint8=st.booleans())
def test_conv2d_input_grad_matches_reference(case, seed, uint8):
    rng = random.Random(seed)
    e_fmt, w_fmt = rand_fmts(rng, 2)
    in_shape = (case["c_in"], *case["hw"])
    e = rand_raw(rng, case["b"], case["c_out"], *case["out_hw"])
    w = rand_raw(rng, case["c_out"], case["c_in"], *case["kernel"])
    acc = ref_conv2d_input_acc(e, ref.zero(e_fmt), w, ref.zero(w_fmt), in_shape, case["stride"], case["padding"])
    out_fmt = out_fmt_for(rng, acc, ref.scale_float(e_fmt) * ref.scale_float(w_fmt))
    want = requant_all(acc, input_grad_ratio(e_fmt, w_fmt, out_fmt), out_fmt)
    got = conv_input_grad(T(e, uint8), e_fmt, T(w, uint8), w_fmt, out_fmt, in_shape, case["stride"], case["padding"])
    assert_exact(got, want)


@PROPERTY
@given(case=conv2d_cases(), seed=SEEDS, uint8=st.booleans())
def test_conv2d_weight_grad_matches_reference(case, seed, uint8):
    rng = random.Random(seed)
    e_fmt, a_fmt = rand_fmt(rng), rand_fmt(rng)
    e = rand_raw(rng, case["b"], case["c_out"], *case["out_hw"])
    a = rand_raw(rng, case["b"], case["c_in"], *case["hw"])
    acc, scale = conv_weight_grad(T(e, uint8), e_fmt, T(a, uint8), a_fmt, case["kernel"], case["stride"],
                                  case["padding"])
    want = ref_conv2d_weight_acc(e, ref.zero(e_fmt), a, ref.zero(a_fmt), case["kernel"], case["stride"],
                                 case["padding"])
    assert_exact(acc, want)
    assert scale == ref.scale_float(e_fmt) * ref.scale_float(a_fmt)


@st.composite
def conv1d_cases(draw):
    k = draw(st.integers(1, 4))
    p = draw(st.sampled_from([0, 1, 2]))
    s = draw(st.sampled_from([1, 2]))
    n = max(1, k - 2 * p) + draw(st.integers(0, 6))
    return {"b": draw(st.integers(1, 3)), "c_in": draw(st.integers(1, 3)), "c_out": draw(st.integers(1, 3)),
            "k": k, "stride": s, "padding": p, "n": n, "out_n": (n + 2 * p - k) // s + 1}


@PROPERTY
@given(case=conv1d_cases(), seed=SEEDS)
def test_conv1d_input_grad_matches_reference(case, seed):
    rng = random.Random(seed)
    e_fmt, w_fmt = rand_fmts(rng, 2)
    in_shape = (case["c_in"], case["n"])
    e = rand_raw(rng, case["b"], case["c_out"], case["out_n"])
    w = rand_raw(rng, case["c_out"], case["c_in"], case["k"])
    acc = ref_conv1d_input_acc(e, ref.zero(e_fmt), w, ref.zero(w_fmt), in_shape, case["stride"], case["padding"])
    out_fmt = out_fmt_for(rng, acc, ref.scale_float(e_fmt) * ref.scale_float(w_fmt))
    want = requant_all(acc, input_grad_ratio(e_fmt, w_fmt, out_fmt), out_fmt)
    got = conv_input_grad(T(e), e_fmt, T(w), w_fmt, out_fmt, in_shape, case["stride"], case["padding"])
    assert_exact(got, want)


@PROPERTY
@given(case=conv1d_cases(), seed=SEEDS)
def test_conv1d_weight_grad_matches_reference(case, seed):
    rng = random.Random(seed)
    e_fmt, a_fmt = rand_fmt(rng), rand_fmt(rng)
    e = rand_raw(rng, case["b"], case["c_out"], case["out_n"])
    a = rand_raw(rng, case["b"], case["c_in"], case["n"])
    acc, scale = conv_weight_grad(T(e), e_fmt, T(a), a_fmt, (case["k"],), case["stride"], case["padding"])
    want = ref_conv1d_weight_acc(e, ref.zero(e_fmt), a, ref.zero(a_fmt), case["k"], case["stride"], case["padding"])
    assert_exact(acc, want)
    assert scale == ref.scale_float(e_fmt) * ref.scale_float(a_fmt)


def test_conv_input_grad_uncovered_positions_get_the_zero_point():
    """Stride 2 over a 6-wide input with a 3-tap kernel reads columns 0..4 only: column 5 gets no
    contribution, i.e. a zero accumulator, i.e. the output zero point."""
    f = affine_from_range(-1.0, 3.0)
    out_fmt = affine_from_range(-50.0, 20.0)
    e = torch.full((1, 1, 2, 2), 255, dtype=torch.int64)
    w = torch.full((1, 1, 3, 3), 255, dtype=torch.int64)
    got = conv_input_grad(e, f, w, f, out_fmt, (1, 6, 6), (2, 2), (0, 0))
    assert (got[..., 5, :] == out_fmt.zero_point[0]).all() and (got[..., :, 5] == out_fmt.zero_point[0]).all()
    assert (got[..., :5, :5] != out_fmt.zero_point[0]).all()


# ----------------------------------------------------------------------------------------------
# rows= (dynamic partial updates)


@pytest.mark.parametrize("seed", range(4))
def test_dense_weight_grad_rows(seed):
    rng = random.Random(seed)
    b, n_out, n_in = rng.randint(1, 3), rng.randint(2, 7), rng.randint(1, 6)
    e_fmt, a_fmt = rand_fmt(rng), rand_fmt(rng)
    e, a = T(rand_raw(rng, b, n_out)), T(rand_raw(rng, b, n_in))
    full, s_full = dense_weight_grad(e, e_fmt, a, a_fmt)
    rows = sorted(rng.sample(range(n_out), rng.randint(1, n_out - 1)))
    part, s_part = dense_weight_grad(e, e_fmt, a, a_fmt, rows=torch.tensor(rows))
    assert s_part == s_full
    assert part.dtype == torch.int64 and part.shape == full.shape
    for o in range(n_out):
        if o in rows:
            assert torch.equal(part[o], full[o])
        else:
            assert (part[o] == 0).all()
    empty, _ = dense_weight_grad(e, e_fmt, a, a_fmt, rows=torch.tensor([], dtype=torch.int64))
    assert empty.shape == full.shape and (empty == 0).all()


@pytest.mark.parametrize("conv1d", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_conv_weight_grad_rows(conv1d, seed):
    rng = random.Random(seed)
    b, c_in, c_out = rng.randint(1, 3), rng.randint(1, 3), rng.randint(2, 5)
    e_fmt, a_fmt = rand_fmt(rng), rand_fmt(rng)
    if conv1d:
        kernel, stride, padding = (3,), 2, 1
        a, e = rand_raw(rng, b, c_in, 7), rand_raw(rng, b, c_out, 4)
    else:
        kernel, stride, padding = (2, 3), (1, 2), (1, 0)
        a, e = rand_raw(rng, b, c_in, 4, 5), rand_raw(rng, b, c_out, 5, 2)
    full, s_full = conv_weight_grad(T(e), e_fmt, T(a), a_fmt, kernel, stride, padding)
    rows = sorted(rng.sample(range(c_out), rng.randint(1, c_out - 1)))
    part, s_part = conv_weight_grad(T(e), e_fmt, T(a), a_fmt, kernel, stride, padding, rows=torch.tensor(rows))
    assert s_part == s_full and part.shape == full.shape == (c_out, c_in, *kernel)
    for o in range(c_out):
        if o in rows:
            assert torch.equal(part[o], full[o])
        else:
            assert (part[o] == 0).all()
    empty, _ = conv_weight_grad(T(e), e_fmt, T(a), a_fmt, kernel, stride, padding,
                                rows=torch.tensor([], dtype=torch.int64))
    assert (empty == 0).all()


@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 3, 3)])
def test_bias_grad_rows(shape):
    rng = random.Random(7)
    e_fmt = rand_fmt(rng)
    e = T(rand_raw(rng, *shape))
    full, s_full = bias_grad(e, e_fmt)
    rows = [0, shape[1] - 1]
    part, s_part = bias_grad(e, e_fmt, rows=torch.tensor(rows))
    assert s_part == s_full
    for c in range(shape[1]):
        assert int(part[c]) == (int(full[c]) if c in rows else 0)


def test_rows_outside_are_not_counted_for_overflow():
    """Row 0's sum leaves int32, row 1's is zero: with rows=[1] the overflowing row is never computed."""
    b = 34000
    fmt = Affine(8, False, (0.01,), (0,))
    e = torch.zeros(b, 2, dtype=torch.int64)
    e[:, 0] = 255
    a = torch.full((b, 1), 255, dtype=torch.int64)
    with pytest.raises(OverflowError):
        dense_weight_grad(e, fmt, a, fmt)
    with pytest.raises(OverflowError):
        dense_weight_grad(e, fmt, a, fmt, rows=torch.tensor([0]))
    acc, _ = dense_weight_grad(e, fmt, a, fmt, rows=torch.tensor([1]))
    assert (acc == 0).all()


# ----------------------------------------------------------------------------------------------
# int32 range


def products_summing_to(total: int) -> list[tuple[int, int]]:
    """Pairs ``(x, y)`` with ``0 <= x, y <= 255`` and ``sum x * y == total`` (total >= 0)."""
    q, r = divmod(total, 255 * 255)
    return [(255, 255)] * q + [(255, r // 255), (r % 255, 1)]


@pytest.mark.parametrize(("total", "overflows"), [
    (ACC_MAX, False), (ACC_MAX + 1, True), (ACC_MIN, False), (ACC_MIN - 1, True), (33025 * 65025, False),
])
def test_dense_weight_grad_int32_boundary(total, overflows):
    """A [B, 1] x [B, 1] weight gradient whose single sum is exactly ``total`` (B ~ 33k, extreme values)."""
    pairs = products_summing_to(abs(total))
    e_fmt = Affine(8, False, (0.01,), (0,))  # raw x is centred x
    a_fmt = Affine(8, False, (0.02,), (0,) if total >= 0 else (255,))  # raw y or 255 - y: centred +-y
    e = torch.tensor([[x] for x, _ in pairs], dtype=torch.int64)
    a = torch.tensor([[y if total >= 0 else 255 - y] for _, y in pairs], dtype=torch.int64)
    if overflows:
        with pytest.raises(OverflowError):
            dense_weight_grad(e, e_fmt, a, a_fmt)
        with pytest.raises(OverflowError):
            ref_dense_weight_acc(e.tolist(), 0, a.tolist(), a_fmt.zero_point[0])
    else:
        acc, _ = dense_weight_grad(e, e_fmt, a, a_fmt)
        assert acc.tolist() == [[total]]


def test_input_grads_int32_overflow():
    n = 34000  # 255 * 255 * 34000 > 2**31
    fmt = Affine(8, False, (0.01,), (0,))
    neg = Affine(8, False, (0.01,), (255,))
    out_fmt = error_format()
    e = torch.full((1, n), 255, dtype=torch.int64)
    for w_fmt in (fmt, neg):  # +255 * 255 and 255 * -255 per term
        w = torch.full((n, 1), 255 if w_fmt is fmt else 0, dtype=torch.int64)
        with pytest.raises(OverflowError):
            dense_input_grad(e, fmt, w, w_fmt, out_fmt)
        with pytest.raises(OverflowError):
            conv_input_grad(e.reshape(1, n, 1, 1), fmt, w.reshape(n, 1, 1, 1), w_fmt, out_fmt, (1, 1, 1),
                            (1, 1), (0, 0))
        with pytest.raises(OverflowError):
            conv_input_grad(e.reshape(1, n, 1), fmt, w.reshape(n, 1, 1), w_fmt, out_fmt, (1, 1), 1, 0)
    # 33000 terms stay inside: the sum is exact and requantizes (saturating) without complaint
    small = dense_input_grad(e[:, :33000], fmt, torch.full((33000, 1), 255), fmt, out_fmt)
    assert small.tolist() == [[255]]


def test_conv_weight_grad_int32_overflow():
    fmt = Affine(8, False, (0.01,), (0,))
    side = 190  # 190 * 190 = 36100 positions of 255 * 255
    x = torch.full((1, 1, side, side), 255, dtype=torch.int64)
    with pytest.raises(OverflowError):
        conv_weight_grad(x, fmt, x, fmt, (1, 1), (1, 1), (0, 0))
    with pytest.raises(OverflowError):
        conv_weight_grad(x.reshape(1, 1, -1), fmt, x.reshape(1, 1, -1), fmt, (1,), 1, 0)


# ----------------------------------------------------------------------------------------------
# element-wise and pooling


@pytest.mark.parametrize("shape", [(2, 5), (1, 3, 4, 4), (3, 2, 6)])
@pytest.mark.parametrize("seed", [0, 1])
def test_relu_grad_matches_reference(shape, seed):
    rng = random.Random(seed)
    e_fmt, act_fmt = rand_fmt(rng), rand_fmt(rng)
    z_act = ref.zero(act_fmt)
    # a ReLU output is >= its zero point; many positions sit exactly on it (masked)
    out_q = nested_map(lambda _: z_act if rng.random() < 0.4 else rng.randint(z_act, 255), zeros(*shape))
    e = rand_raw(rng, *shape)
    got = relu_grad(T(e), e_fmt, T(out_q), act_fmt)
    want = ref_relu_grad(e, ref.zero(e_fmt), out_q, z_act)
    assert_exact(got, want)
    masked = T(out_q) <= z_act
    assert masked.any()
    assert (got[masked] == e_fmt.zero_point[0]).all()


@st.composite
def pool2d_cases(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = kh + draw(st.integers(0, 1)), kw + draw(st.integers(0, 1))
    h, w = kh + draw(st.integers(0, 5)), kw + draw(st.integers(0, 5))
    return {"b": draw(st.integers(1, 3)), "c": draw(st.integers(1, 3)), "kernel": (kh, kw), "stride": (sh, sw),
            "hw": (h, w), "out_hw": ((h - kh) // sh + 1, (w - kw) // sw + 1)}


@PROPERTY
@given(case=pool2d_cases(), seed=SEEDS, ties=st.booleans())
def test_maxpool2d_grad_matches_reference(case, seed, ties):
    rng = random.Random(seed)
    e_fmt = rand_fmt(rng)
    a = rand_raw(rng, case["b"], case["c"], *case["hw"], levels=[0, 3, 200] if ties else None)
    e = rand_raw(rng, case["b"], case["c"], *case["out_hw"])
    got = maxpool_grad(T(e), e_fmt, T(a), case["kernel"], case["stride"])
    assert_exact(got, ref_maxpool2d_grad(e, ref.zero(e_fmt), a, case["kernel"], case["stride"]))


@PROPERTY
@given(k=st.integers(1, 4), extra_s=st.integers(0, 2), extra_n=st.integers(0, 7), b=st.integers(1, 3),
       c=st.integers(1, 3), seed=SEEDS, ties=st.booleans())
def test_maxpool1d_grad_matches_reference(k, extra_s, extra_n, b, c, seed, ties):
    rng = random.Random(seed)
    s, n = k + extra_s, k + extra_n
    e_fmt = rand_fmt(rng)
    a = rand_raw(rng, b, c, n, levels=[5, 9] if ties else None)
    e = rand_raw(rng, b, c, (n - k) // s + 1)
    got = maxpool_grad(T(e), e_fmt, T(a), (k,), (s,))
    assert_exact(got, ref_maxpool1d_grad(e, ref.zero(e_fmt), a, k, s))


def test_maxpool_ties_first_maximum_in_scan_order():
    e_fmt = error_format()
    z = e_fmt.zero_point[0]
    a = I64([[[[5, 5, 1, 7],
                [5, 5, 7, 2]]]])
    e = I64([[[[10, 20]]]])
    got = maxpool_grad(e, e_fmt, a, (2, 2), (2, 2))
    # window 0: all equal -> top-left; window 1: 7 at (0, 3) comes before 7 at (1, 2) in row-major order
    assert got.tolist() == [[[[10, z, z, 20],
                              [z, z, z, z]]]]
    got1 = maxpool_grad(I64([[[30, 40]]]), e_fmt, I64([[[3, 9, 9, 4, 4, 4]]]), (3,), (3,))
    assert got1.tolist() == [[[z, 30, z, 40, z, z]]]


@pytest.mark.parametrize(("kernel", "stride"), [((2, 2), (1, 2)), ((2, 2), (2, 1)), ((3, 3), (2, 2)), ((3,), (2,))])
def test_maxpool_overlapping_windows_raise(kernel, stride):
    a = torch.zeros((1, 1, 6, 6) if len(kernel) == 2 else (1, 1, 6), dtype=torch.int64)
    with pytest.raises(ValueError, match="non-overlapping"):
        maxpool_grad(torch.zeros(1, 1, 3, 3, dtype=torch.int64), error_format(), a, kernel, stride)


@pytest.mark.parametrize("in_shape", [(3, 2, 2), (2, 3, 5), (4, 7), (1, 1, 1)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_global_avg_pool_grad_matches_reference(in_shape, seed):
    rng = random.Random(seed)
    b = rng.randint(1, 3)
    (e_fmt,) = rand_fmts(rng, 1)
    e = rand_raw(rng, b, in_shape[0])
    positions = math.prod(in_shape[1:])
    out_fmt = out_fmt_for(rng, [128], ref.scale_float(e_fmt) / positions)
    got = global_avg_pool_grad(T(e), e_fmt, in_shape, out_fmt)
    assert_exact(got, ref_global_avg_pool_grad(e, e_fmt, in_shape, out_fmt))


# ----------------------------------------------------------------------------------------------
# the loss head and error quantization


def py_softmax_ce_error(logits: list, logit_fmt: Affine, labels: list, e_fmt: Affine) -> list:
    """math.exp softmax of the dequantized logits minus the one-hot label, quantized by nearest rounding."""
    s, z = ref.scale_float(logit_fmt), ref.zero(logit_fmt)
    out = []
    for row, y in zip(logits, labels, strict=True):
        real = [(q - z) * s for q in row]
        top = max(real)
        ex = [math.exp(r - top) for r in real]
        tot = sum(ex)
        g = [v / tot - (1.0 if j == y else 0.0) for j, v in enumerate(ex)]
        out.append([ref.fit(ref.round_fraction(Fraction(v) / Fraction(ref.scale_float(e_fmt)), "nearest")
                            + ref.zero(e_fmt), e_fmt) for v in g])
    return out


@pytest.mark.parametrize("seed", range(5))
def test_softmax_ce_error(seed):
    rng = random.Random(seed)
    b, classes = rng.randint(1, 4), rng.randint(2, 10)
    logit_fmt = rand_fmt(rng)
    e_fmt = error_format() if seed % 2 == 0 else affine_from_range(-1.0, rng.uniform(0.5, 1.0))
    logits = rand_raw(rng, b, classes)
    labels = [rng.randrange(classes) for _ in range(b)]
    got = softmax_ce_error(T(logits), logit_fmt, torch.tensor(labels), e_fmt)
    assert got.dtype == torch.int64 and got.shape == (b, classes)
    # the composition: quantize(softmax(dequantize(logits)) - onehot)
    g = torch.softmax(dequantize(T(logits), logit_fmt), dim=1) - torch.nn.functional.one_hot(
        torch.tensor(labels), classes).to(torch.float64)
    assert torch.equal(got, quantize(g, e_fmt))
    # an independent math.exp softmax agrees to the last bit, give or take one step at a rounding tie
    want = I64(py_softmax_ce_error(logits, logit_fmt, labels, e_fmt))
    assert int((got - want).abs().max()) <= 1
    # real rows sum to about zero: each entry is off by at most half a step
    real = dequantize(got, e_fmt)
    s_e = e_fmt.scale[0]
    assert (real.sum(1).abs() <= classes * s_e / 2 + 1e-12).all()
    # the labelled entry is the only negative one (softmax - 1 <= 0, others >= 0)
    for r, y in enumerate(labels):
        assert float(real[r, y]) <= 0.0
        assert all(float(real[r, j]) >= 0.0 for j in range(classes) if j != y)


@pytest.mark.parametrize("labels", [[0, 3], [-1, 0], [0], [0, 1, 2], [[0], [5]]])
def test_softmax_ce_error_bad_labels(labels):
    logits = torch.full((2, 3), 128, dtype=torch.int64)
    with pytest.raises(ValueError, match="labels"):
        softmax_ce_error(logits, error_format(), torch.tensor(labels), error_format())


def test_quantize_error_saturates_and_rejects_non_finite():
    fmt = error_format()
    z, s = fmt.zero_point[0], fmt.scale[0]
    got = quantize_error(torch.tensor([0.0, 5.0, -5.0, 3 * s, -7 * s], dtype=torch.float64), fmt)
    assert got.tolist() == [z, 255, 0, z + 3, z - 7]
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="non-finite"):
            quantize_error(torch.tensor([0.0, bad]), fmt)


# ----------------------------------------------------------------------------------------------
# dynamic partial updates


@pytest.mark.parametrize(("e_mean", "e_max", "n", "lam_min", "lam_max", "want"), [
    (0.3, 1.0, 16, 0.0, 0.5, 2),  # floor(0.15 * 16) = floor(2.4)
    (0.5, 1.0, 10, 0.0, 1.0, 5),
    (0.25, 0.5, 20, 0.25, 0.75, 10),  # ratio 1/2: (0.25 + 0.25) * 20
    (2.0, 1.0, 16, 0.0, 0.5, 8),  # ratio clamped to 1: lam_max * n
    (-0.25, 1.0, 32, 0.0, 0.5, 4),  # |e_mean|: 0.125 * 32
    (0.0, 1.0, 16, 0.0, 0.5, 1),  # floor 0 -> never below 1
    (0.01, 1.0, 4, 0.0, 1.0, 1),  # floor(0.04) = 0 -> 1
    (0.3, 1.0, 1, 0.0, 0.5, 1),
    (5.0, 0.0, 16, 0.1, 0.5, 8),  # e_max = 0: lam_max * n
    (0.0, 0.0, 10, 0.0, 0.3, 3),
    (0.7, 0.0, 12, 0.25, 0.25, 3),
    (0.3, 1.0, 16, 0.25, 0.25, 4),  # lam_min == lam_max: fixed fraction
])
def test_dynamic_k_hand_counted(e_mean, e_max, n, lam_min, lam_max, want):
    assert dynamic_k(e_mean, e_max, n, lam_min, lam_max) == want


@pytest.mark.parametrize(("e_mean", "n", "lam_max", "want"), [(0.7, 100, 0.1, 7), (0.1, 100, 0.7, 7)])
def test_dynamic_k_decimal_products_that_are_integers(e_mean, n, lam_max, want):
    assert dynamic_k(e_mean, 1.0, n, 0.0, lam_max) == want


def test_dynamic_k_never_below_one():
    for n in (1, 2, 5, 100):
        for e_mean in (0.0, 1e-9, 0.2):
            assert dynamic_k(e_mean, 1.0, n, 0.0, 0.01) >= 1


@pytest.mark.parametrize(("lam_min", "lam_max"), [(-0.1, 0.5), (0.6, 0.5), (0.2, 1.1), (float("nan"), 0.5)])
def test_dynamic_k_bad_lambdas(lam_min, lam_max):
    with pytest.raises(ValueError):
        dynamic_k(0.3, 1.0, 16, lam_min, lam_max)


def error_with_channel_sums(sums: list[int], z: int, positions: int = 4) -> torch.Tensor:
    """A raw [2, C, positions] error whose channel c has sum |e - z| == sums[c] (mixed signs)."""
    out = []
    for b in range(2):
        chans = []
        for total in sums:
            part = total // 2 if b == 0 else total - total // 2
            vals = [0] * positions
            for i in range(part):
                vals[i % positions] += 1
            chans.append([z + v if i % 2 == 0 else z - v for i, v in enumerate(vals)])
        out.append(chans)
    return I64(out)


def test_top_k_rows_hand_made_ties():
    fmt = error_format()
    e = error_with_channel_sums([3, 7, 7, 1, 7, 0], fmt.zero_point[0])
    assert channel_error(e, fmt).tolist() == [3 / 8, 7 / 8, 7 / 8, 1 / 8, 7 / 8, 0.0]
    assert top_k_rows(e, fmt, 1).tolist() == [1]
    assert top_k_rows(e, fmt, 2).tolist() == [1, 2]
    assert top_k_rows(e, fmt, 3).tolist() == [1, 2, 4]
    assert top_k_rows(e, fmt, 4).tolist() == [0, 1, 2, 4]
    assert top_k_rows(e, fmt, 6).tolist() == [0, 1, 2, 3, 4, 5]
    assert top_k_rows(e, fmt, 60).tolist() == [0, 1, 2, 3, 4, 5]  # clamped to the channel count
    all_tied = error_with_channel_sums([2, 2, 2, 2], fmt.zero_point[0])
    assert top_k_rows(all_tied, fmt, 2).tolist() == [0, 1]


@pytest.mark.parametrize("seed", range(6))
def test_top_k_rows_matches_reference(seed):
    rng = random.Random(seed)
    shape = rng.choice([(3, 8), (2, 6, 3), (1, 5, 2, 3)])
    fmt = rand_fmt(rng)
    z = ref.zero(fmt)
    e = rand_raw(rng, *shape, levels=[z, max(z - 2, 0), min(z + 2, 255), 0, 255])
    # the mean over the same count of positions per channel orders like the integer sum
    sums = [sum(abs(v - z) for sample in e for v in ref.flat(sample[c])) for c in range(shape[1])]
    k = rng.randint(1, shape[1])
    want = sorted(sorted(range(shape[1]), key=lambda c: (-sums[c], c))[:k])
    got = top_k_rows(I64(e), fmt, k)
    assert got.tolist() == want
    count = len(e) * len(ref.flat(e[0][0]))
    assert channel_error(I64(e), fmt).tolist() == pytest.approx([s / count for s in sums], rel=1e-15)


@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 6), (2, 3, 3, 4)])
def test_prune_error_sets_other_channels_to_zero_point(shape):
    rng = random.Random(11)
    fmt = rand_fmt(rng)
    z = ref.zero(fmt)
    e = rand_raw(rng, *shape)
    rows = sorted(rng.sample(range(shape[1]), 2))
    got = prune_error(I64(e), fmt, torch.tensor(rows))
    want = [[sample[c] if c in rows else nested_map(lambda _: z, sample[c]) for c in range(shape[1])]
            for sample in e]
    assert_exact(got, want)
    # a pruned error contributes nothing downstream: its bias gradient is exactly zero
    acc, _ = bias_grad(got, fmt)
    assert all(int(acc[c]) == 0 for c in range(shape[1]) if c not in rows)


# ----------------------------------------------------------------------------------------------
# formats and argument checks


PER_CHANNEL = Affine(8, False, (0.01, 0.02), (128, 3), axis=0)


def test_per_channel_weight_format_is_refused():
    e_fmt = out_fmt = error_format()
    with pytest.raises(ValueError, match="per-tensor"):
        dense_input_grad(torch.zeros(1, 2, dtype=torch.int64), e_fmt, torch.zeros(2, 3, dtype=torch.int64),
                         PER_CHANNEL, out_fmt)
    with pytest.raises(ValueError, match="per-tensor"):
        conv_input_grad(torch.zeros(1, 2, 2, 2, dtype=torch.int64), e_fmt, torch.zeros(2, 1, 1, 1, dtype=torch.int64),
                        PER_CHANNEL, out_fmt, (1, 2, 2), (1, 1), (0, 0))
    with pytest.raises(ValueError, match="per-tensor"):
        conv_input_grad(torch.zeros(1, 2, 2, dtype=torch.int64), e_fmt, torch.zeros(2, 1, 1, dtype=torch.int64),
                        PER_CHANNEL, out_fmt, (1, 2), 1, 0)


def test_per_channel_output_and_error_formats_are_refused():
    w_fmt = error_format()
    with pytest.raises(ValueError):
        dense_input_grad(torch.zeros(1, 2, dtype=torch.int64), w_fmt, torch.zeros(2, 3, dtype=torch.int64), w_fmt,
                         PER_CHANNEL)
    with pytest.raises(ValueError):
        global_avg_pool_grad(torch.zeros(1, 2, dtype=torch.int64), w_fmt, (2, 3, 3), PER_CHANNEL)
    with pytest.raises(ValueError, match="per-tensor"):
        quantize_error(torch.zeros(2, 2, dtype=torch.float64), PER_CHANNEL)


def test_per_channel_error_and_activation_formats_are_refused():
    e = torch.tensor([[128, 3]], dtype=torch.int64)  # both centred 0 under PER_CHANNEL
    a = torch.full((1, 3), 5, dtype=torch.int64)
    with pytest.raises(ValueError, match="per-tensor"):
        dense_weight_grad(e, PER_CHANNEL, a, error_format())
    with pytest.raises(ValueError, match="per-tensor"):
        bias_grad(e, PER_CHANNEL)
    with pytest.raises(ValueError, match="per-tensor"):
        relu_grad(e, error_format(), e, PER_CHANNEL)


def test_float_inputs_are_rejected():
    fmt = error_format()
    with pytest.raises(TypeError):
        dense_weight_grad(torch.zeros(1, 2), fmt, torch.zeros(1, 3, dtype=torch.int64), fmt)
    with pytest.raises(TypeError):
        dense_input_grad(torch.zeros(1, 2, dtype=torch.int64), fmt, torch.zeros(2, 3), fmt, fmt)

"""The opt-in int16 block-floating-point gradient buffer of uint8 FQT (``train.fqt.blockfloat``; our
extension, not Deutel et al.'s): the vectorized accumulation against a scalar reference written here,
the per-sample gradient kernels against the batch-summed ones, the error bound of the accumulated
gradient against the int32 buffer, bit-identity where nothing leaves int16, the trainer's settings,
its ledger and the C export's refusal.

The reference is plain Python integers: for each row, ``t = m * 2**x + g`` element by element, then the
exponent is raised one step at a time until every ``floor(t / 2**x' + 1/2)`` (a ``Fraction``: round half
toward +inf, written from its definition, not from shifts) lies in [-32768, 32767].
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgetrain.cost.training_memory import training_memory
from edgetrain.export.generate import NotExportable, check_exportable, export_fqt
from edgetrain.model.arch import build_float_net
from edgetrain.model.convert import convert
from edgetrain.model.forward import forward_int, quantize_input
from edgetrain.model.layers import Conv1d, Conv2d, Dense
from edgetrain.model.scheme import parse_scheme
from edgetrain.quant import affine_from_range
from edgetrain.threads import torch_threads
from edgetrain.train.fqt.backward import PartialPolicy, backward_uint8
from edgetrain.train.fqt.blockfloat import MANT_MAX, MANT_MIN, bfp_accumulate, bfp_sum, bfp_value, round_shift
from edgetrain.train.fqt.kernels import (
    bias_grad,
    bias_grad_samples,
    conv_weight_grad,
    conv_weight_grad_samples,
    dense_weight_grad,
    dense_weight_grad_samples,
    error_format,
)
from edgetrain.train.fqt.optimizer import Optimizer
from edgetrain.train.fqt.trainer import FQTTrainer, accumulated_grads
from edgetrain.train.protocol import Batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None)
LINEAR = (Dense, Conv2d, Conv1d)


# -- the scalar reference ---------------------------------------------------------------------------------


def ref_round(t: int, s: int) -> int:
    """``round(t / 2**s)``, ties toward +inf, from the definition."""
    return t if s == 0 else int((Fraction(t, 2**s) + Fraction(1, 2)).__floor__())


def ref_accumulate(samples: list[list[list[int]]]) -> tuple[list[list[int]], list[int]]:
    """Block-float accumulation of ``samples[b][row][k]``, one sample, one row, one element at a time."""
    rows, k = len(samples[0]), len(samples[0][0])
    m = [[0] * k for _ in range(rows)]
    x = [0] * rows
    for sample in samples:
        for r in range(rows):
            t = [m[r][j] * 2 ** x[r] + sample[r][j] for j in range(k)]
            e = x[r]
            while True:
                q = [ref_round(v, e) for v in t]
                if all(MANT_MIN <= v <= MANT_MAX for v in q):
                    break
                e += 1
            m[r], x[r] = q, e
    return m, x


INT32 = st.one_of(
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-70_000, 70_000),
    st.sampled_from([0, 0, 1, -1, 32767, -32768, 32768, -32769, 65535, -65536, 2**31 - 1, -(2**31)]),
)


@st.composite
def gradient_samples(draw) -> list[list[list[int]]]:
    b, r, k = draw(st.integers(1, 8)), draw(st.integers(1, 3)), draw(st.integers(1, 5))
    rows = st.one_of(st.lists(INT32, min_size=k, max_size=k), st.just([0] * k),
                     st.just([-(2**31)] * k), st.just([2**31 - 1] * k))
    return [[draw(rows) for _ in range(r)] for _ in range(b)]


# -- the accumulation --------------------------------------------------------------------------------------


@PROPERTY
@given(gradient_samples())
def test_vectorized_accumulation_equals_the_scalar_reference(samples):
    m, x = bfp_accumulate(torch.tensor(samples, dtype=torch.int64))
    ref_m, ref_x = ref_accumulate(samples)
    assert m.tolist() == ref_m and x.tolist() == ref_x
    assert int(m.min()) >= MANT_MIN and int(m.max()) <= MANT_MAX


@pytest.mark.parametrize("samples, m, x, value", [
    # every partial sum fits int16: the exact sum, exponent 0
    ([[[30000, -5]], [[2767, 3]]], [[32767, -2]], [0], [[32767, -2]]),
    # 32767 + 1 = 32768 needs x = 1: (32768 + 1) >> 1 = 16384; (1 + 1) >> 1 = 1 (a tie, toward +inf): value 2
    ([[[32767, 1]], [[1, 0]]], [[16384, 1]], [1], [[32768, 2]]),
    # -32768 - 1 = -32769 needs x = 1: (-32769 + 1) >> 1 = -16384; -1 -> (-1 + 1) >> 1 = 0 (tie toward +inf)
    ([[[-32768, -1]], [[-1, 0]]], [[-16384, 0]], [1], [[-32768, 0]]),
    # the exponent never goes back down, though the sum cancels to 0 (x' >= x)
    ([[[40000]], [[-40000]]], [[0]], [1], [[0]]),
    # rows have their own exponents; a zero row stays at 0. 2**31 - 1 first needs x = 17 (2**31 - 1 < 32767.5 * 2**17):
    # m = (2**31 - 1 + 2**16) >> 17 = 16384; then t = 2**31 + 2**31 - 1 needs x = 18: m = 16384, value 2**32
    ([[[2**31 - 1], [0]], [[2**31 - 1], [0]]], [[16384], [0]], [18, 0], [[2**32], [0]]),
])
def test_hand_worked_examples(samples, m, x, value):
    got_m, got_x = bfp_accumulate(torch.tensor(samples))
    assert (got_m.tolist(), got_x.tolist(), bfp_value(got_m, got_x).tolist()) == (m, x, value)
    assert ref_accumulate(samples) == (m, x)


def test_round_shift_rounds_half_toward_plus_infinity():
    t = torch.tensor([-5, -4, -3, -1, 1, 3, 5, 6])
    assert round_shift(t, torch.tensor(0)).tolist() == t.tolist()
    assert round_shift(t, torch.tensor(1)).tolist() == [-2, -2, -1, 0, 1, 2, 3, 3]
    assert round_shift(t, torch.tensor(2)).tolist() == [-1, -1, -1, 0, 0, 1, 1, 2]
    assert all(ref_round(v, s) == int(round_shift(torch.tensor(v), torch.tensor(s)))
               for v in range(-40, 41) for s in range(5))


def test_bfp_sum_shares_one_exponent_per_row_or_per_tensor():
    g = torch.zeros(2, 3, 4, dtype=torch.int64)
    g[:, 1, 0] = 30000  # only filter 1 outgrows int16
    g[:, 1, 1] = 1
    value, x = bfp_sum(g)
    assert x.tolist() == [0, 1, 0] and value.shape == (3, 4)
    # sample 2: t = [60000, 2, 0, 0] needs x = 1: (60000 + 1) >> 1 = 30000, (2 + 1) >> 1 = 1; value [60000, 2]
    assert value[1, :2].tolist() == [60000, 2] and not value[[0, 2]].any()
    whole, x_all = bfp_sum(g, one_row=True)
    assert x_all.tolist() == [1] and whole.shape == (3, 4)


def test_refusals():
    with pytest.raises(OverflowError, match="32-bit"):
        bfp_accumulate(torch.tensor([[[2**31]]]))
    with pytest.raises(TypeError, match="integer"):
        bfp_accumulate(torch.zeros(1, 1, 1))
    with pytest.raises(ValueError, match="samples, rows"):
        bfp_accumulate(torch.zeros(1, 1, dtype=torch.int64))


# -- per-sample gradients ------------------------------------------------------------------------------


def _raw(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=g)


@pytest.mark.parametrize("rows", [None, torch.tensor([0, 2]), torch.tensor([], dtype=torch.int64)])
def test_per_sample_kernels_sum_to_the_batch_kernels(rows):
    g = torch.Generator().manual_seed(1)
    ef, af = error_format(-1.0, 1.0), affine_from_range(-1.0, 2.0)
    b = 5
    cases = [
        (dense_weight_grad_samples, dense_weight_grad, (_raw(g, b, 4), ef, _raw(g, b, 6), af)),
        # conv2d: 6x6 input, 3x3 kernel, stride 2, padding 1 -> 3x3 errors
        (conv_weight_grad_samples, conv_weight_grad,
         (_raw(g, b, 4, 3, 3), ef, _raw(g, b, 2, 6, 6), af, (3, 3), (2, 2), (1, 1))),
        # conv1d: length 7, kernel 3, stride 1, no padding -> length 5
        (conv_weight_grad_samples, conv_weight_grad, (_raw(g, b, 4, 5), ef, _raw(g, b, 2, 7), af, (3,), 1, 0)),
        (bias_grad_samples, bias_grad, (_raw(g, b, 4, 3, 3), ef)),
    ]
    for per_sample, summed, args in cases:
        acc, scale = per_sample(*args, rows=rows)
        total, total_scale = summed(*args, rows=rows)
        assert acc.dtype == torch.int64 and acc.shape == (b, *total.shape)
        assert torch.equal(acc.sum(0), total) and scale == total_scale
        for s in range(b):  # each slice is that sample's own batch-of-one gradient
            one = [a[s:s + 1] if isinstance(a, torch.Tensor) else a for a in args]
            assert torch.equal(acc[s], summed(*one, rows=rows)[0])
        if rows is not None:
            outside = torch.ones(4, dtype=torch.bool)
            outside[rows] = False
            assert not acc[:, outside].any()


def _model(shape=(1, 8, 8), classes: int = 10, n: int = 32):
    g = torch.Generator().manual_seed(0)
    calib = torch.rand(64, *shape, generator=g)
    model, _ = convert(build_float_net("cnn", shape, classes, seed=0), calib, parse_scheme("uint8"))
    x = torch.rand(n, *shape, generator=g)
    return model, quantize_input(model, x), torch.randint(0, classes, (n,), generator=g)


@pytest.fixture(scope="module")
def cnn():
    """A uint8 cnn on 8x8 inputs (conv 0, conv 3, dense 7) with 32 raw samples and labels."""
    with torch_threads(1):
        return _model()


def _linear(model) -> set[int]:
    return {i for i, layer in enumerate(model.layers) if isinstance(layer, LINEAR)}


@pytest.mark.parametrize("policy", [None, PartialPolicy(0.0, 0.5)])
def test_backward_per_sample_gradients_sum_to_the_int32_ones(cnn, policy):
    model, q, y = cnn
    trained, bias_only = _linear(model), frozenset({0})
    fmts = {i: error_format() for i in range(len(model.layers) + 1)}
    batch = backward_uint8(model, q[:8], y[:8], trained, None, fmts, policy, {}, bias_only)
    each = backward_uint8(model, q[:8], y[:8], trained, None, fmts, policy, {}, bias_only, per_sample=True)
    assert not batch.weight_samples and not batch.bias_samples
    assert set(each.weight_samples) == set(batch.weight) == {3, 7} and set(each.bias_samples) == trained
    for i, (acc, scale) in batch.weight.items():
        assert torch.equal(each.weight_samples[i][0].sum(0), acc) and each.weight_samples[i][1] == scale
        assert torch.equal(each.weight[i][0], acc)
    for i, (acc, scale) in batch.bias.items():
        assert torch.equal(each.bias_samples[i][0].sum(0), acc) and each.bias_samples[i][1] == scale
    assert each.macs_backward == batch.macs_backward and each.e_max == batch.e_max
    assert all(torch.equal(each.rows[i], batch.rows[i]) and torch.equal(each.kept[i], batch.kept[i]) for i in trained)
    if policy is None:  # without the running maximum each sample's slice is its own backward
        for s in range(8):
            alone = backward_uint8(model, q[s:s + 1], y[s:s + 1], trained, None, fmts, None, {}, bias_only)
            assert all(torch.equal(each.weight_samples[i][0][s], alone.weight[i][0]) for i in alone.weight)
            assert all(torch.equal(each.bias_samples[i][0][s], alone.bias[i][0]) for i in alone.bias)


def test_conv1d_per_sample_gradients():
    model, q, y = _model(shape=(3, 20), classes=4, n=6)
    trained = _linear(model)
    batch = backward_uint8(model, q, y, trained)
    each = backward_uint8(model, q, y, trained, per_sample=True)
    assert any(isinstance(model.layers[i], Conv1d) for i in trained)
    assert all(torch.equal(each.weight_samples[i][0].sum(0), batch.weight[i][0]) for i in trained)


# -- the accumulated gradient in the trainer ----------------------------------------------------------------


def test_int16_gradient_is_within_the_block_float_bound_of_the_int32_one(cnn):
    """Bound, per row (weight row, conv filter, bias vector) of a mini-batch of ``B`` samples. Let ``S_b``
    be the exact partial sums and ``P`` the largest ``|S_b|`` of the row over ``b = 1..B`` (the final sum
    included), ``x_b`` the exponent after sample ``b`` and ``X = x_B``. Step ``b`` rounds
    ``t_b = S_b + E_{b-1}`` at ``x_b``, an error of at most ``2**(x_b - 1)`` (none at ``x_b = 0``), so the
    final error is ``|E_B| <= sum_b 2**(x_b - 1) <= B 2**(X - 1)``. If ``X > 0``, at the step that first
    raised the exponent to ``X`` some ``|t| >= 32767.5 * 2**(X - 1)`` (``X - 1`` did not fit) while
    ``|t| <= P + (B - 1) 2**(X - 2)``; hence ``2**(X - 1) <= P / (32767.5 - (B - 1) / 2)`` and

        |int16 - int32| <= B P / (32767.5 - (B - 1) / 2)   (< 1.0002 B 2**-15 P for B = 8),

    the same in real units after both are multiplied by the gradient scale. (Relative to the final sum
    alone there is no bound: partial sums that cancel leave the exponent raised.)"""
    model, q, y = cnn
    trained = _linear(model)
    fmts = {i: error_format() for i in range(len(model.layers) + 1)}
    b = 8
    raised = rounded = 0
    for start in range(0, 32, b):
        xb, yb = q[start:start + b], y[start:start + b]
        trace = forward_int(model, xb, overflow="wrap", trace=True)
        g32 = backward_uint8(model, xb, yb, trained, trace, fmts)
        g16 = backward_uint8(model, xb, yb, trained, trace, fmts, per_sample=True)
        w32, b32 = accumulated_grads(g32)
        w16, b16 = accumulated_grads(g16, "int16")
        for per_sample, real32, real16, one_row in [(g16.weight_samples, w32, w16, False),
                                                      (g16.bias_samples, b32, b16, True)]:
            for i, (acc, scale) in per_sample.items():
                rows = acc.reshape(b, 1, -1) if one_row else acc.reshape(b, acc.shape[1], -1)
                partial = rows.cumsum(0)
                p = partial.abs().amax(dim=(0, 2))  # [rows]
                value, x = bfp_sum(acc, one_row)
                err = (value.reshape(rows.shape[1:]) - partial[-1]).abs().amax(1)
                bound = [Fraction(b) * int(pr) / (Fraction(65535, 2) - Fraction(b - 1, 2)) for pr in p.tolist()]
                assert all(e <= lim for e, lim in zip(err.tolist(), bound, strict=True))
                tight = [b * (1 << (xr - 1)) if xr else 0 for xr in x.tolist()]
                assert all(e <= lim for e, lim in zip(err.tolist(), tight, strict=True))
                # in real units: the dequantized gradients the optimizer sees, relative to the row's largest |S_b|
                real_err = (real16[i] - real32[i]).reshape(rows.shape[1:]).abs().amax(1)
                assert bool((real_err <= 1.0002 * b * 2.0**-15 * p.to(torch.float64) * scale).all())
                assert torch.equal(real16[i], value.to(torch.float64) * scale)
                raised += int((x > 0).sum())
                rounded += int((err > 0).sum())
    assert raised > 0 and rounded > 0  # the test exercised rounding, not only exact sums


def test_int16_is_bit_identical_to_int32_when_every_partial_sum_fits(cnn):
    # the dense layer 7 trained from the loss head with the error range [-8, 8]: every centred error is at
    # most round(1 / (16 / 255)) = 16 in magnitude (softmax - onehot lies in (-1, 1)), every centred input at
    # most 255, so a sample's weight gradient is at most 16 * 255 = 4080 and a sum of 8 at most 32640 <= 32767;
    # the bias gradients at most 8 * 16. Nothing is rounded, so both buffers hold the same integers.
    model, q, y = cnn
    kw = dict(precision="uint8", params="last", error_range=8.0, batch=8, lam_min=0.0, lam_max=0.6,
              optimizer=Optimizer("standardize", lr=0.05))
    t32, t16 = FQTTrainer(**kw), FQTTrainer(**kw, grad_buffer="int16")
    s32, s16 = t32.init(model), t16.init(model)
    fmts = {i: error_format(-8.0, 8.0) for i in range(len(model.layers) + 1)}
    for step in range(8):
        idx = torch.arange(step * 8, step * 8 + 8) % 32
        batch = Batch(q[idx], y[idx])
        g = backward_uint8(s16.model, batch.x, batch.y, {7}, None, fmts, t16.policy, s16.e_max, per_sample=True)
        assert int(bfp_sum(g.weight_samples[7][0])[1].max()) == 0  # the precondition, checked
        s32, i32 = t32.step(s32, batch)
        s16, i16 = t16.step(s16, batch)
        assert i32.metrics == {**i16.metrics, "backward_s": i32.metrics["backward_s"]}
    for a, b in zip(s32.model.layers, s16.model.layers, strict=True):
        if isinstance(a, LINEAR):
            assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
            assert a.w_fmt == b.w_fmt and a.b_fmt == b.b_fmt
    assert not torch.equal(s16.model.layers[7].weight, model.layers[7].weight)  # it did train
    assert torch.equal(s32.opt[7].mean, s16.opt[7].mean) and s32.e_max == s16.e_max


def test_int16_trainer_trains_and_reports_its_own_memory(cnn):
    model, q, y = cnn
    tr = FQTTrainer("uint8", "last:2", optimizer=Optimizer("sgd", lr=0.05), batch=8, grad_buffer="int16")
    state = tr.init(model)
    names = tr.writes(model)
    expected = training_memory(model, names, "uint8", accumulate=8, optimizer="sgd", grad_buffer="int16")
    int32 = training_memory(model, names, "uint8", accumulate=8, optimizer="sgd")
    assert state.memory["train_ram_bytes"] == expected["train_ram_bytes"] < int32["train_ram_bytes"]
    assert tr.memory(model)["buffers"] == expected["buffers"]
    assert any(b["name"] == "7.weight.grad_exp" and b["nbytes"] == 10 for b in expected["buffers"])
    state, info = tr.step(state, Batch(q[:8], y[:8]))
    assert info.ledger.train_ram_bytes == expected["train_ram_bytes"]
    assert info.ledger.weight_writes > 0
    # a short step (fewer samples than the buffer holds) still goes through the block-float buffer
    state, info = tr.step(state, Batch(q[8:11], y[8:11]))
    assert info.ledger.forward_passes == 3


# -- settings and refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"grad_buffer": "int8", "batch": 8}, r"grad_buffer 'int8'.*'int32', 'int16'"),
    ({"grad_buffer": "int16", "batch": 8, "precision": "mixed"}, r"grad_buffer 'int16'.*precision 'uint8'.*'mixed'"),
    ({"grad_buffer": "int16", "batch": 8, "precision": "float32"}, r"precision 'uint8'.*'float32'"),
    ({"grad_buffer": "int16"}, r"grad_buffer 'int16'.*batch 1.*'int32'"),
])
def test_bad_grad_buffer_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FQTTrainer(**kwargs)


def test_good_grad_buffer_settings():
    assert FQTTrainer().grad_buffer == "int32"
    assert FQTTrainer(batch=2, grad_buffer="int16").grad_buffer == "int16"
    assert FQTTrainer(batch=2, grad_buffer="int16").name == "fqt-uint8-full-int16"
    assert FQTTrainer(batch=2).name == "fqt-uint8-full"
    assert FQTTrainer("mixed", batch=8, grad_buffer="int32").grad_buffer == "int32"


def test_accumulated_grads_refuses_what_it_cannot_do(cnn):
    model, q, y = cnn
    g = backward_uint8(model, q[:4], y[:4], {7})
    with pytest.raises(ValueError, match="per_sample=True"):
        accumulated_grads(g, "int16")
    with pytest.raises(ValueError, match="grad_buffer 'int8'"):
        accumulated_grads(g, "int8")


def test_the_c_export_refuses_the_int16_buffer(cnn, tmp_path):
    model, _, _ = cnn
    sgd = Optimizer("sgd", lr=0.05)
    check_exportable(model, FQTTrainer(optimizer=sgd, batch=8))  # the int32 buffer exports
    trainer = FQTTrainer(optimizer=sgd, batch=8, grad_buffer="int16")
    with pytest.raises(NotExportable, match=r"int32.*grad_buffer 'int16'.*Python-only"):
        check_exportable(model, trainer)
    with pytest.raises(NotExportable, match="grad_buffer 'int16'"):
        export_fqt(model, trainer, tmp_path / "out")
    assert not (tmp_path / "out").exists()

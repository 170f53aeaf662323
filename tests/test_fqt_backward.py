"""The uint8 backward of a deployed network (``train.fqt.backward``): agreement with the float
straight-through gradients, hand-counted MACs, dynamic partial updates, refusals."""

from __future__ import annotations

import pytest
import torch

from edgetrain.model.arch import build_float_net
from edgetrain.model.convert import convert
from edgetrain.model.forward import forward_int, quantize_input
from edgetrain.model.scheme import parse_scheme
from edgetrain.train.fqt.backward import PartialPolicy, backward_uint8
from edgetrain.train.fqt.kernels import error_format
from edgetrain.train.gradients import backward_trace

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(scheme: str, shape=(1, 8, 8), classes: int = 10):
    g = torch.Generator().manual_seed(0)
    calib = torch.rand(64, *shape, generator=g)
    model, _ = convert(build_float_net("cnn", shape, classes, seed=0), calib, parse_scheme(scheme))
    x = torch.rand(16, *shape, generator=g)
    y = torch.randint(0, classes, (16,), generator=g)
    return model, quantize_input(model, x), y


@pytest.fixture(scope="module")
def cnn():
    return _model("uint8")


def _errors(model, q, y, grads, ref):
    out = {}
    for lg in ref:
        exact = lg.weight_grad().sum(0).reshape(model.layers[lg.index].weight.shape)
        mine = grads.real_weight_grad(lg.index)
        acc, scale = grads.bias[lg.index]
        out[lg.index] = (float((mine - exact).norm() / exact.norm()),
                         float((mine * exact).sum() / (mine.norm() * exact.norm())),
                         float((acc * scale - lg.bias_grad().sum(0)).norm() / lg.bias_grad().sum(0).norm()))
    return out


def test_full_backward_matches_float_trace_gradients(cnn):
    model, q, y = cnn
    trace = forward_int(model, q, trace=True)
    _, ref = backward_trace(model, q, y, trace, dtype=torch.float64)
    g = backward_uint8(model, q, y, {0, 3, 7}, trace)
    err = _errors(model, q, y, g, ref)
    # only the uint8 error rounding separates them; errors shrink going down, so the fixed [-1, 1]
    # range resolves the lower layers' errors more coarsely (measured 0.014, 0.055, 0.26)
    assert err[7][0] < 0.05 and err[7][2] < 0.05
    assert err[3][0] < 0.15 and err[3][2] < 0.15
    assert err[0][1] > 0.9
    assert all(int(r.numel()) == model.layers[i].weight.shape[0] for i, r in g.rows.items())
    # a narrower error range for the lower layers' inputs resolves them better
    narrow = {i: error_format(-0.05, 0.05) for i in range(1, 7)}
    fine = _errors(model, q, y, backward_uint8(model, q, y, {0, 3, 7}, trace, e_fmts=narrow), ref)
    assert fine[0][0] < err[0][0] and fine[0][1] > err[0][1]


def test_macs_hand_counted(cnn):
    model, q, y = cnn
    b = q.shape[0]
    # conv 0: 8 filters x 1*3*3 fan-in x 64 positions; conv 3: 16 x 8*3*3 x 16; dense 7: 10 x 64
    w0, w3, w7 = 8 * 9 * 64, 16 * 72 * 16, 10 * 64
    full = backward_uint8(model, q, y, {0, 3, 7})
    assert full.macs_backward == b * (w0 + 2 * w3 + 2 * w7)  # weight grads everywhere, input grads above 0
    last = backward_uint8(model, q, y, {7})
    assert last.macs_backward == b * w7 and set(last.weight) == {7}


def test_dynamic_partial_update_prunes_rows_and_work(cnn):
    model, q, y = cnn
    full = backward_uint8(model, q, y, {3, 7})
    part = backward_uint8(model, q, y, {3, 7}, policy=PartialPolicy(0.1, 0.1))
    # every sample keeps max(floor(0.1 N), 1) = 1 structure of each layer
    assert all(k.tolist() == [1] * q.shape[0] for k in part.kept.values())
    for i, rows in part.rows.items():
        acc, _ = part.weight[i]
        others = torch.ones(acc.shape[0], dtype=torch.bool)
        others[rows] = False
        assert int(acc[others].abs().sum()) == 0 and 1 <= rows.numel() <= q.shape[0]
    # hand count: each sample does 1 filter of conv 3 (72 x 16 positions; weight gradient only, it is
    # the lowest trained layer) and 1 dense row (64 inputs; weight and input gradients)
    assert part.macs_backward == q.shape[0] * (72 * 16 + 2 * 64)
    assert part.macs_backward <= 0.2 * full.macs_backward
    assert part.e_max[7] > 0 and part.e_max[3] > 0


def test_a_batch_is_the_sum_of_its_samples_one_after_another(cnn):
    """Selection is per sample and the running maximum advances sample by sample, so a batch's
    gradients, MACs and maxima equal those of the samples run one at a time and summed."""
    model, q, y = cnn
    policy = PartialPolicy(0.1, 0.6)
    batch = backward_uint8(model, q, y, {3, 7}, policy=policy)
    e_max: dict[int, float] = {}
    acc = {i: torch.zeros_like(batch.weight[i][0]) for i in (3, 7)}
    bias = {i: torch.zeros_like(batch.bias[i][0]) for i in (3, 7)}
    macs = 0
    for b in range(q.shape[0]):
        one = backward_uint8(model, q[b:b + 1], y[b:b + 1], {3, 7}, policy=policy, e_max=e_max)
        e_max = one.e_max
        macs += one.macs_backward
        for i in (3, 7):
            acc[i] += one.weight[i][0]
            bias[i] += one.bias[i][0]
            assert int(one.kept[i][0]) == int(batch.kept[i][b])
    assert macs == batch.macs_backward and e_max == batch.e_max
    for i in (3, 7):
        assert torch.equal(acc[i], batch.weight[i][0]) and torch.equal(bias[i], batch.bias[i][0])


def test_dynamic_rate_follows_the_error_level(cnn):
    model, q, y = cnn
    first = backward_uint8(model, q[:1], y[:1], {7}, policy=PartialPolicy(0.1, 1.0))
    # the first sample sets e_max to its own level: ratio 1, every row kept
    assert int(first.rows[7].numel()) == 10
    # a running maximum twice as large halves the ratio: floor((0.1 + 0.5 * 0.9) * 10) = 5
    again = backward_uint8(model, q[:1], y[:1], {7}, policy=PartialPolicy(0.1, 1.0),
                           e_max={7: 2 * first.e_max[7]})
    assert int(again.rows[7].numel()) == 5 and again.kept[7].tolist() == [5]


def test_error_ranges_are_observed_before_quantization(cnn):
    model, q, y = cnn
    g = backward_uint8(model, q, y, {0, 3, 7})
    n = len(model.layers)
    assert set(g.e_absmax) == {n, 7, 3}  # the loss head and the two layers that pass an error down
    assert 0 < g.e_absmax[n] <= 1.0
    assert all(v > 0 for v in g.e_absmax.values())


def test_refusals():
    model, q, y = _model("int8")
    with pytest.raises(ValueError, match="per-tensor affine"):
        backward_uint8(model, q, y, {7})
    model, q, y = _model("uint8")
    with pytest.raises(ValueError, match="no weights"):
        backward_uint8(model, q, y, {1})
    with pytest.raises(ValueError, match="at least one"):
        backward_uint8(model, q, y, set())
    with pytest.raises(ValueError, match="lam_min"):
        PartialPolicy(0.5, 0.1)


def test_conv1d_series_model_runs_end_to_end():
    model, q, y = _model("uint8", shape=(3, 20), classes=4)
    linear = [i for i, layer in enumerate(model.layers) if layer.params]
    g = backward_uint8(model, q, y, set(linear), e_fmts={len(model.layers): error_format(-1.0, 1.0)})
    assert set(g.weight) == set(linear)
    assert all(acc.dtype == torch.int64 for acc, _ in g.weight.values())

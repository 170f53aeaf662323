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
    assert {i: int(r.numel()) for i, r in part.rows.items()} == {3: 1, 7: 1}  # max(floor(0.1 N), 1)
    for i, rows in part.rows.items():
        acc, _ = part.weight[i]
        others = torch.ones(acc.shape[0], dtype=torch.bool)
        others[rows] = False
        assert int(acc[others].abs().sum()) == 0
        # the kept dense rows are the ones with the largest error, computed exactly as in the full pass
    torch.testing.assert_close(part.weight[7][0][part.rows[7]], full.weight[7][0][part.rows[7]])
    assert part.macs_backward <= 0.2 * full.macs_backward
    assert part.e_max[7] > 0 and part.e_max[3] > 0


def test_dynamic_rate_follows_the_error_level(cnn):
    model, q, y = cnn
    first = backward_uint8(model, q, y, {7}, policy=PartialPolicy(0.1, 1.0))
    # the first pass sets e_max to its own level: ratio 1, every row kept
    assert int(first.rows[7].numel()) == 10
    # a running maximum twice as large halves the ratio: floor((0.1 + 0.5 * 0.9) * 10) = 5
    again = backward_uint8(model, q, y, {7}, policy=PartialPolicy(0.1, 1.0), e_max={7: 2 * first.e_max[7]})
    assert int(again.rows[7].numel()) == 5


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

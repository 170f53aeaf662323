"""FQT optimizers (``train.fqt.optimizer``): standardized, SGD (with momentum) and QAS updates checked
against hand-computed values, refused settings, and the bytes of optimizer state."""

from __future__ import annotations

import math

import pytest
import torch

from edgetrain.cost.training_memory import training_memory
from edgetrain.model.arch import build_float_net
from edgetrain.model.convert import convert
from edgetrain.train.fqt.optimizer import LayerOptState, Optimizer, opt_init, opt_state_bytes, opt_update

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EPS = 1e-12  # the default Optimizer.eps


def _t(rows: list[list[float]] | list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def _idx(*rows: int) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.int64)


def _mean_var(row: list[float]) -> tuple[float, float]:
    """Mean and population variance of a list, by hand."""
    m = sum(row) / len(row)
    return m, sum((v - m) ** 2 for v in row) / len(row)


def _approx(expected):
    """Hand value up to a few ulps: torch reduces the row's mean and variance in its own order."""
    return pytest.approx(expected, rel=1e-13, abs=1e-300)


def _std_step(lr: float, row: list[float], mean: float, var: float, eps: float = EPS) -> list[float]:
    sigma = math.sqrt(var + eps)
    return [-lr * (v - mean) / sigma for v in row]


# -- standardize -------------------------------------------------------------------------------------


def test_standardize_first_update_uses_each_rows_own_statistics():
    opt = Optimizer("standardize", lr=0.5, stat_rate=0.25)
    state = opt_init(opt, (3, 4))
    g = [[1.0, 2.0, 3.0, 6.0], [5.0, -5.0, 5.0, -5.0], [0.5, 0.0, -0.5, 4.0]]
    gb = [0.75, -2.0, 3.0]
    dw, db, new = opt_update(opt, state, _t(g), _t(gb), _idx(0, 2))
    assert dw.dtype == torch.float64 and db.dtype == torch.float64
    for r in (0, 2):
        m, v = _mean_var(g[r])
        assert dw[r].tolist() == _approx(_std_step(0.5, g[r], m, v))
        # the bias step is bounded by lr: g_b / max(sigma, |g_b|)
        assert db[r].item() == _approx(-0.5 * gb[r] / max(math.sqrt(v + EPS), abs(gb[r])))
        assert (new.mean[r].item(), new.var[r].item()) == _approx((m, v)) and bool(new.seen[r])
    # row 1 was not selected: no step, its statistics keep their initial values
    assert dw[1].tolist() == [0.0] * 4 and db[1].item() == 0.0
    assert new.mean[1].item() == 0.0 and new.var[1].item() == 1.0 and not bool(new.seen[1])
    # hand numbers for row 0: mean 3, variance (4 + 1 + 0 + 9) / 4 = 3.5
    assert _mean_var(g[0]) == (3.0, 3.5)
    # the state passed in is left as it was
    assert state.mean.tolist() == [0.0] * 3 and state.var.tolist() == [1.0] * 3 and not bool(state.seen.any())


def test_standardize_second_update_uses_moving_statistics():
    r = 0.25
    opt = Optimizer("standardize", lr=0.5, stat_rate=r)
    g1 = [[1.0, 2.0, 3.0, 6.0], [5.0, -5.0, 5.0, -5.0], [0.5, 0.0, -0.5, 4.0]]
    g2 = [[2.0, 2.0, -2.0, 0.0], [1.0, 2.0, 1.0, 4.0], [9.0, 9.0, 9.0, 9.0]]
    gb2 = [1.0, -1.0, 2.0]
    _, _, s1 = opt_update(opt, opt_init(opt, (3, 4)), _t(g1), _t([0.0, 0.0, 0.0]), _idx(0, 2))
    # second update on rows 0 and 1: row 0 has been seen (moving averages), row 1 has not (own stats)
    dw, db, s2 = opt_update(opt, s1, _t(g2), _t(gb2), _idx(0, 1))
    m1, v1 = _mean_var(g1[0])
    m_now, v_now = _mean_var(g2[0])
    mean0, var0 = (1 - r) * m1 + r * m_now, (1 - r) * v1 + r * v_now
    assert dw[0].tolist() == _approx(_std_step(0.5, g2[0], mean0, var0))
    assert db[0].item() == _approx(-0.5 * gb2[0] / math.sqrt(var0 + EPS))
    assert (s2.mean[0].item(), s2.var[0].item()) == _approx((mean0, var0))
    m_1, v_1 = _mean_var(g2[1])
    assert dw[1].tolist() == _approx(_std_step(0.5, g2[1], m_1, v_1))
    assert (s2.mean[1].item(), s2.var[1].item()) == _approx((m_1, v_1)) and bool(s2.seen.all())
    # row 2 was left out this time: zero step, its statistics from the first update do not move
    assert dw[2].tolist() == [0.0] * 4 and db[2].item() == 0.0
    assert (s2.mean[2].item(), s2.var[2].item()) == (s1.mean[2].item(), s1.var[2].item()) == _approx(_mean_var(g1[2]))
    # the moving average differs from the row's own statistics (the test would notice a reset)
    assert dw[0].tolist() != _approx(_std_step(0.5, g2[0], m_now, v_now))


def test_standardize_takes_conv_filters_as_rows():
    opt = Optimizer("standardize", lr=0.1)
    g = torch.arange(16, dtype=torch.float64).reshape(2, 2, 2, 2) ** 2
    dw, db, st = opt_update(opt, opt_init(opt, (2, 2, 2, 2)), g, _t([1.0, 2.0]), _idx(0, 1))
    assert dw.shape == (2, 2, 2, 2)
    for r in range(2):
        row = g[r].reshape(-1).tolist()
        m, v = _mean_var(row)
        assert dw[r].reshape(-1).tolist() == _approx(_std_step(0.1, row, m, v))
        assert (st.mean[r].item(), st.var[r].item()) == _approx((m, v))
        assert db[r].item() == _approx(-0.1 * (r + 1) / math.sqrt(v + EPS))


def test_standardize_bias_only_scales_by_the_kept_biases_spread():
    opt = Optimizer("standardize", lr=0.2)
    state = opt_init(opt, (4, 3))
    gb = [1.0, -3.0, 7.0, 2.0]
    dw, db, new = opt_update(opt, state, None, _t(gb), _idx(0, 1, 3))
    assert dw is None
    kept = [1.0, -3.0, 2.0]
    sigma = math.sqrt(sum(v * v for v in kept) / 3 - (sum(kept) / 3) ** 2)
    expect = [-0.2 * v / (sigma + math.sqrt(EPS)) for v in kept]
    assert [db[i].item() for i in (0, 1, 3)] == _approx(expect)
    assert db[2].item() == 0.0
    # no weight row, no statistics taken
    assert torch.equal(new.mean, state.mean) and torch.equal(new.var, state.var) and not bool(new.seen.any())
    # one kept bias: it moves by (about) lr in the descent direction
    _, one, _ = opt_update(opt, state, None, _t(gb), _idx(2))
    assert one[2].item() == pytest.approx(-0.2, rel=1e-6) and one.abs().sum().item() == pytest.approx(0.2, rel=1e-6)


def test_no_rows_means_no_step_and_the_same_state():
    for opt in (Optimizer("standardize"), Optimizer("sgd", momentum=0.5)):
        state = opt_init(opt, (3, 2))
        dw, db, new = opt_update(opt, state, torch.ones(3, 2), torch.ones(3), _idx())
        assert new is state and dw.abs().sum().item() == 0.0 and db.abs().sum().item() == 0.0


# -- sgd, momentum, qas -------------------------------------------------------------------------------


def test_sgd_without_momentum():
    opt = Optimizer("sgd", lr=0.25)
    state = opt_init(opt, (3, 2))
    assert state.velocity_w is None and state.velocity_b is None
    g = [[1.0, -2.0], [4.0, 0.5], [-8.0, 3.0]]
    dw, db, new = opt_update(opt, state, _t(g), _t([2.0, -4.0, 1.0]), _idx(0, 2))
    assert dw.tolist() == [[-0.25, 0.5], [0.0, 0.0], [2.0, -0.75]]
    assert db.tolist() == [-0.5, 0.0, -0.25]
    assert new.velocity_w is None and new.mean is None
    # bias only
    dw, db, _ = opt_update(opt, state, None, _t([2.0, -4.0, 1.0]), _idx(1))
    assert dw is None and db.tolist() == [0.0, 1.0, 0.0]


def test_sgd_momentum_velocity_recurrence_over_three_updates():
    lr, mu = 0.5, 0.75
    opt = Optimizer("sgd", lr=lr, momentum=mu)
    state = opt_init(opt, (2, 2))
    assert state.velocity_w.tolist() == [[0.0, 0.0], [0.0, 0.0]] and state.velocity_b.tolist() == [0.0, 0.0]
    grads = [([[1.0, 2.0], [3.0, -4.0]], [1.0, -1.0], (0, 1)),
             ([[2.0, 2.0], [-1.0, 8.0]], [4.0, 2.0], (1,)),  # row 0 not updated: its velocity is kept
             ([[-4.0, 0.0], [0.5, 1.0]], [-2.0, 0.5], (0, 1))]
    vw = [[0.0, 0.0], [0.0, 0.0]]
    vb = [0.0, 0.0]
    for g, gb, rows in grads:
        dw, db, state = opt_update(opt, state, _t(g), _t(gb), _idx(*rows))
        exp_dw = [[0.0, 0.0], [0.0, 0.0]]
        exp_db = [0.0, 0.0]
        for r in rows:
            vw[r] = [mu * v + x for v, x in zip(vw[r], g[r], strict=True)]
            vb[r] = mu * vb[r] + gb[r]
            exp_dw[r] = [-lr * v for v in vw[r]]
            exp_db[r] = -lr * vb[r]
        assert dw.tolist() == exp_dw and db.tolist() == exp_db
        assert state.velocity_w.tolist() == vw and state.velocity_b.tolist() == vb
    # by hand: row 0's weight velocity (1, 2) -> kept -> 0.75 * (1, 2) + (-4, 0) = (-3.25, 1.5)
    assert vw[0] == [-3.25, 1.5]
    # row 1's bias velocity: -1 -> 0.75 * -1 + 2 = 1.25 -> 0.75 * 1.25 + 0.5 = 1.4375
    assert vb[1] == 1.4375


def test_momentum_does_not_write_the_state_passed_in():
    opt = Optimizer("sgd", lr=0.1, momentum=0.9)
    state = opt_init(opt, (2, 3))
    opt_update(opt, state, torch.ones(2, 3), torch.ones(2), _idx(0, 1))
    assert state.velocity_w.abs().sum().item() == 0.0 and state.velocity_b.abs().sum().item() == 0.0


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_qas_returns_the_sgd_step(momentum):
    g = torch.tensor([[0.3, -1.2, 2.0], [0.7, 0.1, -0.4]], dtype=torch.float64)
    gb = torch.tensor([0.2, -0.6], dtype=torch.float64)
    sgd, qas = Optimizer("sgd", lr=0.3, momentum=momentum), Optimizer("qas", lr=0.3, momentum=momentum)
    s_sgd, s_qas = opt_init(sgd, (2, 3)), opt_init(qas, (2, 3))
    for rows in (_idx(0, 1), _idx(1), _idx(0, 1)):
        a_w, a_b, s_sgd = opt_update(sgd, s_sgd, g, gb, rows)
        b_w, b_b, s_qas = opt_update(qas, s_qas, g, gb, rows)
        assert torch.equal(a_w, b_w) and torch.equal(a_b, b_b)
        assert a_w.abs().sum().item() > 0
    if not momentum:
        assert torch.equal(a_w, -0.3 * g) and torch.equal(a_b, -0.3 * gb)


# -- settings --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "names"), [
    ({"kind": "adam"}, "optimizer"),
    ({"lr": 0.0}, "learning rate"),
    ({"lr": -0.1}, "learning rate"),
    ({"lr": float("nan")}, "learning rate"),
    ({"lr": float("inf")}, "learning rate"),
    ({"kind": "sgd", "momentum": 1.0}, "momentum"),
    ({"kind": "sgd", "momentum": -0.1}, "momentum"),
    ({"kind": "sgd", "momentum": float("nan")}, "momentum"),
    ({"kind": "standardize", "momentum": 0.9}, "momentum"),
    ({"stat_rate": 0.0}, "stat_rate"),
    ({"stat_rate": 1.5}, "stat_rate"),
    ({"stat_rate": float("nan")}, "stat_rate"),
])
def test_bad_settings_are_refused_by_name(kwargs, names):
    with pytest.raises(ValueError, match=names):
        Optimizer(**kwargs)


def test_edge_settings_are_accepted():
    Optimizer("sgd", momentum=0.0)
    Optimizer("qas", momentum=0.999)
    Optimizer("standardize", stat_rate=1.0)
    Optimizer("sgd", lr=1e-9)


# -- state bytes ----------------------------------------------------------------------------------------


def test_opt_state_bytes_hand_counted():
    conv, dense = (16, 8, 3, 3), (10, 64)
    std, sgd, mom, qas = Optimizer("standardize"), Optimizer("sgd"), Optimizer("sgd", momentum=0.9), \
        Optimizer("qas", momentum=0.5)
    assert opt_state_bytes(std, conv) == 2 * 4 * 16 == 128  # mean and variance per filter
    assert opt_state_bytes(std, dense) == 80
    assert opt_state_bytes(std, dense, bias_only=True) == 0
    assert opt_state_bytes(sgd, conv) == 0 and opt_state_bytes(Optimizer("qas"), dense) == 0
    assert opt_state_bytes(mom, conv) == 4 * (16 + 16 * 8 * 9) == 4672  # a velocity per weight and per bias
    assert opt_state_bytes(mom, dense) == 4 * (10 + 640) == 2600
    assert opt_state_bytes(mom, dense, bias_only=True) == 40
    assert opt_state_bytes(qas, dense) == 2600


@pytest.mark.parametrize(("opt", "names", "expected"), [
    (Optimizer("standardize"), ("3.weight", "3.bias", "7.weight", "7.bias"), 128 + 80),
    (Optimizer("standardize"), ("3.bias", "7.weight", "7.bias"), 80),
    (Optimizer("sgd", momentum=0.9), ("3.weight", "3.bias", "7.weight", "7.bias"), 4672 + 2600),
    (Optimizer("qas", momentum=0.5), ("3.bias", "7.weight", "7.bias"), 4 * 16 + 2600),
    (Optimizer("sgd"), ("7.weight", "7.bias"), 0),
])
def test_opt_state_bytes_match_the_training_memory_plan(opt, names, expected):
    """What the optimizer keeps is what ``cost.training_memory`` budgets for it (besides ``e_max``)."""
    calib = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    model, _ = convert(build_float_net("cnn", (1, 8, 8), 10, seed=0), calib, "uint8")
    mem = training_memory(model, names, "uint8", optimizer=opt.kind, momentum=opt.momentum > 0)
    planned = sum(b["nbytes"] for b in mem["buffers"] if b["kind"] == "optimizer" and not b["name"].endswith("e_max"))
    layers = sorted({int(n.split(".")[0]) for n in names})
    counted = sum(opt_state_bytes(opt, tuple(model.layers[i].weight.shape), bias_only=f"{i}.weight" not in names)
                  for i in layers)
    assert planned == counted == expected


def test_layer_state_fields_per_kind():
    assert isinstance(opt_init(Optimizer("standardize"), (5, 2)), LayerOptState)
    s = opt_init(Optimizer("standardize"), (5, 2))
    assert s.mean.shape == s.var.shape == s.seen.shape == (5,) and s.velocity_w is None
    m = opt_init(Optimizer("qas", momentum=0.1), (5, 2, 3))
    assert m.velocity_w.shape == (5, 2, 3) and m.velocity_b.shape == (5,) and m.mean is None


def test_standardize_bias_step_is_bounded_when_a_rows_weight_gradient_is_constant():
    """A dense row whose input was all zeros has a constant (zero) weight gradient: variance 0. Its
    bias gradient is not zero; the step must stay at lr, not lr / sqrt(eps)."""
    opt = Optimizer("standardize", lr=0.1)
    dw, db, _ = opt_update(opt, opt_init(opt, (2, 3)), _t([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]), _t([0.7, -0.2]),
                           _idx(0, 1))
    assert dw[0].tolist() == [0.0, 0.0, 0.0]
    assert db[0].item() == pytest.approx(-0.1)
    assert abs(db[1].item()) < 0.1  # sigma of row 1 (0.816) exceeds |g_b| = 0.2: -0.1 * 0.2 / 0.816


def test_eps_must_be_positive():
    for eps in (0.0, -1e-9, float("nan")):
        with pytest.raises(ValueError, match="eps"):
            Optimizer(eps=eps)

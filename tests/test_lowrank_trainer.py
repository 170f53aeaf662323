"""Tests of ``NVMTrainer``: online training of a deployed 8-bit network whose weights sit in
non-volatile memory (inference-only, bias-only, SGD, SGD with an accumulation buffer, and low-rank
Kronecker-sum accumulation), checked against hand-computed updates from ``backward_trace``; and of
``cost.writes.add_writes``."""

from __future__ import annotations

import math
import re

import pytest
import torch

from edgetrain.cost.macs import inference_macs, training_ledger
from edgetrain.cost.writes import add_writes, advance, init_writes, record_writes, total_writes
from edgetrain.data import load_dataset
from edgetrain.model import DeployedModel
from edgetrain.model.arch import build_float_net
from edgetrain.model.convert import convert
from edgetrain.model.forward import forward_int, quantize_input
from edgetrain.model.layers import Flatten
from edgetrain.model.pretrain import train_float
from edgetrain.quant import scale_of
from edgetrain.threads import torch_threads
from edgetrain.train.gradients import backward_trace
from edgetrain.train.lowrank.kronecker import ksum_bytes, ksum_matrix
from edgetrain.train.lowrank.trainer import NVMTrainer
from edgetrain.train.protocol import Batch, Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_SAMPLES = 40


# -- fixtures ------------------------------------------------------------------------------------


def _deploy(arch: str, ds) -> DeployedModel:
    """``arch`` pre-trained for one short epoch (about half right, so predictions vary) in int8."""
    net = build_float_net(arch, (1, 8, 8), 10, seed=0)
    train_float(net, ds.train.x[:512], ds.train.y[:512], epochs=1, seed=0)
    return convert(net, ds.train.x[:128], "int8")[0]


@pytest.fixture(scope="module")
def digits():
    with torch_threads(1):  # module fixtures start before the per-test one-thread fixture
        ds = load_dataset("digits", seed=0)
        return ds, _deploy("cnn", ds), _deploy("mlp", ds)


@pytest.fixture(scope="module")
def cnn(digits) -> tuple[DeployedModel, torch.Tensor, torch.Tensor]:
    """The cnn (conv 0, conv 3, dense 7) with a few dozen raw input samples and their labels."""
    ds, model, _ = digits
    return model, quantize_input(model, ds.train.x[-N_SAMPLES:]), ds.train.y[-N_SAMPLES:]


@pytest.fixture(scope="module")
def mlp(digits) -> tuple[DeployedModel, torch.Tensor, torch.Tensor]:
    """The mlp (dense 1, 3, 5) with raw samples."""
    ds, _, model = digits
    return model, quantize_input(model, ds.train.x[-N_SAMPLES:]), ds.train.y[-N_SAMPLES:]


# -- helpers -------------------------------------------------------------------------------------


def _run(trainer: NVMTrainer, model: DeployedModel, q: torch.Tensor, y: torch.Tensor, steps: int,
         seed: int = 0, state=None):
    """``steps`` one-sample steps on samples ``0..steps-1``; returns the state and the StepInfos."""
    state = trainer.init(model, seed) if state is None else state
    infos = []
    for i in range(steps):
        state, info = trainer.step(state, Batch(q[i:i + 1], y[i:i + 1]))
        infos.append(info)
    return state, infos


def _weights(model: DeployedModel) -> dict[str, torch.Tensor]:
    return {n: t for n, t, _ in model.params() if n.endswith(".weight")}


def _biases(model: DeployedModel) -> dict[str, torch.Tensor]:
    return {n: t for n, t, _ in model.params() if n.endswith(".bias")}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _lsb(layer) -> torch.Tensor:
    """One weight LSB per output row, ``[n, 1]`` float64."""
    return scale_of(layer.w_fmt, 2).reshape(-1, 1)


def _round(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest, ties up (the trainer's ``nearest``), as int64."""
    return torch.floor(x + 0.5).to(torch.int64)


def _clip(layer, raw: torch.Tensor) -> torch.Tensor:
    return raw.clamp(layer.w_fmt.raw_min, layer.w_fmt.raw_max)


def _factors(model: DeployedModel, q1: torch.Tensor, y1: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per dense/conv layer: ``(dz [n, P], a [m, P])`` in float64 for one sample."""
    _, grads = backward_trace(model, q1, y1)
    return {lg.index: (lg.dz[0].to(torch.float64), lg.a[0].to(torch.float64)) for lg in grads}


def _grad(model: DeployedModel, q1: torch.Tensor, y1: torch.Tensor) -> dict[int, torch.Tensor]:
    """Per layer: the exact weight gradient ``dz a^T`` ``[n, m]`` (float64) of one sample."""
    return {i: dz @ a.T for i, (dz, a) in _factors(model, q1, y1).items()}


def _grad32(model: DeployedModel, q1: torch.Tensor, y1: torch.Tensor) -> dict[int, torch.Tensor]:
    """Per layer: the weight gradient ``dz a^T`` of one sample as ``LayerGrad`` forms it (float32), in float64."""
    _, grads = backward_trace(model, q1, y1)
    return {lg.index: lg.weight_grad()[0].to(torch.float64) for lg in grads}


def _ksum_macs(n: int, m: int, r: int, k: int) -> int:
    """The documented MAC count of one Kronecker-sum update of ``k`` terms (trainer._ksum_macs docstring)."""
    q = r + k
    qn, qm = min(n, q), min(m, q)
    return (n * q * qn + m * q * qm + (n + m) * q * (r + k) + qn * qm * (r + k) + 4 * qn * qm * min(qn, qm)
            + (n * qn + m * qm) * (qn + r))


# -- settings ------------------------------------------------------------------------------------


def test_names() -> None:
    assert NVMTrainer("lrt-unbiased").name == "lrt-unbiased-maxnorm"
    assert NVMTrainer("lrt-biased", maxnorm=False).name == "lrt-biased"
    assert NVMTrainer("sgd", maxnorm=False).name == "sgd"
    assert NVMTrainer("sgd-accumulate").name == "sgd-accumulate-maxnorm"
    assert NVMTrainer("bias-only").name == "bias-only"
    assert NVMTrainer("bias-only", maxnorm=True).name == "bias-only"
    assert NVMTrainer("inference-only").name == "inference-only"
    assert NVMTrainer().name == "lrt-unbiased-maxnorm"
    assert isinstance(NVMTrainer("sgd"), Trainer)


@pytest.mark.parametrize("kwargs,field", [
    ({"method": "adam"}, "method"),
    ({"method": "lrt"}, "method"),
    ({"lr": -0.1}, "lr"),
    ({"lr": math.nan}, "lr"),
    ({"lr": math.inf}, "lr"),
    ({"lr_bias": -1.0}, "lr_bias"),
    ({"lr_bias": math.nan}, "lr_bias"),
    ({"rank": 0}, "rank"),
    ({"rank": 2.0}, "rank"),
    ({"batch_conv": 0}, "batch_conv"),
    ({"batch_dense": -3}, "batch_dense"),
    ({"beta": 1.0}, "beta"),
    ({"beta": 1.5}, "beta"),
    ({"beta": -0.1}, "beta"),
    ({"rho_min": 1.01}, "rho_min"),
    ({"rho_min": -0.5}, "rho_min"),
    ({"factor_bits": 1}, "factor_bits"),
    ({"factor_bits": 33}, "factor_bits"),
    ({"max_cond": 1.0}, "max_cond"),
    ({"max_cond": 0.5}, "max_cond"),
])
def test_bad_settings_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError) as info:
        NVMTrainer(**kwargs)
    assert re.search(rf"\b{field}\b", str(info.value)), str(info.value)


def test_edge_settings_are_accepted() -> None:
    NVMTrainer(lr=0.0, rho_min=0.0, beta=0.0, factor_bits=None, max_cond=None)
    NVMTrainer(rho_min=1.0, factor_bits=2, max_cond=1.0001, lr_bias=0.0)


def test_params_selecting_no_layer_raise_at_init(cnn) -> None:
    model, _, _ = cnn
    flat = DeployedModel(model.input_shape, model.input_fmt, (Flatten(model.input_fmt),))
    for method in ("bias-only", "sgd", "lrt-unbiased"):
        with pytest.raises(ValueError, match="selects no dense or convolution layer"):
            NVMTrainer(method).init(flat)
    bad = NVMTrainer("sgd", params="1")  # layer 1 is a ReLU: settings are checked against a model at init
    with pytest.raises(ValueError, match="no parameters"):
        bad.init(model)


# -- inference-only, bias-only, predict-then-learn -----------------------------------------------


def test_inference_only_changes_nothing(cnn) -> None:
    model, q, y = cnn
    tr = NVMTrainer("inference-only")
    state = tr.init(model, 0)
    correct = 0.0
    for start in range(0, 20, 5):  # 4 steps of 5 samples = 20 samples
        state, info = tr.step(state, Batch(q[start:start + 5], y[start:start + 5]))
        correct += info.metrics["correct"]
        assert math.isnan(info.metrics["loss"])
        assert info.metrics["write_events"] == 0
        assert info.ledger.extra_memory_bytes == 0
        assert info.ledger.forward_passes == 5
        assert info.ledger.macs_backward == 0
    expected = int((forward_int(model, q[:20], overflow="wrap").argmax(1) == y[:20]).sum())
    assert 0 < expected < 20  # the pre-trained model gets some right and some wrong
    assert correct == expected and state.correct == expected
    out = tr.model(state)
    assert out is model
    assert all(torch.equal(t, model.param(n)[0]) for n, t, _ in out.params())
    assert state.step == 20 and state.writes.steps == 20
    assert total_writes(state.writes) == 0 and state.writes.counts == {}
    assert state.write_events == 0
    assert tr.writes(model) == ()
    assert tr.aux_bytes(model) == {}


def test_bias_only_trains_biases_alone(cnn) -> None:
    model, q, y = cnn
    tr = NVMTrainer("bias-only", lr=0.01, lr_bias=0.05)
    assert tr.writes(model) == ("0.bias", "3.bias", "7.bias")
    # hand check of the first bias step: round(-lr_bias * sum_p dz_p / LSB_b), saturated
    f = _factors(model, q[:1], y[:1])
    state, _ = _run(tr, model, q, y, 1)
    for i, (dz, _) in f.items():
        layer = model.layers[i]
        step = _round(-0.05 * dz.sum(1) / scale_of(layer.b_fmt, 1))
        expected = (layer.bias + step).clamp(layer.b_fmt.raw_min, layer.b_fmt.raw_max)
        assert torch.equal(state.model.layers[i].bias, expected)
    state, _ = _run(tr, model, q, y, 20)
    out = tr.model(state)
    assert _same(_weights(out), _weights(model))
    for name, b in _biases(out).items():
        assert not torch.equal(b, model.param(name)[0]), name
    assert state.writes.counts == {} and state.writes.steps == 20
    assert state.write_events == 0
    assert tr.aux_bytes(model) == {}


def test_correct_metric_uses_the_model_before_the_update(cnn) -> None:
    model, q, y = cnn
    # bias-only with a huge bias rate: learning a sample nearly always makes the model right on it
    tr = NVMTrainer("bias-only", lr_bias=50.0)
    state = tr.init(model, 0)
    flipped = 0
    for i in range(N_SAMPLES):
        before = int(forward_int(model, q[i:i + 1], overflow="wrap").argmax(1)) == int(y[i])
        new, info = tr.step(state, Batch(q[i:i + 1], y[i:i + 1]))
        after = int(forward_int(new.model, q[i:i + 1], overflow="wrap").argmax(1)) == int(y[i])
        assert info.metrics["correct"] == float(before)
        flipped += (not before) and after
    assert flipped > 0  # there are samples the update fixes, and they still count as wrong

    # a long run with sgd: each step's metric is the prediction of the state it was given
    tr = NVMTrainer("sgd", lr=0.05)
    state = tr.init(model, 0)
    total = 0
    for i in range(20):
        pred = int(forward_int(state.model, q[i:i + 1], overflow="wrap").argmax(1))
        state, info = tr.step(state, Batch(q[i:i + 1], y[i:i + 1]))
        assert info.metrics["correct"] == float(pred == int(y[i]))
        total += pred == int(y[i])
    assert state.correct == total


@pytest.mark.parametrize("method", ["sgd", "sgd-accumulate", "lrt-unbiased"])
def test_a_batch_is_learned_one_sample_at_a_time(cnn, method: str) -> None:
    model, q, y = cnn
    tr = NVMTrainer(method, batch_conv=2, batch_dense=3)
    one, infos = _run(tr, model, q, y, 6, seed=5)
    many, info = tr.step(tr.init(model, 5), Batch(q[:6], y[:6]))
    assert all(torch.equal(a, b) for (_, a, _), (_, b, _) in zip(one.model.params(), many.model.params(),
                                                                     strict=True))
    assert info.metrics["correct"] == sum(i.metrics["correct"] for i in infos)
    assert info.metrics["loss"] == pytest.approx(sum(i.metrics["loss"] for i in infos), rel=1e-6)
    assert info.metrics["write_events"] == one.write_events == many.write_events
    assert many.step == 6 and many.writes.steps == 6
    assert all(torch.equal(one.writes.counts[k], many.writes.counts[k]) for k in one.writes.counts)


# -- SGD -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("maxnorm", [False, True])
def test_sgd_dense_step_by_hand(mlp, maxnorm: bool) -> None:
    model, q, y = mlp
    lr = 0.02
    tr = NVMTrainer("sgd", maxnorm=maxnorm, lr=lr)
    f = _factors(model, q[:1], y[:1])
    g32 = _grad32(model, q[:1], y[:1])
    state, infos = _run(tr, model, q, y, 1)
    out = state.model
    changed_layers = 0
    for i, (dz, _) in f.items():
        layer = model.layers[i]
        w = layer.weight
        g = g32[i]
        div = float(g.abs().max()) if maxnorm else 1.0
        expected = _clip(layer, w + _round(-(lr / div * g) / _lsb(layer)))
        assert torch.equal(out.layers[i].weight, expected), i
        changed = expected != w
        # a dense layer has one term per cell, so writes counted == cells changed
        assert torch.equal(state.writes.counts[f"{i}.weight"], changed.to(torch.int64))
        changed_layers += bool(changed.any())
        b_exp = (layer.bias + _round(-lr * dz.sum(1) / scale_of(layer.b_fmt, 1))).clamp(
            layer.b_fmt.raw_min, layer.b_fmt.raw_max)
        assert torch.equal(out.layers[i].bias, b_exp)
        if maxnorm:  # lr is the largest step in real units: the peak cell moves round(lr / LSB)
            r, c = divmod(int(g.abs().argmax()), g.shape[1])
            if layer.w_fmt.raw_min < int(w[r, c]) < layer.w_fmt.raw_max:
                assert abs(int(expected[r, c] - w[r, c])) == int(_round(lr / _lsb(layer)[r, 0]))
    assert changed_layers == state.write_events == infos[0].metrics["write_events"] > 0
    assert 0 < total_writes(state.writes) < sum(t.numel() for t in _weights(model).values())


def test_sgd_maxnorm_moving_average_by_hand(mlp) -> None:
    """Second step: divisor max(max|g2|, bias-corrected EMA of (max|g1|, max|g2|))."""
    model, q, y = mlp
    lr, beta = 0.02, 0.5
    tr = NVMTrainer("sgd", lr=lr, beta=beta, params="5")
    assert tr.writes(model) == ("5.weight", "5.bias")
    p1 = float(_grad32(model, q[:1], y[:1])[5].abs().max())
    s1, _ = _run(tr, model, q, y, 1)
    g2 = _grad32(s1.model, q[1:2], y[1:2])[5]
    p2 = float(g2.abs().max())
    div = max(p2, (beta * p1 + p2) / (1 + beta))  # ((1-b) b p1 + (1-b) p2) / (1 - b^2)
    assert s1.norm[5] == (pytest.approx((1 - beta) * p1), 1)
    s2, _ = tr.step(s1, Batch(q[1:2], y[1:2]))
    layer = s1.model.layers[5]
    expected = _clip(layer, layer.weight + _round(-(lr / div * g2) / _lsb(layer)))
    assert torch.equal(s2.model.layers[5].weight, expected)
    assert s2.norm[5][1] == 2
    # only layer 5 learns; the others are bit-identical
    for name in ("1.weight", "1.bias", "3.weight", "3.bias"):
        assert torch.equal(s2.model.param(name)[0], model.param(name)[0])


def test_sgd_conv_charges_one_write_per_pixel_term(cnn) -> None:
    """The sample's update round(-lr G / LSB) is applied at once; a changed convolution cell is charged
    one write per output pixel whose term dz_p a_p^T touches it (a dense cell: one)."""
    model, q, y = cnn
    lr = 0.3
    tr = NVMTrainer("sgd", maxnorm=False, lr=lr)
    f = _factors(model, q[:1], y[:1])
    g32 = _grad32(model, q[:1], y[:1])
    state, _ = _run(tr, model, q, y, 1)
    for i in (0, 3, 7):
        layer = model.layers[i]
        w = layer.weight.reshape(layer.weight.shape[0], -1)
        new = state.model.layers[i].weight.reshape(w.shape)
        assert torch.equal(new, _clip(layer, w + _round(-(lr * g32[i]) / _lsb(layer))))
        dz, a = f[i]
        touching = ((dz != 0).to(torch.int64) @ (a != 0).to(torch.int64).T)  # [n, m] pixels per cell
        changed = new != w
        assert bool(touching[changed].ge(1).all())  # a changed cell had a nonzero gradient
        counted = state.writes.counts[f"{i}.weight"].reshape(w.shape)
        assert torch.equal(counted, torch.where(changed, touching, 0))
        if i == 7:
            assert torch.equal(counted, changed.to(torch.int64))
        else:  # several pixel terms hit the same cell: more writes than cells changed
            assert int(counted.max()) > 1
            assert int(counted.sum()) > int(changed.sum()) > 0


def test_no_float_master_copy_sub_lsb_updates_are_lost(cnn) -> None:
    model, q, y = cnn
    tr = NVMTrainer("sgd", maxnorm=False, lr=1e-9)
    state, _ = _run(tr, model, q, y, 30)
    assert _same(_weights(state.model), _weights(model))
    assert total_writes(state.writes) == 0 and state.write_events == 0
    assert not hasattr(state, "master") and state.acc == {}
    # the same rate with a digital buffer does keep the sub-LSB remainder
    acc, _ = _run(NVMTrainer("sgd-accumulate", maxnorm=False, lr=1e-9), model, q, y, 30)
    assert _same(_weights(acc.model), _weights(model))
    assert all(float(b.abs().max()) > 0 for b in acc.acc.values())


def test_sgd_accumulate_carries_the_sub_lsb_remainder(cnn) -> None:
    model, q, y = cnn
    lr = 0.003
    tr = NVMTrainer("sgd-accumulate", maxnorm=False, lr=lr)
    state = tr.init(model, 0)
    w0 = {i: model.layers[i].weight.reshape(model.layers[i].weight.shape[0], -1) for i in (0, 3, 7)}
    target = {i: torch.zeros_like(w, dtype=torch.float64) for i, w in w0.items()}
    free = {i: torch.ones_like(w, dtype=torch.bool) for i, w in w0.items()}  # never at a range end
    first_written = None
    for t in range(6):
        g = _grad32(state.model, q[t:t + 1], y[t:t + 1])
        new, _ = tr.step(state, Batch(q[t:t + 1], y[t:t + 1]))
        for i in w0:
            layer = state.model.layers[i]
            old_w = layer.weight.reshape(w0[i].shape)
            new_w = new.model.layers[i].weight.reshape(w0[i].shape)
            change = -lr * g[i] / _lsb(layer)
            target[i] += change
            free[i] &= (new_w > layer.w_fmt.raw_min) & (new_w < layer.w_fmt.raw_max)
            buf = new.acc[i]
            assert buf.dtype == torch.float32 and buf.shape == old_w.shape
            assert float(buf.abs().max()) < 1
            # buffer + applied change == requested change (float32 tolerance), for unclipped cells
            before = state.acc[i].to(torch.float64)
            step_ok = (before + change - buf.to(torch.float64) - (new_w - old_w))[free[i]]
            assert float(step_ok.abs().max()) < 1e-5
            total_ok = (target[i] - buf.to(torch.float64) - (new_w - w0[i]))[free[i]]
            assert float(total_ok.abs().max()) < 1e-4
            # a cell is written only when its accumulated change (float32 buffer) passes one LSB
            passed = (state.acc[i] - (lr * g[i] / _lsb(layer)).to(torch.float32)).abs() >= 1
            assert torch.equal((new_w != old_w)[free[i]], passed[free[i]])
            delta = new.writes.counts[f"{i}.weight"] - state.writes.counts[f"{i}.weight"]
            assert torch.equal(delta.reshape(old_w.shape), (new_w != old_w).to(torch.int64))
        if t == 0:
            first_written = total_writes(new.writes)
            moved = sum(int((g[i] != 0).sum()) for i in w0)
            assert first_written < moved  # most first-step changes were under one LSB and were kept
        state = new
    assert total_writes(state.writes) > first_written  # ... and written once they added up


# -- low-rank training ---------------------------------------------------------------------------


def test_lrt_writes_nothing_before_b_samples(cnn) -> None:
    model, q, y = cnn
    tr = NVMTrainer("lrt-unbiased", rho_min=0.0)  # batch_conv 10, batch_dense 100
    state, _ = _run(tr, model, q, y, 9)
    assert _same(_weights(state.model), _weights(model))
    assert all(not torch.equal(b, model.param(n)[0]) for n, b in _biases(state.model).items())
    assert state.b_eff == {0: 9, 3: 9, 7: 9}
    assert state.write_events == 0 and total_writes(state.writes) == 0
    assert state.acc[0].terms == 9 * 64 and state.acc[3].terms == 9 * 16 and state.acc[7].terms == 9
    state, (info,) = _run(tr, model, q[9:], y[9:], 1, state=state)
    for name in ("0.weight", "3.weight"):
        assert not torch.equal(state.model.param(name)[0], model.param(name)[0])
    assert torch.equal(state.model.param("7.weight")[0], model.param("7.weight")[0])
    assert state.b_eff == {0: 0, 3: 0, 7: 10}
    assert state.acc[0].terms == 0 and float(ksum_matrix(state.acc[0]).abs().max()) == 0
    assert state.acc[7].terms == 10
    assert state.write_events == info.metrics["write_events"] == 2
    assert total_writes(state.writes) > 0


@pytest.mark.parametrize("method", ["lrt-biased", "lrt-unbiased"])
@pytest.mark.parametrize("b", [1, 2])
def test_lrt_exact_accumulation_gives_the_rounded_gradient(cnn, method: str, b: int) -> None:
    """rank >= every layer's min(n, m): the accumulator is the exact gradient sum, and the write is
    round(-lr sqrt(B) G / B / LSB)."""
    model, q, y = cnn
    lr = 0.02
    tr = NVMTrainer(method, maxnorm=False, lr=lr, rank=64, factor_bits=None, rho_min=0.0,
                    batch_conv=b, batch_dense=b)
    state = tr.init(model, 0)
    total = {i: 0 for i in (0, 3, 7)}
    for t in range(b):
        for i, g in _grad(state.model, q[t:t + 1], y[t:t + 1]).items():
            total[i] = total[i] + g
        if t < b - 1:
            state, _ = tr.step(state, Batch(q[t:t + 1], y[t:t + 1]))
            assert _same(_weights(state.model), _weights(model))
    new, _ = tr.step(state, Batch(q[b - 1:b], y[b - 1:b]))
    for i, g in total.items():
        layer = model.layers[i]
        w = layer.weight.reshape(layer.weight.shape[0], -1)
        expected = _clip(layer, w + _round(-lr * math.sqrt(b) * (g / b) / _lsb(layer)))
        got = new.model.layers[i].weight.reshape(w.shape)
        assert torch.equal(got, expected), i
        assert torch.equal(new.writes.counts[f"{i}.weight"].reshape(w.shape), (got != w).to(torch.int64))
        assert bool((got != w).any())
    assert new.write_events == 3 and new.b_eff == {0: 0, 3: 0, 7: 0}


def test_lrt_rho_min_one_never_writes_and_keeps_accumulating(cnn) -> None:
    model, q, y = cnn
    kw = dict(lr=0.002, batch_conv=5, batch_dense=5)
    # the same settings with rho_min = 0 do write: the check is what holds the writes back
    low, _ = _run(NVMTrainer("lrt-biased", rho_min=0.0, **kw), model, q, y, 5)
    assert low.write_events == 3
    tr = NVMTrainer("lrt-biased", rho_min=1.0, **kw)
    state = tr.init(model, 0)
    for t in range(23):
        state, info = tr.step(state, Batch(q[t:t + 1], y[t:t + 1]))
        checks = (t + 1) // 5
        assert state.skipped_writes == 3 * checks
        assert state.b_eff == dict.fromkeys((0, 3, 7), t + 1)  # grows past B
    assert _same(_weights(state.model), _weights(model))
    assert state.write_events == 0 and info.metrics["write_events"] == 0
    assert total_writes(state.writes) == 0 and state.writes.steps == 23
    assert state.acc[0].terms == 23 * 64 and state.acc[7].terms == 23


def test_blocked_and_unblocked_accumulation_agree_when_exact(cnn) -> None:
    model, q, y = cnn
    kw = dict(rank=16, factor_bits=None, batch_conv=5, batch_dense=5, rho_min=0.0)
    blocked, bi = _run(NVMTrainer("lrt-biased", blocked=True, **kw), model, q, y, 5)
    single, si = _run(NVMTrainer("lrt-biased", blocked=False, **kw), model, q, y, 5)
    assert not _same(_weights(blocked.model), _weights(model))
    assert all(torch.equal(a, b) for (_, a, _), (_, b, _) in zip(blocked.model.params(), single.model.params(),
                                                                     strict=True))
    assert blocked.write_events == single.write_events == 3
    # unblocked adds a convolution's terms one at a time: its MAC count is k x the one-term cost; LRT
    # never forms the weight-gradient products, so its base is the error propagation (as for biases)
    base = training_ledger(model, ("0.bias", "3.bias", "7.bias")).macs_backward
    assert bi[0].ledger.macs_backward == base + _ksum_macs(8, 9, 16, 64) + _ksum_macs(16, 72, 16, 16) + \
        _ksum_macs(10, 64, 16, 1)
    assert si[0].ledger.macs_backward == base + 64 * _ksum_macs(8, 9, 16, 1) + 16 * _ksum_macs(16, 72, 16, 1) + \
        _ksum_macs(10, 64, 16, 1)


def test_same_seed_reproduces_and_seed_drives_the_unbiased_accumulator(cnn) -> None:
    model, q, y = cnn
    tr = NVMTrainer("lrt-unbiased")
    a, _ = _run(tr, model, q, y, 30, seed=3)
    b, _ = _run(tr, model, q, y, 30, seed=3)
    c, _ = _run(tr, model, q, y, 30, seed=4)
    assert all(torch.equal(x, z) for (_, x, _), (_, z, _) in zip(a.model.params(), b.model.params(), strict=True))
    assert all(torch.equal(a.writes.counts[k], b.writes.counts[k]) for k in a.writes.counts)
    assert a.b_eff[7] == 30  # the dense accumulator has seen 30 one-term updates, each reduced at random
    assert torch.equal(ksum_matrix(a.acc[7]), ksum_matrix(b.acc[7]))
    assert not torch.equal(ksum_matrix(a.acc[7]), ksum_matrix(c.acc[7]))
    # the biased reduction uses no randomness: the seed changes nothing
    tb = NVMTrainer("lrt-biased")
    d, _ = _run(tb, model, q, y, 12, seed=3)
    e, _ = _run(tb, model, q, y, 12, seed=4)
    assert torch.equal(ksum_matrix(d.acc[7]), ksum_matrix(e.acc[7]))
    assert _same(_weights(d.model), _weights(e.model))


# -- costs ---------------------------------------------------------------------------------------


def test_aux_bytes_by_hand(cnn) -> None:
    model, q, y = cnn
    # cnn weight matrices: conv 0 is 8 x 9, conv 3 is 16 x 72, dense 7 is 10 x 64
    cases = [
        (NVMTrainer("lrt-unbiased"),  # rank 4, 16-bit factors: ceil((4 (n + m) + 4) 16 / 8) + 12, + 4
         {"0.kronecker_sum": 160, "0.maxnorm": 8, "3.kronecker_sum": 728, "3.maxnorm": 8,
          "7.kronecker_sum": 616, "7.maxnorm": 8}),
        (NVMTrainer("lrt-biased", rank=4, factor_bits=None, maxnorm=False),  # 32-bit factors, no scales
         {"0.kronecker_sum": 292, "3.kronecker_sum": 1428, "7.kronecker_sum": 1204}),
        (NVMTrainer("lrt-unbiased", params="last"), {"7.kronecker_sum": 616, "7.maxnorm": 8}),
        (NVMTrainer("sgd-accumulate", maxnorm=False),
         {"0.accumulator": 288, "3.accumulator": 4608, "7.accumulator": 2560}),
        (NVMTrainer("sgd-accumulate"),
         {"0.accumulator": 288, "0.maxnorm": 8, "3.accumulator": 4608, "3.maxnorm": 8,
          "7.accumulator": 2560, "7.maxnorm": 8}),
        (NVMTrainer("sgd"), {"0.maxnorm": 8, "3.maxnorm": 8, "7.maxnorm": 8}),
        (NVMTrainer("sgd", maxnorm=False), {}),
        (NVMTrainer("bias-only"), {}),
        (NVMTrainer("inference-only"), {}),
    ]
    for tr, expected in cases:
        assert tr.aux_bytes(model) == expected, tr
        _, info = tr.step(tr.init(model, 0), Batch(q[:2], y[:2]))
        assert info.ledger.extra_memory_bytes == sum(expected.values()), tr
    assert ksum_bytes(8, 9, 4, 16) + 4 == 160  # the formula the hand numbers follow
    assert sum(NVMTrainer("lrt-unbiased").aux_bytes(model).values()) == 1528
    assert sum(NVMTrainer("sgd-accumulate", maxnorm=False).aux_bytes(model).values()) == 7456


@pytest.mark.parametrize("method", ["inference-only", "bias-only", "sgd", "sgd-accumulate", "lrt-biased",
                                    "lrt-unbiased"])
def test_step_ledger_counts_each_sample(cnn, method: str) -> None:
    model, q, y = cnn
    tr = NVMTrainer(method)
    _, info = tr.step(tr.init(model, 0), Batch(q[:3], y[:3]))
    led = info.ledger
    assert led.forward_passes == 3
    assert led.macs_forward == 3 * inference_macs(model)
    assert led.macs == led.macs_forward + led.macs_backward
    plain = training_ledger(model, (0, 3, 7)).macs_backward
    if method == "inference-only":
        assert led.macs_backward == 0
    elif method in ("sgd", "sgd-accumulate"):
        assert led.macs_backward == 3 * plain
    elif method.startswith("lrt-"):
        # no weight-gradient products; instead the accumulator's own work, hand-counted from the
        # docstring formula: 97,408 (conv 0, 64 terms: QRs 4,352 + 5,508, core 78,608 + 4,896, SVD 2,304,
        # rotation 1,740) + 129,920 (conv 3, 16 terms) + 7,655 (dense 7, one term) MACs per sample, rank 4
        assert _ksum_macs(8, 9, 4, 64) == 4352 + 5508 + 78608 + 4896 + 2304 + 1740
        assert _ksum_macs(8, 9, 4, 64) + _ksum_macs(16, 72, 4, 16) + _ksum_macs(10, 64, 4, 1) == 234983
        errors_only = training_ledger(model, ("0.bias", "3.bias", "7.bias")).macs_backward
        assert led.macs_backward == 3 * (errors_only + 234983)


def test_step_rejects_bad_batches(cnn) -> None:
    model, q, y = cnn
    tr = NVMTrainer("sgd")
    state = tr.init(model, 0)
    with pytest.raises(TypeError, match="raw integer"):
        tr.step(state, Batch(q[:2].to(torch.float32), y[:2]))
    with pytest.raises(ValueError, match="shape"):
        tr.step(state, Batch(q[:2, :, :4], y[:2]))
    with pytest.raises(ValueError, match="shape"):
        tr.step(state, Batch(q[:2].reshape(2, 64), y[:2]))
    with pytest.raises(ValueError, match="labels"):
        tr.step(state, Batch(q[:2], y[:3]))
    with pytest.raises(TypeError, match="integers"):
        tr.step(state, Batch(q[:2], y[:2].to(torch.float32)))
    with pytest.raises(ValueError, match="labels must lie"):
        tr.step(state, Batch(q[:1], torch.tensor([10])))
    # nothing was learned from the rejected batches: the state is a value
    assert state.step == 0 and state.model is model


# -- add_writes ----------------------------------------------------------------------------------


def test_add_writes_adds_integer_counts() -> None:
    counter = advance(init_writes({"w": (2, 3), "b": (2,)}), 4)
    c1 = add_writes(counter, "w", torch.tensor([[0, 1, 2], [3, 0, 1]]))
    c2 = add_writes(c1, "w", torch.ones(2, 3, dtype=torch.int32))
    c3 = record_writes(c2, "w", torch.zeros(2, 3), torch.tensor([[0, 0, 0], [5, 0, 0]]))
    assert torch.equal(c2.counts["w"], torch.tensor([[1, 2, 3], [4, 1, 2]]))
    assert c2.counts["w"].dtype == torch.int64
    assert torch.equal(c3.counts["w"], torch.tensor([[1, 2, 3], [5, 1, 2]]))
    assert total_writes(c1) == 7 and total_writes(c2) == 13 and total_writes(c3) == 14
    assert c1.steps == c2.steps == 4  # adding writes is not a step
    assert total_writes(counter) == 0  # a pure value: the input counter is unchanged
    assert torch.equal(c2.counts["b"], torch.zeros(2, dtype=torch.int64))
    assert total_writes(add_writes(c2, "b", torch.zeros(2, dtype=torch.int64))) == 13


def test_add_writes_rejects_bad_counts() -> None:
    counter = init_writes({"w": (2, 3)})
    with pytest.raises(ValueError, match="shape"):
        add_writes(counter, "w", torch.ones(3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="non-negative"):
        add_writes(counter, "w", torch.tensor([[0, 1, 0], [-1, 0, 0]]))
    with pytest.raises(ValueError, match="integer"):
        add_writes(counter, "w", torch.ones(2, 3))
    with pytest.raises(KeyError, match="no parameter 'v'"):
        add_writes(counter, "v", torch.ones(2, 3, dtype=torch.int64))
    assert total_writes(counter) == 0

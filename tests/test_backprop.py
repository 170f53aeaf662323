"""Tests of the float references: ``to_float_net`` (the deployed model as a float network) and
``BackpropFinetune`` (Adam fine-tuning of the selected parameters, the upper bound that the
on-device methods are compared with)."""

from __future__ import annotations

import copy

import pytest
import torch

from edgetrain.cost import training_ledger
from edgetrain.data import load_dataset
from edgetrain.model import DeployedModel, GlobalAvgPool
from edgetrain.model.arch import build_float_net
from edgetrain.model.convert import convert
from edgetrain.model.forward import accuracy, forward_float
from edgetrain.model.pretrain import train_float
from edgetrain.model.to_float import to_float_net
from edgetrain.quant import dequantize, parse_fixed
from edgetrain.shift import parse_shift
from edgetrain.train.backprop import (
    BackpropFinetune,
    finetune,
    float_net_accuracy,
    requantize_param,
)
from edgetrain.train.protocol import Batch, Trainer
from edgetrain.train.select import select_params

ARCHS = (("mlp", (1, 8, 8)), ("cnn", (1, 8, 8)), ("cnn", (3, 16)))
SCHEMES = ("fixed16_6", "int8", "uint8")


def _model(arch: str, shape: tuple[int, ...], scheme: str = "fixed16_6", seed: int = 0) -> DeployedModel:
    """An untrained built-in network converted with random calibration data."""
    net = build_float_net(arch, shape, 4, seed=seed)
    calib = torch.randn((64, *shape), generator=torch.Generator().manual_seed(seed))
    return convert(net, calib, scheme)[0]


def _batch(model: DeployedModel, n: int = 16, seed: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn((n, *model.input_shape), generator=g), torch.randint(0, 4, (n,), generator=g))


@pytest.fixture(scope="module")
def digits_model() -> tuple[DeployedModel, object]:
    """The mlp pre-trained on clean digits and deployed in fixed16_6, with the dataset."""
    data = load_dataset("digits")
    net = build_float_net("mlp", data.input_shape, data.n_classes, seed=0)
    train_float(net, data.train.x, data.train.y, epochs=10, seed=0)
    return convert(net, data.train.x[:256], "fixed16_6")[0], data


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("arch,shape", ARCHS)
def test_to_float_net_equals_forward_float(arch: str, shape: tuple[int, ...], scheme: str) -> None:
    model = _model(arch, shape, scheme)
    net = to_float_net(model, torch.float64)
    assert len(net) == len(model.layers)
    assert [n for n, _ in net.named_parameters()] == [n for n, _, _ in model.params()]
    for name, raw, fmt in model.params():
        got = net.get_parameter(name).detach()
        assert torch.equal(got, dequantize(raw, fmt).reshape(got.shape))
    x = torch.randn((8, *shape), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        out = net(x)
    torch.testing.assert_close(out, forward_float(model, x), rtol=0, atol=1e-9)


def test_to_float_net_keeps_one_module_per_layer_for_global_pool() -> None:
    model = _model("cnn", (3, 16))
    net = to_float_net(model)
    pools = [i for i, layer in enumerate(model.layers) if isinstance(layer, GlobalAvgPool)]
    assert pools and all(tuple(net[i](torch.ones(2, 5, 7)).shape) == (2, 5) for i in pools)
    assert next(net.parameters()).dtype == torch.float32


def test_trainer_follows_the_protocol() -> None:
    model = _model("mlp", (1, 8, 8))
    trainer = BackpropFinetune(params="last:2")
    assert isinstance(trainer, Trainer)
    assert trainer.writes(model) == select_params(model, "last:2")
    with pytest.raises(ValueError, match="learning rate"):
        BackpropFinetune(lr=0.0)


@pytest.mark.parametrize("spec", ["last", "bias", "bias:last", "last:2"])
def test_only_selected_params_change(spec: str) -> None:
    model = _model("cnn", (1, 8, 8))
    trainer = BackpropFinetune(params=spec, lr=1e-2)
    names = set(trainer.writes(model))
    reference = to_float_net(model)
    state = trainer.init(model, seed=0)
    for i in range(5):
        state, _ = trainer.step(state, _batch(model, seed=i))
    adapted = trainer.model(state)
    changed = set()
    for (name, raw, _), (_, new, _) in zip(model.params(), adapted.params(), strict=True):
        if not torch.equal(raw, new):
            changed.add(name)
    assert changed and changed <= names
    for name, p in trainer.net(state).named_parameters():
        if name not in names:
            assert torch.equal(p, reference.get_parameter(name)), name
            assert p.grad is None, name


def test_loss_goes_down_on_a_fixed_batch() -> None:
    model = _model("mlp", (1, 8, 8))
    trainer = BackpropFinetune(params="last", lr=1e-2)
    state = trainer.init(model)
    batch = _batch(model, n=32)
    losses = []
    for _ in range(30):
        state, info = trainer.step(state, batch)
        losses.append(info.metrics["loss"])
    assert state.steps == 30
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False))  # full-batch Adam: every step helps
    assert losses[-1] < 0.85 * losses[0]


def test_finetune_last_layer_recovers_accuracy_under_noise(digits_model) -> None:
    model, data = digits_model
    noise = parse_shift("noise:0.3")
    train_x = noise.apply(data.train.x, torch.Generator().manual_seed(1))
    test_x = noise.apply(data.test.x, torch.Generator().manual_seed(2))
    before = float_net_accuracy(to_float_net(model), test_x, data.test.y)
    trainer = BackpropFinetune(params="last", lr=1e-2)
    seen = []
    state, history = finetune(trainer, model, train_x, data.train.y, epochs=3, batch_size=32, seed=0,
                              eval_x=test_x, eval_y=data.test.y, on_epoch=seen.append)
    assert seen == history
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[-1]["samples"] == 3 * data.train.x.shape[0]
    after = history[-1]["accuracy"]
    assert after == float_net_accuracy(trainer.net(state), test_x, data.test.y)
    assert after > before + 0.02, (before, after)
    # written back into fixed16_6, the integer-exact model keeps most of the gain
    assert accuracy(trainer.model(state), test_x, data.test.y) > before


def test_same_seed_same_run(digits_model) -> None:
    model, data = digits_model
    x, y = data.train.x[:200], data.train.y[:200]
    trainer = BackpropFinetune(params="last:2")
    runs = [finetune(trainer, model, x, y, epochs=2, seed=4)[0] for _ in range(2)]
    a, b = (trainer.net(s).state_dict() for s in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for (_, ra, _), (_, rb, _) in zip(trainer.model(runs[0]).params(), trainer.model(runs[1]).params(), strict=True):
        assert torch.equal(ra, rb)


def test_bad_batches_are_rejected() -> None:
    model = _model("mlp", (1, 8, 8))
    trainer = BackpropFinetune()
    state = trainer.init(model)
    x, y = _batch(model, n=4)
    nan_x = x.clone()
    nan_x[0, 0, 0, 0] = float("nan")
    cases = [
        (Batch(x[:, :, :4], y), ValueError, "shape"),
        (Batch(x, y.float()), TypeError, "labels must be integers"),
        (Batch(nan_x, y), ValueError, "non-finite"),
        (Batch(x, y[:3]), ValueError, "labels"),
        (Batch(x.to(torch.int64), y), TypeError, "real-valued"),
        (Batch(x, torch.full_like(y, 4)), ValueError, "labels must lie in 0..3"),
        (Batch(x[:0], y[:0]), ValueError, "empty"),
    ]
    for batch, error, message in cases:
        with pytest.raises(error, match=message):
            trainer.step(state, batch)
    assert state.steps == 0


@pytest.mark.parametrize("spec", ["last", "bias", "all"])
def test_step_ledger_is_the_backprop_count(spec: str) -> None:
    model = _model("cnn", (1, 8, 8))
    trainer = BackpropFinetune(params=spec)
    batch = _batch(model, n=12)
    _, info = trainer.step(trainer.init(model), batch)
    expected = training_ledger(model, trainer.writes(model), batch=12)
    assert info.ledger.replace(wall_s=None) == expected
    assert info.ledger.wall_s is not None and info.ledger.wall_s > 0


def test_requantize_param_saturates_instead_of_wrapping() -> None:
    fmt = parse_fixed("fixed8_3")  # wraps on overflow; range [-4, 4 - 1/32]
    raw = requantize_param(torch.tensor([5.0, -9.0, 0.5, 4.0 - 1 / 32]), fmt)
    assert raw.tolist() == [fmt.raw_max, fmt.raw_min, 16, fmt.raw_max]


def test_state_can_be_copied_to_replay() -> None:
    model = _model("mlp", (1, 8, 8))
    trainer = BackpropFinetune()
    state = trainer.init(model)
    saved = copy.deepcopy(state)
    batch = _batch(model)
    state, _ = trainer.step(state, batch)
    replay, _ = trainer.step(saved, batch)
    assert all(torch.equal(p, q) for p, q in zip(state.net.parameters(), replay.net.parameters(), strict=True))

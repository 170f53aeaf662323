"""Cost counts checked against hand counts on tiny deployed models."""

import json
import math

import pytest
import torch

from edgetrain.cost import (
    Buffer,
    LayerMacs,
    Ledger,
    MemoryPlan,
    advance,
    bytes_per_value,
    cells,
    energy_j,
    fits,
    flash_bytes,
    flash_items,
    inference_ledger,
    inference_macs,
    inference_plan,
    init_writes,
    latency_s,
    layer_macs,
    lifetime_steps,
    max_writes_per_cell,
    mean_write_density,
    model_fits,
    model_macs,
    record_model_writes,
    record_writes,
    requant_pairs,
    total_writes,
    training_ledger,
    training_macs,
    with_device,
    write_energy_j,
    writes_ledger,
)
from edgetrain.device import KU115, NRF52840, RP2040, RRAM, STM32L4R5
from edgetrain.model import Conv1d, Conv2d, Dense, DeployedModel, Flatten, GlobalAvgPool, MaxPool, ReLU
from edgetrain.quant import Affine, FixedPoint

F16 = FixedPoint(16, 6)  # 2 bytes per value
F32 = FixedPoint(32, 12)  # 4 bytes per value (biases)
DESIGN_KEYS = {"forward_passes", "macs", "extra_memory_bytes", "train_ram_bytes", "flash_bytes",
               "weight_writes", "max_writes_per_cell", "mean_write_density", "energy_j",
               "latency_s", "wall_s"}


def ints(*shape):
    return torch.arange(math.prod(shape), dtype=torch.int64).reshape(shape) % 7 - 3


def dense(n_in, n_out, w_fmt=F16):
    return Dense(ints(n_out, n_in), ints(n_out), F16, w_fmt, F32, F16)


def conv_net():
    """1x5x5 -> conv 1->2 3x3 pad 1 -> relu -> maxpool 2x2/2 -> flatten -> dense 8->3."""
    conv = Conv2d(ints(2, 1, 3, 3), ints(2), F16, F16, F32, F16, stride=(1, 1), padding=(1, 1))
    layers = (conv, ReLU(F16), MaxPool(F16, (2, 2), (2, 2)), Flatten(F16), dense(8, 3))
    return DeployedModel((1, 5, 5), F16, layers)


def mlp():
    """4 -> dense 3 -> relu -> dense 2."""
    return DeployedModel((4,), F16, (dense(4, 3), ReLU(F16), dense(3, 2)))


# ---------------------------------------------------------------- MACs

@pytest.mark.parametrize("layer, in_shape, n", [
    (dense(4, 3), (4,), 12),
    (Conv2d(ints(2, 1, 3, 3), ints(2), F16, F16, F32, F16, (1, 1), (1, 1)), (1, 5, 5), 450),
    (Conv2d(ints(2, 1, 3, 3), ints(2), F16, F16, F32, F16, (2, 2), (1, 1)), (1, 5, 5), 162),
    (Conv1d(ints(3, 2, 3), ints(3), F16, F16, F32, F16), (2, 10), 3 * 2 * 3 * 8),
    (ReLU(F16), (2, 5, 5), 0),
    (MaxPool(F16, (2, 2), (2, 2)), (2, 5, 5), 0),
    (Flatten(F16), (2, 2, 2), 0),
    (GlobalAvgPool(F16, F16), (2, 5, 5), 0),
])
def test_layer_macs_by_hand(layer, in_shape, n):
    assert layer_macs(layer, in_shape) == LayerMacs(n, n, n)


def test_model_and_inference_macs():
    assert [m.forward for m in model_macs(conv_net())] == [450, 0, 0, 0, 24]
    assert inference_macs(conv_net()) == 474
    assert inference_macs(conv_net(), batch=3) == 3 * 474


@pytest.mark.parametrize("trained, expected", [
    (set(), LayerMacs(18, 0, 0)),
    ({2}, LayerMacs(18, 0, 6)),            # last layer: no gradient flows below it
    ({0}, LayerMacs(18, 6, 12)),           # dense 3->2 passes the gradient down; never to input
    ({0, 2}, LayerMacs(18, 6, 18)),
    ({0, 1, 2}, LayerMacs(18, 6, 18)),     # ReLU has nothing to train
    ({"0.bias"}, LayerMacs(18, 6, 0)),     # bias gradient: no MACs, but needs dL/dy of layer 0
    ({"2.weight"}, LayerMacs(18, 0, 6)),
])
def test_training_macs_with_subsets(trained, expected):
    assert training_macs(mlp(), trained) == expected


def test_training_macs_conv_and_batch():
    assert training_macs(conv_net(), {4}) == LayerMacs(474, 0, 24)
    assert training_macs(conv_net(), {0}) == LayerMacs(474, 24, 450)
    assert training_macs(conv_net(), {0}, batch=2) == LayerMacs(948, 48, 900)
    with pytest.raises(ValueError):
        training_macs(conv_net(), {5})
    with pytest.raises(ValueError):
        training_macs(conv_net(), {"1.weight"})


def test_macs_ledgers():
    led = training_ledger(conv_net(), {0}, batch=2)
    assert (led.forward_passes, led.macs_forward, led.macs_backward, led.macs) == (2, 948, 948, 1896)
    assert inference_ledger(mlp()).macs == 18


# ---------------------------------------------------------------- memory

@pytest.mark.parametrize("fmt, n", [
    (FixedPoint(16, 6), 2), (FixedPoint(12, 4), 2), (FixedPoint(8, 3), 1), (FixedPoint(9, 3), 2),
    (FixedPoint(32, 12), 4), (FixedPoint(1, 0, signed=False), 1),
    (Affine(8, False, (0.1,), (0,)), 1),
])
def test_bytes_per_value(fmt, n):
    assert bytes_per_value(fmt) == n


def test_inference_plan_liveness_by_hand():
    # bytes: input 25*2=50; conv out 50*2=100 (ReLU in place); pool out 8*2=16 (Flatten in place);
    # dense out 3*2=6
    plan = inference_plan(conv_net())
    got = [(b.name, b.nbytes, b.first, b.last) for b in plan.buffers]
    assert got == [("input", 50, 0, 0), ("0.conv2d.out", 100, 0, 2), ("2.maxpool.out", 16, 2, 4),
                   ("4.dense.out", 6, 4, 4)]
    assert [plan.bytes_at(s) for s in range(5)] == [150, 100, 116, 16, 22]
    # an out-of-place ReLU would have made step 1 cost 100 + 100 = 200
    assert plan.peak_bytes() == 150 and plan.peak_step() == 0
    assert {b.name for b in plan.live_at(2)} == {"0.conv2d.out", "2.maxpool.out"}
    assert plan.by_kind() == {"activation": 150}
    assert inference_plan(conv_net(), batch=4).peak_bytes() == 600


def test_inference_plan_mlp_ends_in_place():
    # input 8 B, dense out 6 B (ReLU in place), dense out 4 B
    plan = inference_plan(mlp())
    assert [(b.name, b.first, b.last) for b in plan.buffers] == [
        ("input", 0, 0), ("0.dense.out", 0, 2), ("2.dense.out", 2, 2)]
    assert [plan.bytes_at(s) for s in range(3)] == [14, 6, 10]


def test_memory_plan_add_and_kinds():
    train = MemoryPlan((Buffer("0.weight.copy", 40, 0, 4, "train"),
                        Buffer("grad", 30, 3, 4, "scratch")))
    plan = inference_plan(conv_net()) + train
    assert plan.peak_bytes() == 190 and plan.peak_step() == 0
    assert plan.by_kind(4) == {"activation": 22, "train": 40, "scratch": 30}
    assert MemoryPlan().peak_bytes() == 0 and MemoryPlan().peak_step() is None
    with pytest.raises(ValueError):
        Buffer("x", 1, 3, 2)
    with pytest.raises(ValueError):
        Buffer("x", 1, 0, 0, "heap")


def test_flash_bytes_by_hand():
    # conv w 18*2 + conv b 2*4 + dense w 24*2 + dense b 3*4 + 2 requant pairs * 5
    assert flash_bytes(conv_net()) == 36 + 8 + 48 + 12 + 10
    items = dict(flash_items(conv_net()))
    assert items["0.weight"] == 36 and items["4.dense.requant"] == 5


def test_requant_pairs_per_channel_and_pool():
    w_fmt = Affine(8, True, (0.1, 0.2, 0.3), (0, 0, 0), axis=0)
    act = Affine(8, False, (0.05,), (0,))
    d = Dense(ints(3, 4), ints(3), act, w_fmt, FixedPoint(32, 16), act)
    model = DeployedModel((2, 4, 4), F16, (
        Conv2d(ints(4, 2, 1, 1), ints(4), F16, F16, F32, F16), GlobalAvgPool(F16, act), d))
    assert requant_pairs(model) == [("0.conv2d", 1), ("1.globalavgpool", 1), ("2.dense", 3)]
    # conv 8*2 + 4*4, dense 12*1 + 3*4, (1 + 1 + 3) pairs * 5
    assert flash_bytes(model) == 16 + 16 + 12 + 12 + 25


def test_fits_names_buffers_and_overflow():
    plan = MemoryPlan((Buffer("acts", 200_000, 0, 1), Buffer("grads", 100_000, 1, 1, "train")))
    report = fits(NRF52840, plan, 1000)
    assert not report.ok and not report
    (what, need, have), = report.problems
    assert (need, have) == (300_000, 262_144)
    text = str(report)
    assert "nrf52840" in text and "acts" in text and "grads" in text and "step 1" in text
    assert "over by 37,856 B" in text

    report = fits(NRF52840, 1000, 2 * 1024 * 1024)
    assert [p[0].split()[0] for p in report.problems] == ["flash"]
    assert "over by 1,048,576 B" in str(report)

    ok = fits(STM32L4R5, plan, 1000)
    assert ok.ok and str(ok) == "fits on stm32l4r5"
    assert model_fits(conv_net(), RP2040).ok
    with pytest.raises(TypeError):
        fits(KU115, 1)


# ---------------------------------------------------------------- writes

def test_write_counter_by_hand():
    w0 = torch.tensor([[1, 2], [3, 4]])
    w1 = torch.tensor([[1, 5], [3, 0]])   # cells (0,1), (1,1) change
    w2 = torch.tensor([[1, 6], [9, 0]])   # cells (0,1), (1,0) change
    c0 = init_writes({"0.weight": w0, "0.bias": (3,)})
    c1 = advance(record_writes(c0, "0.weight", w0, w1))
    c2 = advance(record_writes(c1, "0.weight", w1, w2))
    assert total_writes(c0) == 0 and c0.steps == 0  # pure: c0 untouched
    assert c2.counts["0.weight"].tolist() == [[0, 2], [1, 1]]
    assert (total_writes(c2), max_writes_per_cell(c2), cells(c2), c2.steps) == (4, 2, 7, 2)
    assert mean_write_density(c2) == pytest.approx(4 / (7 * 2))
    # busiest cell: 2 writes in 2 steps -> 1 write/step -> endurance 1e6 lasts 1e6 steps
    assert lifetime_steps(c2, RRAM) == pytest.approx(1e6)
    assert lifetime_steps(advance(c0), RRAM) == math.inf
    assert write_energy_j(c2, 16, RRAM) == pytest.approx(4 * 16 * 10.9e-12)
    assert write_energy_j(c2, {"0.weight": 8, "0.bias": 32}, RRAM) == pytest.approx(4 * 8 * 10.9e-12)
    with pytest.raises(ValueError):
        record_writes(c0, "0.weight", w0, torch.zeros(3))
    with pytest.raises(KeyError):
        record_writes(c0, "1.weight", w0, w1)
    with pytest.raises(ValueError):
        mean_write_density(c0)


def test_model_writes_and_ledger():
    model = mlp()
    new = model.with_param("2.bias", torch.tensor([-3, 7]))  # old bias is [-3, -2]: one changes
    c = advance(record_model_writes(init_writes(model), model, new))
    assert total_writes(c) == 1 and cells(c) == 12 + 3 + 6 + 2
    led = writes_ledger(c)
    assert (led.weight_writes, led.max_writes_per_cell, led.write_cell_steps) == (1, 1, 23)
    assert led.mean_write_density == pytest.approx(1 / 23)
    assert write_energy_j(c, model, RRAM) == pytest.approx(32 * 10.9e-12)  # bias is 32-bit
    assert writes_ledger(init_writes(model)).mean_write_density is None


# ---------------------------------------------------------------- ledger

def test_ledger_add_sums_counts_and_maxes_peaks():
    a = Ledger(forward_passes=2, macs=100, extra_memory_bytes=50, flash_bytes=1000,
               max_writes_per_cell=1, energy_j=1e-6, latency_s=0.5)
    b = Ledger(forward_passes=3, macs=10, extra_memory_bytes=80, max_writes_per_cell=2,
               weight_writes=7, wall_s=2.0)
    s = a + b
    assert (s.forward_passes, s.macs, s.weight_writes) == (5, 110, 7)
    assert (s.extra_memory_bytes, s.flash_bytes, s.max_writes_per_cell) == (80, 1000, 2)
    assert (s.energy_j, s.latency_s, s.wall_s) == (1e-6, 0.5, 2.0)
    assert s.train_ram_bytes is None and s.mean_write_density is None
    assert sum([a, b, Ledger()]) == s
    assert Ledger() + a == a


def test_ledger_density_combines_exactly_or_not_at_all():
    a = Ledger(weight_writes=2, mean_write_density=0.1, write_cell_steps=20)
    b = Ledger(weight_writes=6, mean_write_density=0.2, write_cell_steps=30)
    assert (a + b).mean_write_density == pytest.approx(8 / 50)
    assert (a + Ledger(macs=5)).mean_write_density == 0.1
    assert (a + Ledger(weight_writes=1, mean_write_density=0.5)).mean_write_density is None


def test_ledger_fields_and_json():
    led = Ledger(macs_forward=10, macs_backward=5)
    assert led.macs == 15
    d = led.to_dict()
    assert DESIGN_KEYS <= set(d) and set(Ledger().to_dict(extra=False)) >= DESIGN_KEYS
    text = json.dumps(d)
    assert '"energy_j": null' in text
    assert Ledger.from_dict(json.loads(text)) == led
    with pytest.raises(ValueError):
        Ledger(macs=-1)
    with pytest.raises(ValueError):
        Ledger(weight_writes=1.5)
    with pytest.raises(ValueError):
        Ledger(energy_j=float("nan"))
    assert isinstance(Ledger(macs=torch.tensor(3)).macs, int)


# ---------------------------------------------------------------- latency and energy

def test_latency_and_energy_are_counts_times_profile():
    macs = inference_macs(conv_net())
    assert latency_s(macs, NRF52840) == pytest.approx(474 * NRF52840.cycles_per_mac / 64e6)
    assert energy_j(macs, NRF52840) == pytest.approx(474 * NRF52840.cycles_per_mac * 156e-12)
    assert energy_j(macs, NRF52840, bytes_moved=100) == pytest.approx(
        474 * NRF52840.cycles_per_mac * 156e-12 + 100 * NRF52840.sram_energy_per_byte_j)
    assert latency_s(macs, RP2040) == pytest.approx(474 * RP2040.cycles_per_mac / RP2040.clock_hz)
    led = with_device(inference_ledger(conv_net()), RP2040)
    assert led.latency_s == pytest.approx(latency_s(474, RP2040))
    assert led.energy_j == pytest.approx(474 * RP2040.cycles_per_mac * RP2040.energy_per_cycle_j)
    assert with_device(Ledger(wall_s=1.0), RP2040).energy_j is None
    with pytest.raises(TypeError):
        latency_s(10, KU115)

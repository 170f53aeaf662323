"""Peak RAM of fully quantized training (``cost.training_memory``) against hand counts on tiny models.

Step axis of the 3-layer MLP (n = 3): forward 0..2, loss 3, backward of layer 2/1/0 at 4/5/6, update 7.
Step axis of the 5-layer conv net (n = 5): forward 0..4, loss 5, backward of layer i at 10 - i, update 11.

Lifetime rules counted by hand below (``_activation_buffers``): a layer's input is kept to that layer's backward if
its weight is trained, a ReLU's output to the ReLU's backward above L, a MaxPool's input to its backward above L,
and the output of a dense/conv layer at index >= L to that layer's own backward (the saturation rule reads it).
Each trained layer keeps an 8 B (double) running error maximum ``e_max``.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from edgetrain.cost import (
    OPTIMIZERS,
    PRECISIONS,
    DoesNotFit,
    check_training_fits,
    flash_bytes,
    inference_plan,
    param_bytes,
    step_label,
    training_flash_bytes,
    training_memory,
    training_plan,
)
from edgetrain.model import Conv2d, Dense, DeployedModel, Flatten, MaxPool, ReLU
from edgetrain.quant import Affine

U8 = Affine(8, False, (0.1,), (128,))
I32 = Affine(32, True, (0.01,), (0,))
LAST = ("2.weight", "2.bias")
BOTH = ("0.weight", "0.bias", "2.weight", "2.bias")


def dense(n_in: int, n_out: int) -> Dense:
    return Dense(torch.full((n_out, n_in), 128), torch.zeros(n_out, dtype=torch.int64), U8, U8, I32, U8)


def mlp() -> DeployedModel:
    """4 -> dense 3 -> relu -> dense 2 (15 + 8 = 23 parameter values)."""
    return DeployedModel((4,), U8, (dense(4, 3), ReLU(U8), dense(3, 2)))


def conv_net() -> DeployedModel:
    """1x5x5 -> conv 1->2 3x3 pad 1 (2x5x5) -> relu -> maxpool 2x2/2 (2x2x2) -> flatten (8) -> dense 8->3."""
    conv = Conv2d(torch.full((2, 1, 3, 3), 128), torch.zeros(2, dtype=torch.int64), U8, U8, I32, U8,
                  stride=(1, 1), padding=(1, 1))
    return DeployedModel((1, 5, 5), U8, (conv, ReLU(U8), MaxPool(U8, (2, 2), (2, 2)), Flatten(U8), dense(8, 3)))


def rows(plan):
    return {b.name: (b.kind, b.nbytes, b.first, b.last) for b in plan.buffers}


def per_step(plan):
    return [plan.bytes_at(s) for s in plan.steps]


# ---------------------------------------------------------------- MLP, last layer, each precision

# Last layer trained (L = 2): the input dies at step 0; the ReLU output is the trained layer's input
# (kept to its backward at 4; the ReLU itself is below L, so no mask); the logits are made by layer 2 >= L,
# so they live past the loss to layer 2's own backward at 4 (saturation rule; was 2..3);
# the error at the logits lives from the loss to layer 2's backward; a 3-value int32 gradient row at 4;
# standardize keeps mean + variance of 2 rows (16 B) and e_max (8 B, a double; was 4).
LAST_CASES = {
    # precision: (activation bytes per value, error bytes per value, weight bytes, bias bytes)
    "uint8": (1, 1, 6, 8),
    "mixed": (1, 4, 6, 8),
    "float32": (4, 4, 24, 8),
}


@pytest.mark.parametrize("precision", PRECISIONS)
def test_mlp_last_layer_by_hand(precision):
    a, e, w, b = LAST_CASES[precision]
    plan = training_plan(mlp(), LAST, precision)
    assert rows(plan) == {
        "input": ("activation", 4 * a, 0, 0),
        "0.dense.out": ("activation", 3 * a, 0, 4),
        "2.dense.out": ("activation", 2 * a, 2, 4),
        "err.2.dense.out": ("error", 2 * e, 3, 4),
        "2.weight.ram": ("weights", w, 0, 7),
        "2.bias.ram": ("weights", b, 0, 7),
        "2.weight.grad_row": ("gradient", 12, 4, 4),
        "2.weight.row_stats": ("optimizer", 16, 0, 7),
        "2.e_max": ("optimizer", 8, 0, 7),
    }
    state = w + b + 16 + 8
    # step 4 now also holds the logits: ReLU out 3a + logits 2a + error 2e + row 12
    assert per_step(plan) == [7 * a + state, 3 * a + state, 5 * a + state, 5 * a + 2 * e + state,
                              5 * a + 2 * e + 12 + state, state, state, state]
    assert plan.peak_step() == 4
    # uint8: 5 + 2 + 12 + (6 + 8 + 16 + 8) = 57; mixed: 5 + 8 + 12 + 38 = 63;
    # float32: 20 + 8 + 12 + (24 + 8 + 16 + 8) = 96
    assert plan.peak_bytes() == {"uint8": 57, "mixed": 63, "float32": 96}[precision]


def test_mlp_last_layer_summary():
    s = training_memory(mlp(), LAST, "uint8")
    # step 4: activations ReLU out 3 + logits 2; optimizer row_stats 16 + e_max 8
    assert (s["train_ram_bytes"], s["peak_step"]) == (57, 4)
    assert s["by_kind"] == {"activation": 5, "error": 2, "weights": 14, "gradient": 12, "optimizer": 24}
    assert sum(s["by_kind"].values()) == s["train_ram_bytes"]
    assert s["flash_bytes"] == 48
    assert {"name": "2.weight.grad_row", "kind": "gradient", "nbytes": 12, "first": 4, "last": 4} in s["buffers"]
    assert len(s["buffers"]) == 9


# ---------------------------------------------------------------- MLP, both layers

def test_mlp_both_layers_by_hand():
    # L = 0: the input is layer 0's weight-gradient input (kept to 6); the ReLU output is layer 0's own
    # output (kept to its backward at 6 by the saturation rule; was 5), the ReLU mask (to 5) and layer 2's
    # input (to 4); the logits are layer 2's output (kept to 4; was 3); the error chain runs from the loss
    # (2 B at 3..4) through layer 2's backward, which makes the 3 B error at the ReLU output, carried
    # in place through the ReLU backward down to layer 0 (4..6). Layer 0 makes no input error.
    plan = training_plan(mlp(), BOTH, "uint8")
    assert rows(plan) == {
        "input": ("activation", 4, 0, 6),
        "0.dense.out": ("activation", 3, 0, 6),
        "2.dense.out": ("activation", 2, 2, 4),
        "err.2.dense.out": ("error", 2, 3, 4),
        "err.1.relu.out": ("error", 3, 4, 6),
        "0.weight.ram": ("weights", 12, 0, 7),
        "0.bias.ram": ("weights", 12, 0, 7),
        "2.weight.ram": ("weights", 6, 0, 7),
        "2.bias.ram": ("weights", 8, 0, 7),
        "0.weight.grad_row": ("gradient", 16, 6, 6),
        "2.weight.grad_row": ("gradient", 12, 4, 4),
        "0.weight.row_stats": ("optimizer", 24, 0, 7),
        "2.weight.row_stats": ("optimizer", 16, 0, 7),
        "0.e_max": ("optimizer", 8, 0, 7),
        "2.e_max": ("optimizer", 8, 0, 7),
    }
    state = 38 + 56  # weights 12 + 12 + 6 + 8; optimizer row_stats 24 + 16, e_max 8 + 8
    # step 4: activations 4 + 3 + 2 (logits now alive), errors 2 + 3, row 12 = 26 (was 24)
    # step 6: input 4 + ReLU out 3 (now alive) + error 3 + row 16 = 26 (was 23)
    assert per_step(plan) == [7 + state, 7 + state, 9 + state, 11 + state, 26 + state, 10 + state,
                              26 + state, state]
    assert (plan.peak_bytes(), plan.peak_step()) == (120, 4)  # steps 4 and 6 tie; the earliest wins
    assert plan.by_kind() == {"activation": 9, "error": 5, "weights": 38, "gradient": 12, "optimizer": 56}


def test_bias_only_keeps_no_input_row_or_weight_copy():
    # biases of both layers: no weight gradient, so no input is kept for it and no gradient row;
    # the ReLU mask is still needed to carry the error from layer 2 down to layer 0, and each layer's
    # own output is kept to its backward for the saturation rule (ReLU out to 6, logits to 4).
    plan = training_plan(mlp(), ("0.bias", "2.bias"), "uint8")
    assert rows(plan) == {
        "input": ("activation", 4, 0, 0),
        "0.dense.out": ("activation", 3, 0, 6),
        "2.dense.out": ("activation", 2, 2, 4),
        "err.2.dense.out": ("error", 2, 3, 4),
        "err.1.relu.out": ("error", 3, 4, 6),
        "0.bias.ram": ("weights", 12, 0, 7),
        "2.bias.ram": ("weights", 8, 0, 7),
        "0.e_max": ("optimizer", 8, 0, 7),
        "2.e_max": ("optimizer", 8, 0, 7),
    }
    # state 12 + 8 + 8 + 8 = 36; on top: step 0 input 4 + ReLU out 3; 1: 3; 2: 3 + 2; 3: 3 + 2 + 2;
    # 4: 3 + 2 + 2 + 3; 5: 3 + 3; 6: 3 + 3 (ReLU out now to 6); 7: nothing
    assert per_step(plan) == [43, 39, 41, 43, 46, 42, 42, 36]
    assert (plan.peak_bytes(), plan.peak_step()) == (46, 4)


def test_accumulate_gives_persistent_gradients():
    plan = training_plan(mlp(), LAST, "uint8", accumulate=4)
    r = rows(plan)
    assert r["2.weight.grad"] == ("gradient", 24, 0, 7) and r["2.bias.grad"] == ("gradient", 8, 0, 7)
    assert not any(name.endswith("grad_row") for name in r)
    # state 14 weights + 32 gradients + 24 optimizer (row_stats 16 + e_max 8) = 70; on top 7 at step 0
    # (input 4 + ReLU out 3), step 3 (3 + logits 2 + error 2) and step 4 (the logits now live to 4)
    assert per_step(plan) == [77, 73, 75, 77, 77, 70, 70, 70]
    assert (plan.peak_bytes(), plan.peak_step()) == (77, 0)
    assert plan.by_kind() == {"activation": 7, "weights": 14, "gradient": 32, "optimizer": 24}


# ---------------------------------------------------------------- int16 block-float gradient buffer

def test_int16_grad_buffer_by_hand():
    # accumulate 4, grad_buffer int16 (train.fqt.blockfloat): instead of 4 B per trained value (24 + 8 = 32 B),
    # int16 mantissas 2 B per value: weight 6 x 2 = 12, bias 2 x 2 = 4; one exponent byte per weight row (2 rows:
    # 2 B) and one for the bias vector (1 B): 19 B persistent. A sample's block must be complete before its shared
    # exponent is chosen, so layer 2's backward (step 4) also holds it in int32: one weight row 3 x 4 = 12 B and
    # the whole bias vector 2 x 4 = 8 B.
    plan = training_plan(mlp(), LAST, "uint8", accumulate=4, grad_buffer="int16")
    r = rows(plan)
    assert {k: v for k, v in r.items() if v[0] == "gradient"} == {
        "2.weight.grad": ("gradient", 12, 0, 7),
        "2.weight.grad_exp": ("gradient", 2, 0, 7),
        "2.weight.grad_row": ("gradient", 12, 4, 4),
        "2.bias.grad": ("gradient", 4, 0, 7),
        "2.bias.grad_exp": ("gradient", 1, 0, 7),
        "2.bias.grad_row": ("gradient", 8, 4, 4),
    }
    int32 = rows(training_plan(mlp(), LAST, "uint8", accumulate=4))
    assert {k: v for k, v in r.items() if v[0] != "gradient"} == {k: v for k, v in int32.items() if v[0] != "gradient"}
    # state 14 weights + 19 gradient + 24 optimizer = 57; on top as in test_accumulate_gives_persistent_gradients
    # (7, 3, 5, 7, 7 at steps 0..4) and the two int32 blocks (20 B) at step 4. On this tiny layer the blocks cost
    # more than the buffer saves (int32: 77 at step 0).
    assert per_step(plan) == [64, 60, 62, 64, 84, 57, 57, 57]
    assert (plan.peak_bytes(), plan.peak_step()) == (84, 4)
    assert plan.by_kind() == {"activation": 5, "error": 2, "weights": 14, "gradient": 39, "optimizer": 24}
    offsets, arena = plan.layout()
    assert arena >= 84 and arena % 8 == 0
    assert all(offsets[b.name] % b.align == 0 for b in plan.buffers)
    assert {b.name: b.align for b in plan.buffers if b.kind == "gradient"} == {
        "2.weight.grad": 2, "2.weight.grad_exp": 1, "2.weight.grad_row": 4,
        "2.bias.grad": 2, "2.bias.grad_exp": 1, "2.bias.grad_row": 4}


def test_int16_grad_buffer_conv_net_by_hand():
    # all trained, accumulate 8. Trained values: 0.weight 18 (2 filters of 9), 0.bias 2, 4.weight 24 (3 rows of 8),
    # 4.bias 3. int32: 4 x 47 = 188 B. int16: 2 x 47 = 94 B of mantissas + exponents 2 + 1 + 3 + 1 = 7 B: 101 B.
    # int32 blocks at the backward steps: layer 4 (step 6) a row 8 x 4 = 32 + bias 3 x 4 = 12 = 44 B; layer 0
    # (step 10) a filter 9 x 4 = 36 + bias 2 x 4 = 8 = 44 B.
    # Without gradients, per step (test_conv_net_keeps_maxpool_input_by_hand less its grad rows):
    # [75, 75, 83, 83, 86, 89, 97, 83, 133, 125, 125, 0] + 118 (weights 62 + optimizer 56).
    model, names = conv_net(), ("0.weight", "0.bias", "4.weight", "4.bias")
    bfp = training_plan(model, names, "uint8", accumulate=8, grad_buffer="int16")
    base = [75, 75, 83, 83, 86, 89, 97, 83, 133, 125, 125, 0]
    blocks = [0, 0, 0, 0, 0, 0, 44, 0, 0, 0, 44, 0]
    assert per_step(bfp) == [v + 118 + 101 + k for v, k in zip(base, blocks, strict=True)]
    assert (bfp.peak_bytes(), bfp.peak_step()) == (125 + 118 + 101 + 44, 10)  # 388
    int32 = training_plan(model, names, "uint8", accumulate=8)
    assert per_step(int32) == [v + 118 + 188 for v in base]
    assert (int32.peak_bytes(), int32.peak_step()) == (133 + 118 + 188, 8)  # 439
    s = training_memory(model, names, "uint8", accumulate=8, grad_buffer="int16")
    assert (s["train_ram_bytes"], s["by_kind"]["gradient"]) == (388, 101 + 44)
    # a device with 400 B of SRAM fits the int16 buffer but not the int32 one
    dev = SimpleNamespace(name="mcu400", sram_bytes=400, flash_bytes=10_000)
    assert check_training_fits(model, names, "uint8", dev, accumulate=8, grad_buffer="int16").ok
    with pytest.raises(DoesNotFit, match="mcu400"):
        check_training_fits(model, names, "uint8", dev, accumulate=8)


@pytest.mark.parametrize("precision, accumulate, grad_buffer, match", [
    ("uint8", 4, "int8", r"grad_buffer 'int8'.*'int32', 'int16'"),
    ("mixed", 4, "int16", r"grad_buffer 'int16'.*precision 'uint8'.*'mixed'"),
    ("float32", 4, "int16", r"grad_buffer 'int16'.*precision 'uint8'.*'float32'"),
    ("uint8", 1, "int16", r"grad_buffer 'int16'.*accumulate/batch 1"),
])
def test_bad_grad_buffer(precision, accumulate, grad_buffer, match):
    with pytest.raises(ValueError, match=match):
        training_plan(mlp(), LAST, precision, accumulate=accumulate, grad_buffer=grad_buffer)
    with pytest.raises(ValueError, match=match):
        training_memory(mlp(), LAST, precision, accumulate=accumulate, grad_buffer=grad_buffer)


# peak at step 4 = 33 (activations 5 + error 2 + row 12 + weights 14) + optimizer bytes
@pytest.mark.parametrize("optimizer, momentum, optimizer_bytes, peak", [
    ("standardize", False, 16 + 8, 57),  # row_stats + e_max
    ("sgd", False, 8, 41),               # e_max only (a double)
    ("qas", False, 8, 41),
    ("sgd", True, 8 + 32, 73),           # momentum: 4 B x (6 + 2) trained values
    ("qas", True, 8 + 32, 73),
    ("standardize", True, 24 + 32, 89),
])
def test_optimizer_state(optimizer, momentum, optimizer_bytes, peak):
    s = training_memory(mlp(), LAST, "uint8", optimizer=optimizer, momentum=momentum)
    assert s["by_kind"]["optimizer"] == optimizer_bytes
    assert (s["train_ram_bytes"], s["peak_step"]) == (peak, 4)
    names = {b["name"] for b in s["buffers"]}
    assert ("2.weight.momentum" in names) == momentum and ("2.bias.momentum" in names) == momentum


def test_batch_doubles_activations_and_errors_only():
    one = training_plan(mlp(), BOTH, "uint8")
    two = training_plan(mlp(), BOTH, "uint8", batch=2)
    for b1, b2 in zip(one.buffers, two.buffers, strict=True):
        factor = 2 if b1.kind in ("activation", "error") else 1
        assert (b2.name, b2.nbytes, b2.first, b2.last) == (b1.name, factor * b1.nbytes, b1.first, b1.last)
    # step 4: 2 x (4 + 3 + 2 + 2 + 3) (input, ReLU out, logits, two errors) + 12 row + 94 state
    assert (two.peak_bytes(), two.peak_step()) == (134, 4)


# ---------------------------------------------------------------- conv net

def test_conv_net_keeps_maxpool_input_by_hand():
    # all trained (L = 0). Conv out 50 B is the conv's own output (to its backward at 10; was 9), the ReLU
    # mask (to 9) and the MaxPool input (to 8); pool out 8 B (Flatten in place) is the dense input (to 6);
    # the logits are the dense's own output (to 6; was 5). Errors: logits 3 B (5..6); the
    # dense backward makes 8 B at the Flatten output, carried through the Flatten backward to the
    # MaxPool (6..8); the MaxPool backward makes 50 B at the ReLU output, carried to the conv (8..10).
    plan = training_plan(conv_net(), ("0.weight", "0.bias", "4.weight", "4.bias"), "uint8")
    assert rows(plan) == {
        "input": ("activation", 25, 0, 10),
        "0.conv2d.out": ("activation", 50, 0, 10),
        "2.maxpool.out": ("activation", 8, 2, 6),
        "4.dense.out": ("activation", 3, 4, 6),
        "err.4.dense.out": ("error", 3, 5, 6),
        "err.3.flatten.out": ("error", 8, 6, 8),
        "err.1.relu.out": ("error", 50, 8, 10),
        "0.weight.ram": ("weights", 18, 0, 11),
        "0.bias.ram": ("weights", 8, 0, 11),
        "4.weight.ram": ("weights", 24, 0, 11),
        "4.bias.ram": ("weights", 12, 0, 11),
        "0.weight.grad_row": ("gradient", 36, 10, 10),   # one filter: 1 x 3 x 3 int32
        "4.weight.grad_row": ("gradient", 32, 6, 6),
        "0.weight.row_stats": ("optimizer", 16, 0, 11),
        "4.weight.row_stats": ("optimizer", 24, 0, 11),
        "0.e_max": ("optimizer", 8, 0, 11),
        "4.e_max": ("optimizer", 8, 0, 11),
    }
    state = 62 + 56  # weights 18 + 8 + 24 + 12; optimizer row_stats 16 + 24, e_max 8 + 8
    # step 6: 25 + 50 + 8 + logits 3 (now alive) + errors 3 + 8 + row 32 = 129 (was 126)
    # step 8: 25 + 50 + errors 8 + 50 = 133; step 10: input 25 + conv out 50 (now alive) + error 50 + row 36 = 161
    assert per_step(plan) == [75 + state, 75 + state, 83 + state, 83 + state, 86 + state, 89 + state,
                              129 + state, 83 + state, 133 + state, 125 + state, 161 + state, state]
    # the peak moves from the MaxPool backward (step 8) to the conv's backward (step 10)
    assert (plan.peak_bytes(), plan.peak_step()) == (279, 10)
    assert step_label(conv_net(), 10) == "backward of layer 0 (conv2d)"
    assert plan.by_kind() == {"activation": 75, "error": 50, "weights": 62, "gradient": 36, "optimizer": 56}


def test_conv_net_last_layer_only_is_inference_plus_the_top():
    # L = 4: the pool output (dense input) and the logits (the dense's own output) are kept to 6; nothing
    # below the dense is kept or gets an error
    plan = training_plan(conv_net(), ("4.weight", "4.bias"), "uint8")
    r = rows(plan)
    inf = {b.name: (b.nbytes, b.first, b.last) for b in inference_plan(conv_net()).buffers}
    assert r["input"][1:] == inf["input"] and r["0.conv2d.out"][1:] == inf["0.conv2d.out"]
    assert r["2.maxpool.out"] == ("activation", 8, 2, 6)
    assert r["4.dense.out"] == ("activation", 3, 4, 6)
    assert [n for n, v in r.items() if v[0] == "error"] == ["err.4.dense.out"]


@pytest.mark.parametrize("model, trained", [
    (mlp(), LAST), (mlp(), BOTH), (mlp(), ("0.bias", "2.bias")),
    (conv_net(), ("4.weight", "4.bias")), (conv_net(), ("0.weight", "0.bias", "4.weight", "4.bias")),
])
def test_uint8_peak_below_mixed_and_float32(model, trained):
    peaks = {p: training_memory(model, trained, p)["train_ram_bytes"] for p in PRECISIONS}
    assert peaks["uint8"] < peaks["float32"]
    assert peaks["uint8"] <= peaks["mixed"] <= peaks["float32"]


# ---------------------------------------------------------------- flash and fits

def test_training_flash_bytes():
    # uint8/mixed: weights 12 + 6, biases 3*4 + 2*4, two requant pairs of 5 B
    assert training_flash_bytes(mlp(), "uint8") == training_flash_bytes(mlp(), "mixed") == flash_bytes(mlp()) == 48
    assert training_flash_bytes(mlp(), "float32") == 4 * 23
    # the RAM weight copies are the trained parameters at their stored size
    weights = training_memory(mlp(), BOTH, "uint8")["by_kind"]["weights"]
    assert weights == param_bytes(mlp(), BOTH) == 38


def test_check_training_fits():
    tiny = SimpleNamespace(name="tinymcu", sram_bytes=40, flash_bytes=10_000)
    with pytest.raises(DoesNotFit) as info:
        check_training_fits(mlp(), LAST, "uint8", tiny)
    text = str(info.value)
    assert "tinymcu" in text and "step 4" in text and "2.weight.grad_row" in text and "err.2.dense.out" in text
    assert "backward of layer 2" in text
    assert not info.value.report.ok and info.value.plan.peak_bytes() == 57  # test_mlp_last_layer_by_hand
    assert isinstance(info.value, ValueError)

    # RAM fits, flash does not: the message still names the peak step and its buffers
    no_flash = SimpleNamespace(name="noflash", sram_bytes=1_000, flash_bytes=10)
    with pytest.raises(DoesNotFit, match=r"noflash[\s\S]*flash[\s\S]*step 4.*2\.weight\.ram"):
        check_training_fits(mlp(), iter(LAST), "uint8", no_flash)

    big = SimpleNamespace(name="bigmcu", sram_bytes=57, flash_bytes=48)
    report = check_training_fits(mlp(), LAST, "uint8", big)
    assert report.ok and str(report) == "fits on bigmcu"


# ---------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("trained, kwargs, match", [
    (("2.weight", "9.bias"), {}, r"9\.bias"),
    (("1.weight",), {}, r"1\.weight"),
    ((), {}, "no trained parameters"),
    ("2.weight", {}, "string '2.weight'"),
    (LAST, {"precision": "int4"}, r"int4.*uint8.*mixed.*float32"),
    (LAST, {"optimizer": "adam"}, r"adam.*standardize.*sgd.*qas"),
    (LAST, {"accumulate": 0}, "accumulate"),
    (LAST, {"accumulate": 1.5}, "accumulate"),
    (LAST, {"batch": 0}, "batch"),
    (LAST, {"batch": True}, "batch"),
])
def test_bad_inputs(trained, kwargs, match):
    kwargs = dict(kwargs)
    precision = kwargs.pop("precision", "uint8")
    with pytest.raises(ValueError, match=match):
        training_plan(mlp(), trained, precision, **kwargs)


def test_bad_precision_everywhere():
    with pytest.raises(ValueError, match="fp16"):
        training_flash_bytes(mlp(), "fp16")
    with pytest.raises(ValueError, match="fp16"):
        training_memory(mlp(), LAST, "fp16")
    with pytest.raises(ValueError, match="step 8"):
        step_label(mlp(), 8)
    assert OPTIMIZERS == ("standardize", "sgd", "qas")


def test_step_labels():
    assert [step_label(mlp(), s) for s in range(8)] == [
        "forward of layer 0 (dense)", "forward of layer 1 (relu)", "forward of layer 2 (dense)", "loss",
        "backward of layer 2 (dense)", "backward of layer 1 (relu)", "backward of layer 0 (dense)", "weight update"]

"""Peak RAM of fully quantized training (``cost.training_memory``) against hand counts on tiny models.

Step axis of the 3-layer MLP (n = 3): forward 0..2, loss 3, backward of layer 2/1/0 at 4/5/6, update 7.
Step axis of the 5-layer conv net (n = 5): forward 0..4, loss 5, backward of layer i at 10 - i, update 11.
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
# (kept to its backward at 4; the ReLU itself is below L, so no mask); the logits live to the loss;
# the error at the logits lives from the loss to layer 2's backward; a 3-value int32 gradient row at 4;
# standardize keeps mean + variance of 2 rows (16 B) and e_max (4 B).
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
        "2.dense.out": ("activation", 2 * a, 2, 3),
        "err.2.dense.out": ("error", 2 * e, 3, 4),
        "2.weight.ram": ("weights", w, 0, 7),
        "2.bias.ram": ("weights", b, 0, 7),
        "2.weight.grad_row": ("gradient", 12, 4, 4),
        "2.weight.row_stats": ("optimizer", 16, 0, 7),
        "2.e_max": ("optimizer", 4, 0, 7),
    }
    state = w + b + 16 + 4
    assert per_step(plan) == [7 * a + state, 3 * a + state, 5 * a + state, 5 * a + 2 * e + state,
                              3 * a + 2 * e + 12 + state, state, state, state]
    assert plan.peak_step() == 4
    assert plan.peak_bytes() == {"uint8": 51, "mixed": 57, "float32": 84}[precision]


def test_mlp_last_layer_summary():
    s = training_memory(mlp(), LAST, "uint8")
    assert (s["train_ram_bytes"], s["peak_step"]) == (51, 4)
    assert s["by_kind"] == {"activation": 3, "error": 2, "weights": 14, "gradient": 12, "optimizer": 20}
    assert sum(s["by_kind"].values()) == s["train_ram_bytes"]
    assert s["flash_bytes"] == 48
    assert {"name": "2.weight.grad_row", "kind": "gradient", "nbytes": 12, "first": 4, "last": 4} in s["buffers"]
    assert len(s["buffers"]) == 9


# ---------------------------------------------------------------- MLP, both layers

def test_mlp_both_layers_by_hand():
    # L = 0: the input is layer 0's weight-gradient input (kept to 6); the ReLU output is its mask
    # (kept to the ReLU backward at 5) and layer 2's input (to 4); the error chain runs from the loss
    # (2 B at 3..4) through layer 2's backward, which makes the 3 B error at the ReLU output, carried
    # in place through the ReLU backward down to layer 0 (4..6). Layer 0 makes no input error.
    plan = training_plan(mlp(), BOTH, "uint8")
    assert rows(plan) == {
        "input": ("activation", 4, 0, 6),
        "0.dense.out": ("activation", 3, 0, 5),
        "2.dense.out": ("activation", 2, 2, 3),
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
        "0.e_max": ("optimizer", 4, 0, 7),
        "2.e_max": ("optimizer", 4, 0, 7),
    }
    state = 38 + 48
    assert per_step(plan) == [7 + state, 7 + state, 9 + state, 11 + state, 24 + state, 10 + state,
                              23 + state, state]
    assert (plan.peak_bytes(), plan.peak_step()) == (110, 4)
    assert plan.by_kind() == {"activation": 7, "error": 5, "weights": 38, "gradient": 12, "optimizer": 48}


def test_bias_only_keeps_no_input_row_or_weight_copy():
    # biases of both layers: no weight gradient, so no input is kept for it and no gradient row;
    # the ReLU mask is still needed to carry the error from layer 2 down to layer 0.
    plan = training_plan(mlp(), ("0.bias", "2.bias"), "uint8")
    assert rows(plan) == {
        "input": ("activation", 4, 0, 0),
        "0.dense.out": ("activation", 3, 0, 5),
        "2.dense.out": ("activation", 2, 2, 3),
        "err.2.dense.out": ("error", 2, 3, 4),
        "err.1.relu.out": ("error", 3, 4, 6),
        "0.bias.ram": ("weights", 12, 0, 7),
        "2.bias.ram": ("weights", 8, 0, 7),
        "0.e_max": ("optimizer", 4, 0, 7),
        "2.e_max": ("optimizer", 4, 0, 7),
    }
    assert per_step(plan) == [35, 31, 33, 35, 36, 34, 31, 28]
    assert (plan.peak_bytes(), plan.peak_step()) == (36, 4)


def test_accumulate_gives_persistent_gradients():
    plan = training_plan(mlp(), LAST, "uint8", accumulate=4)
    r = rows(plan)
    assert r["2.weight.grad"] == ("gradient", 24, 0, 7) and r["2.bias.grad"] == ("gradient", 8, 0, 7)
    assert not any(name.endswith("grad_row") for name in r)
    # state 14 weights + 32 gradients + 20 optimizer = 66; step 0 (input + ReLU out) = step 3 = 73
    assert per_step(plan) == [73, 69, 71, 73, 71, 66, 66, 66]
    assert (plan.peak_bytes(), plan.peak_step()) == (73, 0)
    assert plan.by_kind() == {"activation": 7, "weights": 14, "gradient": 32, "optimizer": 20}


@pytest.mark.parametrize("optimizer, momentum, optimizer_bytes, peak", [
    ("standardize", False, 20, 51),
    ("sgd", False, 4, 35),           # e_max only
    ("qas", False, 4, 35),
    ("sgd", True, 4 + 32, 67),       # momentum: 4 B x (6 + 2) trained values
    ("qas", True, 4 + 32, 67),
    ("standardize", True, 20 + 32, 83),
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
    # step 4: 2 x (4 + 3 + 2 + 3) + 12 row + 86 state
    assert (two.peak_bytes(), two.peak_step()) == (122, 4)


# ---------------------------------------------------------------- conv net

def test_conv_net_keeps_maxpool_input_by_hand():
    # all trained (L = 0). Conv out 50 B is the ReLU mask (to 9) and the MaxPool input (to 8);
    # pool out 8 B (Flatten in place) is the dense input (to 6). Errors: logits 3 B (5..6); the
    # dense backward makes 8 B at the Flatten output, carried through the Flatten backward to the
    # MaxPool (6..8); the MaxPool backward makes 50 B at the ReLU output, carried to the conv (8..10).
    plan = training_plan(conv_net(), ("0.weight", "0.bias", "4.weight", "4.bias"), "uint8")
    assert rows(plan) == {
        "input": ("activation", 25, 0, 10),
        "0.conv2d.out": ("activation", 50, 0, 9),
        "2.maxpool.out": ("activation", 8, 2, 6),
        "4.dense.out": ("activation", 3, 4, 5),
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
        "0.e_max": ("optimizer", 4, 0, 11),
        "4.e_max": ("optimizer", 4, 0, 11),
    }
    state = 62 + 48
    assert per_step(plan) == [75 + state, 75 + state, 83 + state, 83 + state, 86 + state, 89 + state,
                              126 + state, 83 + state, 133 + state, 125 + state, 111 + state, state]
    assert (plan.peak_bytes(), plan.peak_step()) == (243, 8)
    assert step_label(conv_net(), 8) == "backward of layer 2 (maxpool)"
    assert plan.by_kind() == {"activation": 75, "error": 58, "weights": 62, "optimizer": 48}


def test_conv_net_last_layer_only_is_inference_plus_the_top():
    # L = 4: the pool output (dense input) is kept to 6; nothing below the dense is kept or gets an error
    plan = training_plan(conv_net(), ("4.weight", "4.bias"), "uint8")
    r = rows(plan)
    inf = {b.name: (b.nbytes, b.first, b.last) for b in inference_plan(conv_net()).buffers}
    assert r["input"][1:] == inf["input"] and r["0.conv2d.out"][1:] == inf["0.conv2d.out"]
    assert r["2.maxpool.out"] == ("activation", 8, 2, 6)
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
    assert not info.value.report.ok and info.value.plan.peak_bytes() == 51
    assert isinstance(info.value, ValueError)

    # RAM fits, flash does not: the message still names the peak step and its buffers
    no_flash = SimpleNamespace(name="noflash", sram_bytes=1_000, flash_bytes=10)
    with pytest.raises(DoesNotFit, match=r"noflash[\s\S]*flash[\s\S]*step 4.*2\.weight\.ram"):
        check_training_fits(mlp(), iter(LAST), "uint8", no_flash)

    big = SimpleNamespace(name="bigmcu", sram_bytes=51, flash_bytes=48)
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

"""Static arena placement (``MemoryPlan.layout``) against hand-placed plans, and its invariants.

The rule being checked: buffers are placed largest first (ties by first step, then name), each at the lowest
offset that is a multiple of its ``align`` and overlaps no already placed buffer alive at a common step; the
arena is the highest end, rounded up to 8. Offsets below are placed by hand in that order.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgetrain.cost import PRECISIONS, Buffer, MemoryPlan, training_memory, training_plan
from edgetrain.model import Conv2d, Dense, DeployedModel, Flatten, MaxPool, ReLU
from edgetrain.quant import Affine

PROPERTY = settings(max_examples=200, deadline=None, derandomize=True, database=None)

U8 = Affine(8, False, (0.1,), (128,))
I32 = Affine(32, True, (0.01,), (0,))


def plan_of(*specs) -> MemoryPlan:
    """``(name, nbytes, first, last[, align])`` tuples as a plan."""
    return MemoryPlan(tuple(Buffer(s[0], s[1], s[2], s[3], align=s[4] if len(s) > 4 else 1) for s in specs))


def assert_valid(plan: MemoryPlan, offsets: dict[str, int], arena: int) -> None:
    """Every buffer aligned and inside the arena; no two with a common step share a byte."""
    assert set(offsets) == {b.name for b in plan.buffers}
    for b in plan.buffers:
        assert offsets[b.name] >= 0 and offsets[b.name] % b.align == 0, b
        assert offsets[b.name] + b.nbytes <= arena, b
    for p, q in itertools.combinations(plan.buffers, 2):
        if p.first <= q.last and q.first <= p.last:  # alive at a common step
            op, oq = offsets[p.name], offsets[q.name]
            assert op + p.nbytes <= oq or oq + q.nbytes <= op, (p, op, q, oq)
    assert arena % 8 == 0 and arena >= plan.peak_bytes()


# ---------------------------------------------------------------- hand-placed plans

def test_empty_plan():
    assert MemoryPlan().layout() == ({}, 0)


def test_two_ends_share_an_offset_and_the_middle_goes_above():
    # a (100, 0..1) -> 0; c (100, 2..3) shares no step with a -> 0; b (60, 1..2) meets both -> 100
    plan = plan_of(("a", 100, 0, 1), ("b", 60, 1, 2, 4), ("c", 100, 2, 3))
    assert plan.layout() == ({"a": 0, "b": 100, "c": 0}, 160)
    assert plan.peak_bytes() == 160


def test_alignment_by_hand():
    # order z (8), x (5), y (4), w (3). z -> 0; x meets z -> 8 (ends 13); y (align 4) meets z and x:
    # 13 rounds up to 16; w (3..3) meets nothing -> 0. Highest end 20 -> arena 24; peak 17 at step 1.
    plan = plan_of(("x", 5, 0, 2), ("y", 4, 0, 2, 4), ("z", 8, 1, 1, 8), ("w", 3, 3, 3))
    assert plan.layout() == ({"x": 8, "y": 16, "z": 0, "w": 0}, 24)
    assert plan.peak_bytes() == 17


def test_hole_is_filled_unless_alignment_forbids_it():
    # order A (30), B (20), C (10, 0..1), D (10, 1..2), E (4).
    # A -> 0; B shares no step with A -> 0; C meets A [0,30) and B [0,20) -> 30;
    # D meets B [0,20) and C [30,40): the hole 20..30 takes it; E meets only D -> 0. Arena 40 = peak.
    specs = [("A", 30, 0, 0), ("B", 20, 1, 1), ("C", 10, 0, 1), ("D", 10, 1, 2), ("E", 4, 2, 2, 8)]
    plan = plan_of(*specs)
    assert plan.layout() == ({"A": 0, "B": 0, "C": 30, "D": 20, "E": 0}, 40)
    assert plan.peak_bytes() == 40
    # D aligned to 8: 20 rounds up to 24, 24 + 10 > 30, so D goes past C to 40; arena 50 -> 56
    specs[3] = ("D", 10, 1, 2, 8)
    assert plan_of(*specs).layout() == ({"A": 0, "B": 0, "C": 30, "D": 40, "E": 0}, 56)


def test_ties_by_first_step_then_name():
    # all 16 B: a (0..1) before b (0..1) by name, c (1..2) last by first step; listed in reverse
    plan = plan_of(("c", 16, 1, 2), ("b", 16, 0, 1), ("a", 16, 0, 1))
    offsets, arena = plan.layout()
    assert offsets == {"a": 0, "b": 16, "c": 32} and arena == 48
    assert list(offsets) == ["c", "b", "a"]  # reported in the plan's order


def test_zero_size_buffers_take_offset_zero_and_block_nothing():
    plan = plan_of(("empty", 0, 0, 5, 8), ("a", 8, 0, 5), ("also_empty", 0, 2, 3), ("b", 8, 1, 1))
    assert plan.layout() == ({"empty": 0, "a": 0, "also_empty": 0, "b": 8}, 16)


def test_disjoint_lifetimes_all_at_zero_and_arena_is_the_peak():
    plan = plan_of(("s0", 24, 0, 0), ("s1", 64, 1, 2, 8), ("s2", 8, 3, 3, 4), ("s3", 40, 4, 7))
    offsets, arena = plan.layout()
    assert set(offsets.values()) == {0}
    assert arena == plan.peak_bytes() == 64


def test_ping_pong_chain_arena_is_the_peak():
    # each buffer made at step k and read at k + 1. Order 128, 64, 32, 16, 8:
    # 128 (2..3) -> 0; 64 (0..1) shares no step with it -> 0; 32 (1..2) meets both -> 128;
    # 16 (3..4) meets 128 -> 128; 8 (4..5) meets only 16 [128,144) -> 0. Highest end 160 = peak (32 + 128).
    plan = plan_of(("b0", 64, 0, 1), ("b1", 32, 1, 2, 4), ("b2", 128, 2, 3, 8), ("b3", 16, 3, 4), ("b4", 8, 4, 5))
    assert plan.layout() == ({"b0": 0, "b1": 128, "b2": 0, "b3": 128, "b4": 0}, 160)
    assert plan.peak_bytes() == 160


def test_greedy_arena_can_exceed_the_peak():
    # The placement is greedy, not optimal: order a (10), b (9, first 1), d (9, first 3), c (8), e (1).
    # a -> 0; b meets a -> 10 (ends 19); d meets neither c nor e yet -> 0; c meets d [0,9) and b [10,19):
    # 9 + 8 > 10, so c goes to 19 (ends 27); e meets d -> 9. Arena 27 -> 32 while the peak is 19 (a + b).
    plan = plan_of(("a", 10, 0, 1), ("b", 9, 1, 2), ("c", 8, 2, 3), ("d", 9, 3, 4), ("e", 1, 4, 5))
    assert plan.layout() == ({"a": 0, "b": 10, "c": 19, "d": 0, "e": 9}, 32)
    assert plan.peak_bytes() == 19


def test_duplicate_names_raise():
    plan = plan_of(("a", 4, 0, 0), ("a", 8, 1, 1))
    with pytest.raises(ValueError, match="unique"):
        plan.layout()


@pytest.mark.parametrize("align", [0, 3, 5, 16, -4])
def test_bad_alignment_raises(align):
    with pytest.raises(ValueError, match="alignment"):
        Buffer("x", 4, 0, 0, align=align)


# ---------------------------------------------------------------- properties over random plans

@st.composite
def plans(draw, max_buffers: int = 12) -> MemoryPlan:
    n = draw(st.integers(0, max_buffers))
    buffers = []
    for k in range(n):
        first = draw(st.integers(0, 10))
        last = draw(st.integers(first, 10))
        buffers.append(Buffer(f"b{k}", draw(st.integers(0, 300)), first, last,
                              align=draw(st.sampled_from((1, 4, 8)))))
    return MemoryPlan(tuple(buffers))


@PROPERTY
@given(plans())
def test_layout_is_valid(plan):
    offsets, arena = plan.layout()
    assert_valid(plan, offsets, arena)
    # the arena is the highest end rounded up to 8, and every offset is at most the overlapping sizes
    # (each rounded up by its alignment) below it
    top = max((offsets[b.name] + b.nbytes for b in plan.buffers), default=0)
    assert arena - 8 < top <= arena
    assert arena <= -(-sum(b.nbytes + b.align - 1 for b in plan.buffers) // 8) * 8


@PROPERTY
@given(st.data())
def test_layout_is_deterministic_and_independent_of_listing_order(data):
    plan = data.draw(plans())
    assert plan.layout() == plan.layout()
    shuffled = MemoryPlan(tuple(data.draw(st.permutations(plan.buffers))))
    assert shuffled.layout() == plan.layout()  # dict equality: same offset for every name


@PROPERTY
@given(st.lists(st.integers(1, 30), min_size=1, max_size=10, unique=True), st.data())
def test_distinct_sizes_placed_the_same_whatever_the_order(sizes, data):
    # distinct sizes: the placement order is by size alone, so the names do not matter either
    spans = [data.draw(st.tuples(st.integers(0, 5), st.integers(0, 5)).map(sorted)) for _ in sizes]
    one = [Buffer(f"n{k}", 8 * s, a, b, align=8) for k, (s, (a, b)) in enumerate(zip(sizes, spans, strict=True))]
    offsets, arena = MemoryPlan(tuple(one)).layout()
    renamed = [Buffer(f"z{len(one) - k}", b.nbytes, b.first, b.last, align=8) for k, b in enumerate(one)]
    offsets2, arena2 = MemoryPlan(tuple(reversed(renamed))).layout()
    assert arena2 == arena
    assert [offsets2[r.name] for r in renamed] == [offsets[b.name] for b in one]


@PROPERTY
@given(st.lists(st.integers(0, 40), min_size=1, max_size=10))
def test_disjoint_lifetimes_arena_is_the_rounded_peak(sizes):
    plan = MemoryPlan(tuple(Buffer(f"b{k}", s, k, k, align=8) for k, s in enumerate(sizes)))
    offsets, arena = plan.layout()
    assert set(offsets.values()) == {0}
    assert arena == -(-plan.peak_bytes() // 8) * 8 == -(-max(sizes) // 8) * 8


@PROPERTY
@given(st.lists(st.integers(1, 40), min_size=1, max_size=10, unique=True), st.booleans())
def test_monotone_ping_pong_chain_arena_is_the_rounded_peak(sizes, rising):
    # buffer k made at step k, read at k + 1, sizes (multiples of 8) strictly shrinking or growing along the
    # chain: the greedy order walks the chain from the big end, alternating offset 0 and the neighbour's size.
    # (With equal sizes the tie goes by first step, which walks a growing chain from the wrong end: sizes
    # 24, 24, 24, 32 give an arena of 72 for a peak of 56.)
    sizes = sorted(sizes, reverse=not rising)
    plan = MemoryPlan(tuple(Buffer(f"b{k}", 8 * s, k, k + 1, align=8) for k, s in enumerate(sizes)))
    offsets, arena = plan.layout()
    assert_valid(plan, offsets, arena)
    assert arena == plan.peak_bytes()


# ---------------------------------------------------------------- training plans

def dense(n_in: int, n_out: int) -> Dense:
    return Dense(torch.full((n_out, n_in), 128), torch.zeros(n_out, dtype=torch.int64), U8, U8, I32, U8)


def conv(c_in: int, c_out: int) -> Conv2d:
    return Conv2d(torch.full((c_out, c_in, 3, 3), 128), torch.zeros(c_out, dtype=torch.int64), U8, U8, I32, U8,
                  stride=(1, 1), padding=(1, 1))


def mlp() -> DeployedModel:
    """4 -> dense 3 -> relu -> dense 2 (as in test_training_memory)."""
    return DeployedModel((4,), U8, (dense(4, 3), ReLU(U8), dense(3, 2)))


def conv_net() -> DeployedModel:
    """1x5x5 -> conv 1->2 3x3 pad 1 -> relu -> maxpool 2x2/2 -> flatten (8) -> dense 8->3 (test_training_memory's)."""
    return DeployedModel((1, 5, 5), U8, (conv(1, 2), ReLU(U8), MaxPool(U8, (2, 2), (2, 2)), Flatten(U8), dense(8, 3)))


def digits_net() -> DeployedModel:
    """1x8x8 -> conv 1->4 -> relu -> maxpool (4x4x4) -> conv 4->8 -> relu -> maxpool (8x2x2) -> flatten -> dense 32->10:
    the built-in cnn's shape on 8x8 digits, at width 4."""
    pool = MaxPool(U8, (2, 2), (2, 2))
    return DeployedModel((1, 8, 8), U8, (conv(1, 4), ReLU(U8), pool, conv(4, 8), ReLU(U8), pool, Flatten(U8),
                                         dense(32, 10)))


MLP_ALL = ("0.weight", "0.bias", "2.weight", "2.bias")
CONV_ALL = ("0.weight", "0.bias", "4.weight", "4.bias")
DIGITS_ALL = ("0.weight", "0.bias", "3.weight", "3.bias", "7.weight", "7.bias")


def test_mlp_last_layer_layout_by_hand():
    # Buffers (test_training_memory.test_mlp_last_layer_by_hand, uint8), placed in the order
    # row_stats 16 (0..7, align 4) -> 0; grad_row 12 (4..4, align 4) -> 16; bias.ram 8 (0..7, align 4): -> 28;
    # e_max 8 (0..7, align 8): 36 rounds up to 40; weight.ram 6 (0..7): 36 + 6 > 40, so 48;
    # input 4 (0..0; grad_row is not alive then): the gap 16..28 -> 16;
    # ReLU out 3 (0..4): the gap 36..40 -> 36; logits 2 (2..4): 39 + 2 > 40, so past weight.ram -> 54;
    # error 2 (3..4) -> 56. Highest end 58 -> arena 64 (peak 57).
    plan = training_plan(mlp(), ("2.weight", "2.bias"), "uint8")
    offsets, arena = plan.layout()
    assert offsets == {
        "2.weight.row_stats": 0, "2.weight.grad_row": 16, "2.bias.ram": 28, "2.e_max": 40, "2.weight.ram": 48,
        "input": 16, "0.dense.out": 36, "2.dense.out": 54, "err.2.dense.out": 56,
    }
    assert arena == 64
    assert_valid(plan, offsets, arena)
    assert training_memory(mlp(), ("2.weight", "2.bias"), "uint8")["arena_bytes"] == 64


def test_training_buffers_alignment():
    aligns = {b.name: b.align for b in training_plan(mlp(), MLP_ALL, "uint8", momentum=True, accumulate=2).buffers}
    assert aligns["0.bias.ram"] == aligns["0.weight.grad"] == aligns["0.weight.row_stats"] == 4
    assert aligns["0.weight.momentum"] == 4 and aligns["0.e_max"] == aligns["2.e_max"] == 8
    assert aligns["0.weight.ram"] == 1  # uint8 weights


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("model, trained", [
    (mlp(), ("2.weight", "2.bias")), (mlp(), MLP_ALL), (mlp(), ("0.bias", "2.bias")),
    (conv_net(), ("4.weight", "4.bias")), (conv_net(), CONV_ALL),
    (digits_net(), ("7.weight", "7.bias")), (digits_net(), ("3.weight", "3.bias", "7.weight", "7.bias")),
    (digits_net(), DIGITS_ALL),
])
def test_training_arena_at_least_the_peak(model, trained, precision):
    s = training_memory(model, trained, precision)
    assert s["arena_bytes"] >= s["train_ram_bytes"] and s["arena_bytes"] % 8 == 0
    plan = training_plan(model, trained, precision)
    assert s["arena_bytes"] == plan.layout()[1]


@pytest.mark.parametrize("kwargs", [{}, {"accumulate": 4, "momentum": True}, {"batch": 3}])
@pytest.mark.parametrize("trained", [("7.weight", "7.bias"), DIGITS_ALL])
def test_digits_net_arena_respects_lifetimes(trained, kwargs):
    plan = training_plan(digits_net(), trained, "uint8", **kwargs)
    offsets, arena = plan.layout()
    assert_valid(plan, offsets, arena)
    # the buffers live at the peak step are all disjoint, so the arena holds at least their sum
    step = plan.peak_step()
    live = sorted(plan.live_at(step), key=lambda b: offsets[b.name])
    for lo, hi in itertools.pairwise(live):
        assert offsets[lo.name] + lo.nbytes <= offsets[hi.name]

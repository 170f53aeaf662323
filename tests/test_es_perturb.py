"""Tests for ``edgetrain.train.es.perturb``: seed-reproducible ES noise.

The fast LFSR path (GF(2) leap matrices turned into byte tables) is checked bit for bit against
the plain scalar :func:`lfsr_step`. Maximal length is proved rather than sampled: the order of the
one-clock GF(2) matrix is computed with plain-int bit matrices and must be exactly ``2**32 - 1``.
The distribution layouts (which bits feed which value) are checked against the word stream, and
the moments on 100k samples with tolerances several standard errors wide but still able to fail.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgetrain.train.es import perturb
from edgetrain.train.es.perturb import (
    DISTRIBUTIONS,
    LFSR_BITS,
    LFSR_TAPS,
    SOURCES,
    LFSRCursor,
    derive_seed,
    draw,
    draw_lowrank,
    lfsr_step,
    lfsr_words,
    lowrank_rows,
    random_bits_per_value,
    seed_state,
)

SEEDS = st.integers(min_value=0, max_value=2**64 - 1)
CASES = [(d, s) for d in DISTRIBUTIONS for s in SOURCES]


def scalar_words(seed: int, n_words: int) -> list[int]:
    """Reference word stream: the state after every 32 single clocks of ``lfsr_step``."""
    state = seed_state(seed)
    words = []
    for _ in range(n_words):
        for _ in range(LFSR_BITS):
            state = lfsr_step(state)
        words.append(state)
    return words


def lfsr_unstep(state: int) -> int:
    """Inverse of one Galois clock: bit 31 of the result is set iff the mask was XORed in."""
    if state >> 31:
        return ((state ^ LFSR_TAPS) << 1) | 1
    return state << 1


# -- GF(2) matrices as 32 plain ints: row j is the image of unit vector 1 << j ----------------------

def apply(rows: list[int], vector: int) -> int:
    out = 0
    for j in range(LFSR_BITS):
        if vector >> j & 1:
            out ^= rows[j]
    return out


def compose(first: list[int], then: list[int]) -> list[int]:
    return [apply(then, r) for r in first]


def matrix_power(rows: list[int], exponent: int) -> list[int]:
    result = [1 << j for j in range(LFSR_BITS)]
    while exponent:
        if exponent & 1:
            result = compose(result, rows)
        rows = compose(rows, rows)
        exponent >>= 1
    return result


# -- the LFSR itself ----------------------------------------------------------------------------------

def test_taps_are_xapp052_polynomial():
    assert LFSR_TAPS == sum(1 << (t - 1) for t in (32, 22, 2, 1)) == 0x80200003
    assert lfsr_step(1) == LFSR_TAPS  # a 1 shifted out brings in the whole mask
    assert lfsr_step(2) == 1


def test_period_is_maximal():
    """The step matrix has order exactly 2^32 - 1, so the polynomial is primitive: one cycle of all nonzero states."""
    step = [lfsr_step(1 << j) for j in range(LFSR_BITS)]
    identity = [1 << j for j in range(LFSR_BITS)]
    period = 2**32 - 1
    factors = (3, 5, 17, 257, 65537)
    assert math.prod(factors) == period
    assert matrix_power(step, period) == identity
    for q in factors:
        assert matrix_power(step, period // q) != identity


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=2**32 - 1))
def test_step_is_invertible_and_never_reaches_zero(state):
    nxt = lfsr_step(state)
    assert 0 < nxt < 2**32
    assert lfsr_unstep(nxt) == state


def test_step_rejects_out_of_range_state():
    for bad in (-1, 2**32):
        with pytest.raises(ValueError, match="state"):
            lfsr_step(bad)


@settings(max_examples=60, deadline=None)
@given(SEEDS, st.integers(min_value=0, max_value=8))
def test_lfsr_words_match_scalar_steps(seed, n_words):
    words = lfsr_words(seed, n_words)
    assert words.dtype == torch.int64 and words.shape == (n_words,)
    assert words.tolist() == scalar_words(seed, n_words)


def test_lfsr_words_match_scalar_across_blocks():
    n_words = 2 * perturb._BLOCK_WORDS + 3
    assert lfsr_words(12345, n_words).tolist() == scalar_words(12345, n_words)


def test_tables_rebuilt_from_cold_cache_agree():
    warm = draw([3, 4], 3 * perturb._BLOCK_WORDS, "gaussian")
    perturb._LEAP_TABLES.clear()
    perturb._JUMP_STACKS.clear()
    assert torch.equal(draw([3, 4], 3 * perturb._BLOCK_WORDS, "gaussian"), warm)


def test_lfsr_words_rejects_negative_length():
    with pytest.raises(ValueError, match="n_words"):
        lfsr_words(0, -1)


# -- seeds --------------------------------------------------------------------------------------------

@settings(max_examples=100, deadline=None)
@given(SEEDS)
def test_seed_state_is_nonzero_32_bit(seed):
    assert 0 < seed_state(seed) < 2**32
    assert seed_state(seed) == seed_state(seed)


def test_seed_state_small_seeds():
    states = [seed_state(s) for s in range(1000)]
    assert all(0 < s < 2**32 for s in states)
    assert len(set(states)) == len(states)
    with pytest.raises(ValueError, match="seed"):
        seed_state(-1)


def test_derive_seed():
    derived = {(step, member): derive_seed(7, step, member) for step in range(50) for member in range(20)}
    assert all(0 <= d < 2**31 for d in derived.values())
    assert len(set(derived.values())) == len(derived)
    assert derive_seed(7, 3, 4) == derived[3, 4]
    assert derive_seed(7, 3, 4) != derive_seed(7, 4, 3)
    assert derive_seed(7, 3, 4) != derive_seed(8, 3, 4)
    assert derive_seed(7) != derive_seed(7, 0)
    with pytest.raises(ValueError, match="seed"):
        derive_seed(-1, 0)
    with pytest.raises(ValueError, match="keys"):
        derive_seed(0, -3)


# -- draw: structure ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("distribution", "source"), CASES)
def test_rows_depend_only_on_their_seed(distribution, source):
    both = draw([11, 22], 300, distribution, source)
    assert both.shape == (2, 300) and both.dtype == torch.float64
    assert torch.equal(both[0], draw([11], 300, distribution, source)[0])
    assert torch.equal(both[1], draw([22], 300, distribution, source)[0])
    assert torch.equal(both, draw([11, 22], 300, distribution, source))
    assert not torch.equal(both[0], both[1])


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@settings(max_examples=15, deadline=None)
@given(seed=SEEDS, n=st.integers(min_value=0, max_value=200), extra=st.integers(min_value=1, max_value=100))
def test_lfsr_draw_is_a_stream_prefix(distribution, seed, n, extra):
    longer = draw([seed], n + extra, distribution)[0]
    assert torch.equal(draw([seed], n, distribution)[0], longer[:n])


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_lfsr_prefix_across_blocks(distribution):
    n = perturb._BLOCK_WORDS * LFSR_BITS // random_bits_per_value(distribution) + 5
    longer = draw([9, 10], 2 * n, distribution)
    assert torch.equal(draw([9, 10], n, distribution), longer[:, :n])


def test_tensor_seeds_and_empty_seeds():
    assert torch.equal(draw(torch.tensor([5, 6]), 40), draw([5, 6], 40))
    assert draw([], 17).shape == (0, 17)
    assert draw([1, 2], 0).shape == (2, 0)
    with pytest.raises(ValueError, match="seeds"):
        draw(torch.tensor([1.0, 2.0]), 3)


# -- draw: bit layout of the lfsr source --------------------------------------------------------------

def test_lfsr_rademacher_reads_bits_lsb_first():
    words = lfsr_words(42, 4).tolist()
    expected = [1.0 - 2.0 * (words[k // 32] >> (k % 32) & 1) for k in range(128)]
    assert draw([42], 128, "rademacher")[0].tolist() == expected


def test_lfsr_uniform_reads_low_half_first():
    words = lfsr_words(42, 4).tolist()
    halves = [h for w in words for h in (w & 0xFFFF, w >> 16)]
    expected = torch.tensor([((u + 0.5) / 65536 * 2 - 1) * math.sqrt(3) for u in halves], dtype=torch.float64)
    torch.testing.assert_close(draw([42], 8, "uniform")[0], expected, rtol=0, atol=1e-12)


def test_lfsr_gaussian_is_irwin_hall_of_four_halves():
    words = lfsr_words(42, 8).tolist()
    halves = [h for w in words for h in (w & 0xFFFF, w >> 16)]
    expected = [(sum((u + 0.5) / 65536 for u in halves[4 * i: 4 * i + 4]) - 2) / math.sqrt(4 / 12) for i in range(4)]
    torch.testing.assert_close(draw([42], 4, "gaussian")[0], torch.tensor(expected, dtype=torch.float64),
                               rtol=0, atol=1e-12)


def test_torch_source_is_the_seeded_generator():
    gen = torch.Generator().manual_seed(77)
    expected = 1.0 - 2.0 * torch.randint(0, 2, (50,), generator=gen).double()
    assert torch.equal(draw([77], 50, "rademacher", "torch")[0], expected)
    gen = torch.Generator().manual_seed(77)
    assert torch.equal(draw([77], 50, "gaussian", "torch")[0], torch.randn(50, generator=gen, dtype=torch.float64))


# -- draw: statistics over 100k values ----------------------------------------------------------------

@pytest.mark.parametrize(("distribution", "source"), CASES)
def test_moments(distribution, source):
    values = draw(list(range(10)), 10_000, distribution, source).flatten()
    assert abs(values.mean().item()) < 0.02
    assert abs(values.var().item() - 1.0) < 0.03
    if distribution == "rademacher":
        assert set(values.unique().tolist()) == {-1.0, 1.0}
    elif distribution == "uniform":
        assert values.abs().max().item() <= math.sqrt(3)
        assert values.abs().max().item() > 0.99 * math.sqrt(3)
    elif source == "lfsr":
        assert values.abs().max().item() < 2 * math.sqrt(3)


def test_lfsr_rows_are_uncorrelated():
    rows = draw(list(range(8)), 20_000, "gaussian")
    corr = torch.corrcoef(rows)
    off_diagonal = corr[~torch.eye(8, dtype=torch.bool)]
    assert off_diagonal.abs().max().item() < 0.04


# -- draw_lowrank -------------------------------------------------------------------------------------

def test_lowrank_rank_one_rademacher_is_outer_product():
    noise = draw_lowrank([3, 4], (5, 7), 1)
    assert noise.shape == (2, 5, 7) and noise.dtype == torch.float64
    assert set(noise.unique().tolist()) == {-1.0, 1.0}
    values = draw([3, 4], 12)
    for i in range(2):
        assert torch.equal(noise[i], torch.outer(values[i, :5], values[i, 5:]))


@pytest.mark.parametrize(("distribution", "source"), CASES)
def test_lowrank_matches_definition(distribution, source):
    rank, n_out, n_in = 3, 4, 6
    noise = draw_lowrank([8], (n_out, n_in), rank, distribution, source)[0]
    values = draw([8], rank * (n_out + n_in), distribution, source)[0]
    a = values[: rank * n_out].reshape(rank, n_out)
    b = values[rank * n_out:].reshape(rank, n_in)
    expected = sum(torch.outer(a[k], b[k]) for k in range(rank)) / math.sqrt(rank)
    torch.testing.assert_close(noise, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@given(seed=st.integers(0, 2**40), skip=st.integers(0, 70), n=st.integers(1, 40))
@settings(max_examples=25, deadline=None)
def test_cursor_reads_the_stream_from_any_offset(distribution, seed, skip, n):
    cursor = LFSRCursor(seed, skip, distribution)
    values = [cursor.value(distribution) for _ in range(n)]
    expected = draw([seed], skip + n, distribution, "lfsr")[0, skip:]
    assert torch.equal(torch.tensor(values, dtype=torch.float64), expected)


def test_cursor_copy_is_a_restart_point():
    cursor = LFSRCursor(9, 3)
    saved = cursor.copy()
    first = [cursor.value("uniform") for _ in range(5)]
    assert [saved.value("uniform") for _ in range(5)] == first
    assert (saved.state, saved.bit) == (cursor.state, cursor.bit)


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize(("rank", "shape"), [(1, (10, 64)), (2, (5, 7)), (3, (4, 9)), (1, (1, 1))])
def test_lowrank_rows_regenerate_the_perturbation(distribution, rank, shape):
    """Row-by-row regeneration from 3 x rank cursors (the device's update) is draw_lowrank, bit for bit."""
    rows = list(lowrank_rows(77, shape, rank, distribution))
    assert len(rows) == shape[0]
    assert torch.equal(torch.stack(rows), draw_lowrank([77], shape, rank, distribution, "lfsr")[0])


def test_lowrank_rows_refuses_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        next(lowrank_rows(1, (0, 3), 1))
    with pytest.raises(ValueError, match="rank"):
        next(lowrank_rows(1, (2, 3), 0))


def test_lowrank_unit_variance():
    noise = draw_lowrank(list(range(50)), (40, 50), 4, "gaussian")
    assert abs(noise.mean().item()) < 0.02
    assert abs(noise.var().item() - 1.0) < 0.05


# -- arguments ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("call", "name"), [
    (lambda: draw([1], 4, distribution="cauchy"), "distribution"),
    (lambda: draw([1], 4, source="urandom"), "source"),
    (lambda: draw([1], -1), "n"),
    (lambda: draw([-1], 4), "seeds"),
    (lambda: draw([2**64], 4), "seeds"),
    (lambda: draw_lowrank([1], (3, 4), 0), "rank"),
    (lambda: draw_lowrank([1], (0, 4), 1), "shape"),
    (lambda: draw_lowrank([1], (3, 4, 5), 1), "shape"),
    (lambda: draw_lowrank([1], (3, 4), 1, distribution="x"), "distribution"),
    (lambda: random_bits_per_value("x"), "distribution"),
])
def test_bad_arguments_name_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        call()


def test_random_bits_per_value():
    assert [random_bits_per_value(d) for d in DISTRIBUTIONS] == [1, 16, 64]

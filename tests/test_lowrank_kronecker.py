"""Tests of the streaming rank-``r`` Kronecker-sum accumulator (``train/lowrank/kronecker.py``):
exactness while the sum fits in rank ``r``, the biased mode as per-step SVD truncation, the unbiased
(OK) reduction's expectation, blocked adds, quantized factors, the condition-number skip, errors and
the memory count."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgetrain.train.lowrank.kronecker import (
    KSum,
    ksum_add,
    ksum_bytes,
    ksum_init,
    ksum_matrix,
    ksum_reset,
    reduce_unbiased,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=F64)


def _add_all(state: KSum, dz: torch.Tensor, a: torch.Tensor, block: int = 1, **kw) -> KSum:
    """Add the columns of ``dz``/``a`` ``block`` at a time (``block=1`` passes 1-D vectors)."""
    for i in range(0, dz.shape[1], block):
        if block == 1:
            state = ksum_add(state, dz[:, i], a[:, i], **kw)
        else:
            state = ksum_add(state, dz[:, i:i + block], a[:, i:i + block], **kw)
    return state


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).norm() / ref.norm())


def _truncate(mat: torch.Tensor, rank: int) -> torch.Tensor:
    """Best rank-``rank`` approximation (Eckart-Young)."""
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def _best_rel_err(mat: torch.Tensor, rank: int) -> float:
    s = torch.linalg.svdvals(mat)
    return float(s[rank:].square().sum().sqrt() / s.square().sum().sqrt())


def _assert_orthonormal_where_positive(state: KSum, atol: float = 1e-10) -> None:
    keep = state.sigma > 0
    for f in (state.left, state.right):
        cols = f[:, keep]
        eye = torch.eye(cols.shape[1], dtype=cols.dtype)
        torch.testing.assert_close(cols.T @ cols, eye, atol=atol, rtol=0)


def _identical(x: KSum, y: KSum) -> bool:
    return (torch.equal(x.left, y.left) and torch.equal(x.right, y.right) and torch.equal(x.sigma, y.sigma)
            and x.terms == y.terms and x.skipped == y.skipped)


# ------------------------------------------------------------------------------------------------ exactness


@pytest.mark.parametrize("mode", ["biased", "unbiased"])
def test_exact_while_total_rank_fits(mode: str) -> None:
    n, m, r = 7, 11, 5
    g = _gen(0)
    dz, a = _randn(n, 5, g=g), _randn(m, 5, g=g)
    state = ksum_init(n, m, r)
    exact = torch.zeros(n, m, dtype=F64)
    # two single terms, then a block of three: five rank-1 terms in rank 5
    for lo, hi in ((0, 1), (1, 2), (2, 5)):
        d, v = (dz[:, lo], a[:, lo]) if hi - lo == 1 else (dz[:, lo:hi], a[:, lo:hi])
        state = ksum_add(state, d, v, mode=mode, generator=_gen(1))
        exact += dz[:, lo:hi] @ a[:, lo:hi].T
        torch.testing.assert_close(ksum_matrix(state), exact, atol=1e-10, rtol=0)
        assert state.terms == hi
        assert state.skipped == 0
        assert bool((state.sigma >= 0).all())
        _assert_orthonormal_where_positive(state)
    assert state.rank == r and state.shape == (n, m)
    assert int((state.sigma > 1e-12).sum()) == 5


@pytest.mark.parametrize("mode", ["biased", "unbiased"])
def test_exact_with_repeated_directions(mode: str) -> None:
    """Many terms in a rank-2 subspace stay exact in rank 3 (the sum never leaves rank 2)."""
    n, m, r = 6, 9, 3
    g = _gen(2)
    ub, vb = _randn(n, 2, g=g), _randn(m, 2, g=g)
    dz, a = ub @ _randn(2, 12, g=g), vb @ _randn(2, 12, g=g)
    dz[:, 1::2] = ub[:, :1]  # keep the column space exactly 2-D whatever a holds
    state = _add_all(ksum_init(n, m, r), dz, a, mode=mode, generator=_gen(3))
    torch.testing.assert_close(ksum_matrix(state), dz @ a.T, atol=1e-10, rtol=0)
    assert state.terms == 12


@pytest.mark.parametrize("mode", ["biased", "unbiased"])
def test_exact_when_single_terms_fill_rank_exactly(mode: str) -> None:
    """r single terms in rank r: the sum fits, so both modes should reproduce it to rounding."""
    n, m, r = 10, 14, 6
    g = _gen(60)
    dz, a = _randn(n, r, g=g), _randn(m, r, g=g)
    state = _add_all(ksum_init(n, m, r), dz, a, mode=mode, generator=_gen(1))
    torch.testing.assert_close(ksum_matrix(state), dz @ a.T, atol=1e-10, rtol=0)


@pytest.mark.parametrize("mode", ["biased", "unbiased"])
def test_small_matrix_fewer_rows_than_rank(mode: str) -> None:
    """``n < r``: the Gram-Schmidt bases have fewer than ``r`` columns and the state is padded; any sum is exact."""
    g = _gen(4)
    dz, a = _randn(2, 9, g=g), _randn(5, 9, g=g)
    state = _add_all(ksum_init(2, 5, 4), dz, a, block=3, mode=mode, generator=_gen(5))
    torch.testing.assert_close(ksum_matrix(state), dz @ a.T, atol=1e-10, rtol=0)
    assert state.left.shape == (2, 4) and state.right.shape == (5, 4) and state.sigma.shape == (4,)
    assert float(state.sigma[2:].abs().max()) == 0.0


def test_reset_and_init() -> None:
    state = ksum_init(3, 4, 2)
    assert state.terms == 0 and state.skipped == 0 and state.rank == 2 and state.shape == (3, 4)
    assert float(ksum_matrix(state).abs().max()) == 0.0
    g = _gen(6)
    state = ksum_add(state, _randn(3, g=g), _randn(4, g=g))
    empty = ksum_reset(state)
    assert empty.terms == 0 and empty.shape == (3, 4) and empty.rank == 2 and empty.sigma.dtype == F64
    assert float(ksum_matrix(empty).abs().max()) == 0.0
    f32 = ksum_reset(ksum_init(3, 4, 2, dtype=torch.float32))
    assert f32.left.dtype == torch.float32


# ------------------------------------------------------------------------------------------------ biased mode


def test_biased_step_is_rank_r_truncation() -> None:
    n, m, r = 9, 13, 3
    g = _gen(10)
    state = ksum_init(n, m, r)
    estimate = torch.zeros(n, m, dtype=F64)
    for step in range(6):
        k = 2 + step % 3  # the block's sum has rank 2..4; with the previous estimate more than r
        dz, a = _randn(n, k, g=g), _randn(m, k, g=g)
        target = _truncate(estimate + dz @ a.T, r)
        state = ksum_add(state, dz, a, mode="biased")
        estimate = ksum_matrix(state)
        torch.testing.assert_close(estimate, target, atol=1e-10, rtol=0)
        _assert_orthonormal_where_positive(state)
        sv = torch.linalg.svdvals(target)[:r]
        torch.testing.assert_close(state.sigma, sv, atol=1e-10, rtol=0)
    assert state.terms == sum(2 + s % 3 for s in range(6))


def _structured_stream(seed: int, n: int = 16, m: int = 72, t: int = 50, dominant: int = 4,
                       noise: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Terms ``dz a^T`` around a fixed ``U diag(c) V^T`` with decaying ``c`` (``dominant`` directions) plus
    small isotropic noise: the sum has a clear top-``dominant`` part."""
    g = _gen(seed)
    u = torch.linalg.qr(_randn(n, dominant, g=g))[0]
    v = torch.linalg.qr(_randn(m, dominant, g=g))[0]
    c = 0.7 ** torch.arange(dominant, dtype=F64)
    x = _randn(dominant, t, g=g)
    dz = u @ (c[:, None] * x) + noise * _randn(n, t, g=g)
    a = v @ x + noise * _randn(m, t, g=g)
    return dz, a


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_biased_quality_on_structured_stream(seed: int) -> None:
    n, m, r = 16, 72, 4
    dz, a = _structured_stream(seed)
    exact = dz @ a.T
    state = _add_all(ksum_init(n, m, r), dz, a, mode="biased")
    err = _rel(ksum_matrix(state), exact)
    best = _best_rel_err(exact, r)
    assert 0 < best < 0.2
    assert err / best <= 1.05, (err, best)
    assert err >= best * (1 - 1e-9)  # nothing beats the SVD


def test_biased_quality_on_iid_stream() -> None:
    """iid Gaussian terms have no low-rank structure; streaming truncation stays near the SVD bound anyway
    (measured ratio about 1.06 to 1.09)."""
    n, m, r = 16, 72, 4
    g = _gen(20)
    dz, a = _randn(n, 50, g=g), _randn(m, 50, g=g)
    exact = dz @ a.T
    state = _add_all(ksum_init(n, m, r), dz, a, mode="biased")
    ratio = _rel(ksum_matrix(state), exact) / _best_rel_err(exact, r)
    assert math.isfinite(ratio)
    assert 1.0 - 1e-9 <= ratio < 1.3


# ------------------------------------------------------------------------------------------------ unbiased reduction


def _keep_count_ref(s: torch.Tensor, rank: int) -> int:
    """The length of the prefix with ``s_j (r - j) > sum(s[j:])``."""
    j = 0
    while j < rank and float(s[j]) * (rank - j) > float(s[j:].sum()) * (1 + 1e-12):
        j += 1
    return j


@pytest.mark.parametrize(
    "rank,extra,spectrum",
    [(2, 1, "flat"), (2, 5, "flat"), (4, 1, "flat"), (4, 5, "flat"), (4, 1, "decaying"), (4, 5, "decaying")],
)
def test_reduce_unbiased_expectation(rank: int, extra: int, spectrum: str) -> None:
    """Tail of length ``k' + 1`` (random signs) and longer (systematic sampling); ``decaying`` keeps three
    values exactly."""
    p = rank + extra
    if spectrum == "flat":
        s = torch.rand(p, generator=_gen(30 + rank + extra), dtype=F64) * 3 + 0.1
        s = torch.sort(s, descending=True).values
    else:
        s = 3.0 * 0.5 ** torch.arange(p, dtype=F64)
        assert _keep_count_ref(s, rank) == 3
    g = _gen(31)
    draws = 4000
    samples = torch.empty(draws, p, p, dtype=F64)
    for i in range(draws):
        mix, values = reduce_unbiased(s, rank, g)
        assert mix.shape == (p, rank) and values.shape == (rank,)
        samples[i] = (mix * values) @ mix.T
        if i < 50:
            torch.testing.assert_close(mix.T @ mix, torch.eye(rank, dtype=F64), atol=1e-12, rtol=0)
            assert bool((values >= 0).all())
            assert abs(float(values.sum() - s.sum())) < 1e-12  # the trace is kept on every draw
    mean = samples.mean(0)
    se = samples.std(0) / math.sqrt(draws)
    z = (mean - torch.diag(s)).abs()
    # 4 standard errors per entry (up to 81 entries are tested) plus rounding for the deterministic ones
    assert bool((z <= 4 * se + 1e-12).all()), float((z / (se + 1e-300)).max())
    assert float(samples.std(0).max()) > 0  # the reduction is random here


def test_reduce_unbiased_keeps_large_values_exactly() -> None:
    s = torch.tensor([10.0, 5.0, 1.0, 1.0, 1.0, 1.0], dtype=F64)  # 10*3 > 19, 5*2 > 9, 1*1 <= 4
    for seed in range(5):
        mix, values = reduce_unbiased(s, 3, _gen(seed))
        torch.testing.assert_close(values, torch.tensor([10.0, 5.0, 4.0], dtype=F64), atol=1e-14, rtol=0)
        torch.testing.assert_close(mix[:2, :2], torch.eye(2, dtype=F64), atol=0, rtol=0)
        assert float(mix[2:, :2].abs().max()) == 0.0 and float(mix[:2, 2:].abs().max()) == 0.0
    g = _gen(40)
    for _ in range(20):
        rank = int(torch.randint(1, 6, (1,), generator=g))
        p = rank + int(torch.randint(1, 6, (1,), generator=g))
        s = torch.sort(torch.rand(p, generator=g, dtype=F64) ** 4, descending=True).values
        j = _keep_count_ref(s, rank)
        mix, values = reduce_unbiased(s, rank, g)
        torch.testing.assert_close(values[:j], s[:j], atol=0, rtol=0)
        torch.testing.assert_close(mix[:j, :j], torch.eye(j, dtype=F64), atol=0, rtol=0)
        assert j == 0 or float(mix[j:, :j].abs().max()) == 0.0
        torch.testing.assert_close(values[j:], torch.full((rank - j,), float(s[j:].sum()) / (rank - j), dtype=F64),
                                   atol=1e-14, rtol=1e-12)


def test_reduce_unbiased_exact_when_rank_suffices() -> None:
    s = torch.tensor([3.0, 2.0, 0.5, 0.0, 0.0], dtype=F64)
    for rank in (3, 4):
        for seed in range(10):
            mix, values = reduce_unbiased(s, rank, _gen(seed))
            torch.testing.assert_close((mix * values) @ mix.T, torch.diag(s), atol=1e-14, rtol=0)
    zero = torch.zeros(4, dtype=F64)
    mix, values = reduce_unbiased(zero, 2, _gen(0))
    assert float(values.abs().max()) == 0.0


@settings(max_examples=25, deadline=None)
@given(
    rank=st.integers(1, 5),
    extra=st.integers(1, 6),
    raw=st.lists(st.floats(0.0, 10.0, allow_subnormal=False), min_size=11, max_size=11),
    seed=st.integers(0, 2**31 - 1),
)
def test_reduce_unbiased_invariants(rank: int, extra: int, raw: list[float], seed: int) -> None:
    p = rank + extra
    s = torch.sort(torch.tensor(raw[:p], dtype=F64), descending=True).values
    mix, values = reduce_unbiased(s, rank, _gen(seed))
    assert bool((values >= 0).all())
    live = values > 0
    cols = mix[:, live]
    torch.testing.assert_close(cols.T @ cols, torch.eye(cols.shape[1], dtype=F64), atol=1e-12, rtol=0)
    assert abs(float(values.sum() - s.sum())) <= 1e-12 * max(1.0, float(s.sum()))
    est = (mix * values) @ mix.T
    assert float(torch.linalg.eigvalsh(est).min()) >= -1e-10  # a PSD replacement of a PSD diag(s)
    j = _keep_count_ref(s, rank)
    assert torch.equal(values[:j], s[:j])
    if int((s > 0).sum()) <= rank:
        torch.testing.assert_close(est, torch.diag(s), atol=1e-12, rtol=0)


# ------------------------------------------------------------------------------------------------ unbiased streams


@pytest.mark.parametrize("block", [1, 10])
def test_unbiased_mean_over_seeds_converges(block: int) -> None:
    n, m, r, t = 8, 12, 2, 50
    g = _gen(50)
    dz, a = _randn(n, t, g=g), _randn(m, t, g=g)
    exact = dz @ a.T
    seeds = 400
    ests = torch.stack([ksum_matrix(_add_all(ksum_init(n, m, r), dz, a, block=block, mode="unbiased",
                                             generator=_gen(s))) for s in range(seeds)])
    singles = torch.tensor([_rel(e, exact) for e in ests])
    rms_single = float(singles.square().mean().sqrt())
    assert rms_single > 0.5  # rank 2 of a rank-8 sum: one seed is far off
    err = {k: _rel(ests[:k].mean(0), exact) for k in (25, 100, 400)}
    for k, e in err.items():  # error of the mean ~ rms_single / sqrt(K)
        assert 0.5 < e * math.sqrt(k) / rms_single < 2.0, (k, e, rms_single)
    assert err[400] < 0.4 * float(singles.mean())
    assert err[400] < 0.3
    assert err[400] < err[25]


# ------------------------------------------------------------------------------------------------ blocks


@pytest.mark.parametrize("mode", ["biased", "unbiased"])
def test_block_equals_singles_when_rank_holds_all(mode: str) -> None:
    n, m, k = 10, 14, 6
    g = _gen(60)
    dz, a = _randn(n, k, g=g), _randn(m, k, g=g)
    seq = _add_all(ksum_init(n, m, k), dz, a, mode=mode, generator=_gen(1))
    blk = ksum_add(ksum_init(n, m, k), dz, a, mode=mode, generator=_gen(1))
    torch.testing.assert_close(ksum_matrix(blk), ksum_matrix(seq), atol=1e-10, rtol=0)
    torch.testing.assert_close(ksum_matrix(blk), dz @ a.T, atol=1e-10, rtol=0)
    assert blk.terms == seq.terms == k


@pytest.mark.parametrize("mode", ["biased", "unbiased"])
def test_block_of_one_equals_single_term(mode: str) -> None:
    n, m, r = 10, 14, 3
    g = _gen(61)
    dz, a = _randn(n, 5, g=g), _randn(m, 5, g=g)
    base = _add_all(ksum_init(n, m, r), dz[:, :4], a[:, :4], mode=mode, generator=_gen(2))  # full rank r
    single = ksum_add(base, dz[:, 4], a[:, 4], mode=mode, generator=_gen(3))
    block = ksum_add(base, dz[:, 4:5], a[:, 4:5], mode=mode, generator=_gen(3))
    assert _identical(single, block)


def test_biased_block_no_worse_than_sequential() -> None:
    n, m, r, t = 16, 72, 4, 40
    ratios = []
    for trial in range(8):
        g = _gen(100 + trial)
        dz, a = _randn(n, t, g=g), _randn(m, t, g=g)
        exact = dz @ a.T
        seq = _rel(ksum_matrix(_add_all(ksum_init(n, m, r), dz, a, mode="biased")), exact)
        blk = _rel(ksum_matrix(_add_all(ksum_init(n, m, r), dz, a, block=8, mode="biased")), exact)
        ratios.append(blk / seq)
    assert sum(ratios) / len(ratios) <= 1.02, ratios


# ------------------------------------------------------------------------------------------------ storage


def test_factor_bits_16_close_to_float_and_on_grid() -> None:
    n, m, r = 16, 72, 4
    dz, a = _structured_stream(7)
    flt = _add_all(ksum_init(n, m, r), dz, a, mode="biased")
    q16 = _add_all(ksum_init(n, m, r), dz, a, mode="biased", factor_bits=16)
    assert _rel(ksum_matrix(q16), ksum_matrix(flt)) < 1e-3
    assert _rel(ksum_matrix(q16), ksum_matrix(flt)) > 0  # it did quantize
    for f in (q16.left, q16.right, q16.sigma):
        codes = f / (f.abs().max() / 32767)
        assert float((codes - codes.round()).abs().max()) < 1e-6
        assert float(codes.abs().max()) <= 32767 + 1e-6
    q8 = _add_all(ksum_init(n, m, r), dz, a, mode="biased", factor_bits=8)
    codes = q8.left / (q8.left.abs().max() / 127)
    assert float((codes - codes.round()).abs().max()) < 1e-6
    assert _rel(ksum_matrix(q8), ksum_matrix(flt)) > _rel(ksum_matrix(q16), ksum_matrix(flt))


def test_ksum_bytes_hand_counted() -> None:
    assert ksum_bytes(16, 72, 4, 16) == (4 * (16 + 72) + 4) * 2 + 12 == 724
    assert ksum_bytes(16, 72, 4) == 724
    assert ksum_bytes(16, 72, 4, None) == (4 * (16 + 72) + 4) * 4 == 1424
    assert ksum_bytes(16, 72, 4, 8) == (4 * (16 + 72) + 4) + 12
    assert ksum_bytes(3, 5, 1, 4) == math.ceil((8 + 1) * 4 / 8) + 12


# ------------------------------------------------------------------------------------------------ max_cond


def test_max_cond_skips_ill_conditioned_step() -> None:
    n, m, r = 6, 8, 3
    e = torch.eye(max(n, m), dtype=F64)
    big = (2.0 * e[:n, 0], 3.0 * e[:m, 0])
    tiny = (1e-6 * e[:n, 1], e[:m, 1])  # singular values 6 and 1e-6: condition 6e6
    state = ksum_add(ksum_init(n, m, r), *big, mode="biased", max_cond=100)
    assert state.terms == 1 and state.skipped == 0
    skipped = ksum_add(state, *tiny, mode="biased", max_cond=100)
    assert skipped.terms == 2 and skipped.skipped == 1
    assert torch.equal(skipped.left, state.left) and torch.equal(skipped.right, state.right)
    assert torch.equal(skipped.sigma, state.sigma)
    torch.testing.assert_close(ksum_matrix(skipped), torch.outer(*big), atol=1e-12, rtol=0)
    # a term of comparable size passes the check
    ok = ksum_add(skipped, 0.5 * e[:n, 1], e[:m, 1], mode="biased", max_cond=100)
    assert ok.terms == 3 and ok.skipped == 1
    # without the check the tiny term is added
    added = ksum_add(state, *tiny, mode="biased")
    assert added.terms == 2 and added.skipped == 0
    torch.testing.assert_close(ksum_matrix(added), torch.outer(*big) + torch.outer(*tiny), atol=1e-15, rtol=0)
    assert float(ksum_matrix(added)[1, 1]) == pytest.approx(1e-6, rel=1e-9)


# ------------------------------------------------------------------------------------------------ errors


def test_errors() -> None:
    state = ksum_init(4, 5, 2)
    g = _gen(70)
    dz, a = _randn(4, g=g), _randn(5, g=g)
    with pytest.raises(ValueError, match=r"expected dz \[4, k\] and a \[5, k\]"):
        ksum_add(state, _randn(3, g=g), a)
    with pytest.raises(ValueError, match=r"expected dz \[4, k\] and a \[5, k\]"):
        ksum_add(state, dz, _randn(6, g=g))
    with pytest.raises(ValueError, match=r"expected dz \[4, k\] and a \[5, k\].*\(4, 2\) and \(5, 3\)"):
        ksum_add(state, _randn(4, 2, g=g), _randn(5, 3, g=g))
    with pytest.raises(ValueError, match=r"expected dz \[4, k\]"):
        ksum_add(state, _randn(4, 1, 1, g=g), a)
    bad = dz.clone()
    bad[1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        ksum_add(state, bad, a)
    bad = a.clone()
    bad[0] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        ksum_add(state, dz, bad)
    with pytest.raises(ValueError, match=r"mode must be one of \('biased', 'unbiased'\), got 'exact'"):
        ksum_add(state, dz, a, mode="exact")
    with pytest.raises(ValueError, match="rank must be an integer >= 1, got 0"):
        ksum_init(4, 5, 0)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        ksum_init(0, 5, 2)
    with pytest.raises(ValueError, match="m must be an integer >= 1"):
        ksum_init(4, 2.0, 2)  # type: ignore[arg-type]
    assert state.terms == 0  # failed calls leave nothing behind


# ------------------------------------------------------------------------------------------------ reproducibility


@pytest.mark.parametrize("block", [1, 4])
def test_same_seed_bit_identical(block: int) -> None:
    n, m, r = 9, 12, 3
    g = _gen(80)
    dz, a = _randn(n, 20, g=g), _randn(m, 20, g=g)
    one = _add_all(ksum_init(n, m, r), dz, a, block=block, mode="unbiased", generator=_gen(5))
    two = _add_all(ksum_init(n, m, r), dz, a, block=block, mode="unbiased", generator=_gen(5))
    other = _add_all(ksum_init(n, m, r), dz, a, block=block, mode="unbiased", generator=_gen(6))
    assert _identical(one, two)
    assert not torch.equal(ksum_matrix(one), ksum_matrix(other))
    b1 = _add_all(ksum_init(n, m, r), dz, a, block=block, mode="biased", factor_bits=16)
    b2 = _add_all(ksum_init(n, m, r), dz, a, block=block, mode="biased", factor_bits=16)
    assert _identical(b1, b2)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 7),
    m=st.integers(1, 7),
    rank=st.integers(1, 5),
    blocks=st.lists(st.integers(1, 3), min_size=1, max_size=4),
    mode=st.sampled_from(["biased", "unbiased"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_exact_property(n: int, m: int, rank: int, blocks: list[int], mode: str, seed: int) -> None:
    """Any stream whose total rank (terms, or min(n, m)) is at most ``rank`` is reproduced exactly (the
    unbiased mode to 1e-10 only while that rank stays below ``rank``)."""
    g = _gen(seed)
    state = ksum_init(n, m, rank)
    exact = torch.zeros(n, m, dtype=F64)
    total = 0
    for k in blocks:
        if min(total + k, n, m) > rank:
            break
        dz, a = _randn(n, k, g=g), _randn(m, k, g=g)
        state = ksum_add(state, dz, a, mode=mode, generator=g)
        exact += dz @ a.T
        total += k
    torch.testing.assert_close(ksum_matrix(state), exact, atol=1e-10, rtol=0)
    assert state.terms == total
    assert bool((state.sigma >= 0).all())
    _assert_orthonormal_where_positive(state)

"""Streaming Kronecker-sum accumulation of a layer's gradient in rank ``r`` (Gural et al. 2020).

Gural, Nadeau, Tikekar and Murmann, "Low-Rank Training of Deep Neural Networks for Emerging Memory
Technology" (arXiv 2009.03887, sec. 3 and alg. 1), keep the sum of a layer's per-sample gradients
``G = sum_t dz_t a_t^T`` (``n x m``) in auxiliary memory as ``L R^T`` of rank ``r``, so the weights
themselves can be written rarely. Here the estimate is held as ``U diag(s) V^T`` with ``U`` (``n x r``)
and ``V`` (``m x r``) orthonormal and ``s >= 0`` (the paper's ``Q_L``, ``Q_R`` and ``c_x``).

Adding ``k`` new terms ``dz a^T`` (``dz`` is ``n x k``, ``a`` is ``m x k``; ``k = 1`` is the paper's
update, a convolution contributes one term per output pixel):

1. Gram-Schmidt: orthonormal bases of ``[U, dz]`` and ``[V, a]`` (one Householder QR each), so the
   old estimate plus the new terms lie in ``span(Q_L) x span(Q_R)``.
2. The small matrix ``C = Q_L^T (U diag(s) V^T + dz a^T) Q_R``; for ``k = 1`` this is the paper's
   ``c_L c_R^T + diag(c_x)`` in the rotated bases.
3. SVD ``C = P S W^T``; rotate the bases (``Q_L P``, ``Q_R W``) so the sum is ``diag(S)`` there.
4. Reduce ``diag(S)`` back to rank ``r``:

   * ``biased``: keep the ``r`` largest values (the best rank-``r`` approximation of this step).
   * ``unbiased``: the optimal Kronecker-sum (OK) reduction of Benzing, Gauy, Mujika, Martinsson and
     Steger, "Optimal Kronecker-Sum Approximation of Real Time Recurrent Learning" (ICML 2019). Keep the
     ``j`` largest values exactly, where ``j`` is the smallest index with ``S_j (r - j) <= sum_{i>=j} S_i``;
     replace the tail (sum ``s1``, ``k' = r - j`` terms left) by ``(s1 / k') P`` with ``P`` a random
     rank-``k'`` orthogonal projector whose mean is ``diag(k' S_tail / s1)``. Then ``E[estimate]`` is
     the exact sum (in exact arithmetic; 16-bit factor storage rounds to nearest and a skipped step
     drops its terms, both small biases) and the added variance ``s1^2 / k' - |S_tail|^2`` is the least
     any unbiased rank-``k'`` replacement can have. When the tail is one value longer than ``k'``
     (every one-term update) ``P = I - v v^T`` with ``v_i = +-sqrt(1 - k' S_i / s1)``, independent
     random signs (the paper's mixing of the small values). A longer tail (a block of several
     terms) uses a diagonal projector on ``k'`` of the tail directions drawn by systematic sampling
     with inclusion probabilities ``k' S_i / s1``: same mean, same variance, no loop.

Optionally a one-term step whose ``C`` is ill-conditioned (largest over smallest nonzero singular value
above ``max_cond``, the paper uses 100) is skipped and the term dropped (a block of several terms is
never skipped: its own spectrum would trip the test), and the factors are stored in
``factor_bits``-bit integers with one scale per tensor (16 on the device), which is what the state then
holds. The state is a plain value: ``ksum_add`` returns a new one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

MODES = ("biased", "unbiased")


@dataclass(frozen=True, eq=False)
class KSum:
    """Rank-``r`` estimate ``left diag(sigma) right^T`` of a sum of ``terms`` rank-1 matrices."""

    left: torch.Tensor  # [n, r]
    right: torch.Tensor  # [m, r]
    sigma: torch.Tensor  # [r], >= 0
    terms: int = 0
    """Rank-1 terms added (those of skipped steps included)."""
    skipped: int = 0
    """Steps dropped by the condition-number check."""

    @property
    def rank(self) -> int:
        return int(self.sigma.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.left.shape[0]), int(self.right.shape[0])


def ksum_init(n: int, m: int, rank: int, dtype: torch.dtype = torch.float64) -> KSum:
    """An empty accumulator for an ``n x m`` gradient in rank ``rank``."""
    for what, v in (("n", n), ("m", m), ("rank", rank)):
        if not (isinstance(v, int) and v >= 1):
            raise ValueError(f"ksum_init: {what} must be an integer >= 1, got {v!r}")
    return KSum(torch.zeros(n, rank, dtype=dtype), torch.zeros(m, rank, dtype=dtype),
                torch.zeros(rank, dtype=dtype))


def ksum_matrix(state: KSum) -> torch.Tensor:
    """The dense ``n x m`` estimate (for the weight update; the device forms it row by row)."""
    return (state.left * state.sigma) @ state.right.T


def ksum_reset(state: KSum) -> KSum:
    """An empty accumulator of the same shape (after the weights were written)."""
    n, m = state.shape
    return ksum_init(n, m, state.rank, state.sigma.dtype)


def ksum_bytes(n: int, m: int, rank: int, factor_bits: int | None = 16) -> int:
    """Auxiliary memory of one accumulator: ``r (n + m)`` factor values plus ``r`` singular values
    at ``factor_bits`` (32 if ``None``), and one float32 scale for each of the three tensors."""
    bits = 32 if factor_bits is None else factor_bits
    return math.ceil((rank * (n + m) + rank) * bits / 8) + (3 * 4 if factor_bits is not None else 0)


def _store(t: torch.Tensor, bits: int | None) -> torch.Tensor:
    """Round-trip ``t`` through ``bits``-bit signed integers with one scale (max |t| maps to the top)."""
    if bits is None:
        return t
    top = (1 << (bits - 1)) - 1
    peak = float(t.abs().max()) if t.numel() else 0.0
    if peak == 0.0:
        return t
    scale = peak / top
    return torch.round(t / scale).clamp(-top, top) * scale


def _keep_count(s: torch.Tensor, rank: int) -> int:
    """How many of the (descending) values ``s`` the OK reduction keeps exactly: the first ``j < rank``
    with ``s_j (rank - j) <= sum(s[j:])`` (``j = rank - 1`` always qualifies for ``s >= 0``)."""
    tail = torch.flip(torch.cumsum(torch.flip(s, [0]), 0), [0])[:rank]  # tail[j] = sum(s[j:])
    ok = s[:rank] * torch.arange(rank, 0, -1, dtype=s.dtype) <= tail * (1 + 1e-12)
    return int(ok.to(torch.int8).argmax()) if bool(ok.any()) else rank - 1


def _signs(n: int, generator: torch.Generator | None, dtype: torch.dtype) -> torch.Tensor:
    return torch.randint(0, 2, (n,), generator=generator).to(dtype) * 2 - 1


def reduce_unbiased(
    s: torch.Tensor, rank: int, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """OK reduction of ``diag(s)`` (``s`` descending, ``>= 0``, length ``p > rank``) to rank ``rank``.

    Returns ``(mix, values)``: a ``p x rank`` matrix with orthonormal columns and ``rank`` values such
    that ``E[mix diag(values) mix^T] = diag(s)``.
    """
    p = int(s.shape[0])
    j = _keep_count(s, rank)
    k = rank - j
    tail = s[j:]
    s1 = float(tail.sum())
    mix = torch.zeros(p, rank, dtype=s.dtype)
    mix[:j, :j] = torch.eye(j, dtype=s.dtype)
    values = torch.zeros(rank, dtype=s.dtype)
    values[:j] = s[:j]
    if s1 <= 0.0:
        return mix, values
    values[j:] = s1 / k
    probs = (k * tail / s1).clamp(0.0, 1.0)
    if p - j == k + 1:
        v = _signs(k + 1, generator, s.dtype) * torch.sqrt((1.0 - probs).clamp(min=0.0))
        v = v / v.norm()
        q, _ = torch.linalg.qr(v[:, None], mode="complete")  # q[:, 0] = +-v, the rest spans v's complement
        mix[j:, j:] = q[:, 1:]
    else:
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        edges = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(probs.to(torch.float64), 0)])
        # Tail direction i is drawn when one of the points u, u+1, ..., u+k-1 falls in [edges_i, edges_i+1).
        hits = torch.floor(edges[1:] - u) - torch.floor(edges[:-1] - u)
        chosen = torch.nonzero(hits > 0).flatten()[:k]
        mix[j + chosen, j + torch.arange(chosen.numel())] = 1.0
        if chosen.numel() < k:  # rounding at the edges: leave the missing directions empty
            values[j + chosen.numel():] = 0.0
    return mix, values


def ksum_add(
    state: KSum,
    dz: torch.Tensor,
    a: torch.Tensor,
    mode: str = "unbiased",
    generator: torch.Generator | None = None,
    max_cond: float | None = None,
    factor_bits: int | None = None,
) -> KSum:
    """Add the terms ``dz a^T`` (``dz`` ``[n]`` or ``[n, k]``, ``a`` ``[m]`` or ``[m, k]``) and reduce
    back to the accumulator's rank (module docstring). ``generator`` drives the unbiased mode's random
    signs; ``max_cond`` skips ill-conditioned steps; ``factor_bits`` stores the factors quantized."""
    if mode not in MODES:
        raise ValueError(f"Kronecker-sum mode must be one of {MODES}, got {mode!r}")
    if factor_bits is not None and not (isinstance(factor_bits, int) and 2 <= factor_bits <= 32):
        raise ValueError(f"factor_bits must be an integer in 2..32 or None, got {factor_bits!r}")
    n, m = state.shape
    dz = dz.to(state.sigma.dtype)
    a = a.to(state.sigma.dtype)
    if dz.ndim == 1:
        dz = dz[:, None]
    if a.ndim == 1:
        a = a[:, None]
    if dz.ndim != 2 or a.ndim != 2 or dz.shape[0] != n or a.shape[0] != m or dz.shape[1] != a.shape[1]:
        raise ValueError(f"ksum_add: expected dz [{n}, k] and a [{m}, k], got {tuple(dz.shape)} and "
                         f"{tuple(a.shape)}")
    if not (torch.isfinite(dz).all() and torch.isfinite(a).all()):
        raise ValueError("ksum_add: the gradient terms hold non-finite values")
    k = int(dz.shape[1])
    u0, v0, s0 = state.left, state.right, state.sigma
    ql, _ = torch.linalg.qr(torch.cat([u0, dz], 1))
    qr, _ = torch.linalg.qr(torch.cat([v0, a], 1))
    c = ((ql.T @ u0) * s0) @ (v0.T @ qr) + (ql.T @ dz) @ (a.T @ qr)
    p_mat, s, wh = torch.linalg.svd(c, full_matrices=False)
    if s.numel():  # rounding noise of the SVD is not a direction to keep (or to mix into the estimate)
        s = torch.where(s > s[0] * 1e-12, s, torch.zeros_like(s))
    if max_cond is not None and k == 1:
        nz = s[s > s[0] * 1e-12] if float(s[0]) > 0 else s[:0]
        if nz.numel() and float(nz[0] / nz[-1]) > max_cond:
            return replace(state, terms=state.terms + k, skipped=state.skipped + 1)
    r = state.rank
    p = int(s.shape[0])
    left, right = ql @ p_mat, qr @ wh.T
    if p <= r:
        pad = r - p
        left = torch.cat([left, torch.zeros(n, pad, dtype=left.dtype)], 1)
        right = torch.cat([right, torch.zeros(m, pad, dtype=right.dtype)], 1)
        sigma = torch.cat([s, torch.zeros(pad, dtype=s.dtype)])
    elif mode == "biased":
        left, right, sigma = left[:, :r], right[:, :r], s[:r]
    else:
        mix, sigma = reduce_unbiased(s, r, generator)
        left, right = left @ mix, right @ mix
    return KSum(_store(left, factor_bits), _store(right, factor_bits), _store(sigma, factor_bits),
                state.terms + k, state.skipped)


__all__ = ["MODES", "KSum", "ksum_add", "ksum_bytes", "ksum_init", "ksum_matrix", "ksum_reset", "reduce_unbiased"]

"""Block-floating-point (BFP) gradient accumulation: the opt-in int16 mini-batch buffer of uint8 FQT.

With mini-batches the device keeps a persistent gradient buffer for every trained value while the
batch's samples go through one after another; in int32 (this trainer's default, and what the
generated C keeps) that buffer is as large as float32's. Here it holds int16 mantissas ``m`` and one small non-negative
exponent ``x`` per gradient row (one output row of a dense weight, one filter of a convolution
weight, one exponent for a whole bias vector); the row's value is ``m * 2**x`` in the units of the
int32 accumulator (times the gradient scale ``s_in s_e``).

Block floating point, integer mantissas that share one exponent per block, is the standard DSP
technique for accumulating in narrow fixed-point words without overflow (block-floating-point FFTs
and filters on 16-bit DSPs). Using it for the FQT gradient buffer is our extension, not part of the
paper.

Semantics, one sample's exact int32 gradient row ``g`` at a time, in batch order, starting from
``m = 0, x = 0``::

    t  = (m << x) + g                   exact (int64 on the host)
    x' = the smallest x' >= x such that every round(t / 2**x') fits int16 [-32768, 32767]
    m  = round(t / 2**x'), x = x'

with ``round(t / 2**s) = (t + (1 << (s - 1))) >> s`` for ``s > 0`` (add half, arithmetic shift
right: ties go toward +inf; two instructions on a Cortex-M) and ``t`` itself for ``s = 0``. Rounding
is monotone in ``t`` and fitting is monotone in ``x'``, so a row's ``x'`` follows from its largest and
smallest ``t`` alone. Each sample whose step has ``x' > 0`` adds a rounding error of at most
``2**(x' - 1)`` per element; while every partial sum fits int16 nothing is rounded and the buffer
equals the int32 one exactly.
"""

from __future__ import annotations

import torch

MANT_MIN, MANT_MAX = -(1 << 15), (1 << 15) - 1
"""The int16 mantissa range."""

_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1


def round_shift(t: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``round(t / 2**shift)`` of int64 ``t`` with ties toward +inf: ``(t + (1 << (shift - 1))) >> shift``
    (arithmetic shift) where ``shift > 0``, ``t`` where ``shift == 0`` (the half is ``(1 << shift) >> 1``,
    0 there). ``shift`` broadcasts against ``t``."""
    shift = torch.as_tensor(shift, dtype=torch.int64)
    return (t + ((torch.ones_like(shift) << shift) >> 1)) >> shift


_SHIFTS = torch.arange(63, dtype=torch.int64)
"""Candidate exponents: at 62 every |t| < 2**62 rounds into int16 (here |t| < 2**15 * 2**x + 2**31, far below)."""

_HALVES = (torch.ones_like(_SHIFTS) << _SHIFTS) >> 1


def bfp_add(m: torch.Tensor, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Add one sample's int32 gradient rows ``g`` (``[R, K]``) to the buffer ``(m [R, K], x [R])``;
    returns the new ``(m, x)`` (int64 tensors holding int16 mantissas and the exponents). Vectorized
    over the rows: the exponent is the first of ``x .. 62`` at which the row's largest and smallest
    ``t`` both round into int16 (``[R, 63]`` candidates, no loop)."""
    x = x.unsqueeze(1)
    t = (m.to(torch.int64) << x) + g.to(torch.int64)
    if t.shape[1] == 0:
        return t, x.squeeze(1)
    lo, hi = t.aminmax(dim=1, keepdim=True)
    ok = (((hi + _HALVES) >> _SHIFTS) <= MANT_MAX) & (((lo + _HALVES) >> _SHIFTS) >= MANT_MIN) & (_SHIFTS >= x)
    x = ok.to(torch.uint8).argmax(1)  # the first candidate that fits (fitting is monotone in the exponent)
    return (t + _HALVES[x].unsqueeze(1)) >> x.unsqueeze(1), x


def bfp_accumulate(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Accumulate per-sample int32 gradient rows ``[B, R, K]`` one sample after another into a fresh
    int16 block-float buffer; returns mantissas ``[R, K]`` and exponents ``[R]`` (int64 tensors)."""
    if samples.ndim != 3:
        raise ValueError(f"bfp_accumulate expects [samples, rows, values per row], got shape {tuple(samples.shape)}")
    if samples.is_floating_point():
        raise TypeError(f"bfp_accumulate expects integer gradients, got {samples.dtype}")
    if samples.numel() and (int(samples.min()) < _INT32_MIN or int(samples.max()) > _INT32_MAX):
        raise OverflowError("bfp_accumulate: a per-sample gradient left the signed 32-bit range")
    _, r, k = samples.shape
    m = torch.zeros(r, k, dtype=torch.int64)
    x = torch.zeros(r, dtype=torch.int64)
    for g in samples:  # the device's order: sample by sample
        m, x = bfp_add(m, x, g)
    return m, x


def bfp_value(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The buffer's exact values ``m * 2**x`` (int64, ``[R, K]``)."""
    return m.to(torch.int64) << x.to(torch.int64).unsqueeze(1)


def bfp_sum(samples: torch.Tensor, one_row: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A trained tensor's gradient as the int16 buffer holds it after the mini-batch: per-sample int32
    gradients ``[B, rows, ...]`` -> exact int64 values ``[rows, ...]`` of ``m * 2**x`` and the exponents.
    Rows are the first axis after the batch (dense rows, conv filters); ``one_row`` shares one exponent
    across the whole tensor (a bias vector)."""
    b = samples.shape[0]
    flat = samples.reshape(b, 1, -1) if one_row else samples.reshape(b, samples.shape[1], -1)
    m, x = bfp_accumulate(flat)
    return bfp_value(m, x).reshape(samples.shape[1:]), x


__all__ = ["MANT_MAX", "MANT_MIN", "bfp_accumulate", "bfp_add", "bfp_sum", "bfp_value", "round_shift"]

"""Rounding of real values to integers, and of integers divided by a power of two.

Both operations share one set of modes so that a value rounds the same way whether it
arrives as a float (quantizing a weight) or as a wide integer (requantizing an accumulator):

* ``floor``: toward minus infinity. Vivado/hls4ml ``AP_TRN``, the ``ap_fixed`` default, and an
  arithmetic right shift in C.
* ``nearest``: to nearest, ties toward plus infinity. ``AP_RND``; also the single-rounding
  requantization of CMSIS-NN (add half, then shift).
* ``nearest_even``: to nearest, ties to even. ``AP_RND_CONV``.
* ``stochastic``: up with probability equal to the discarded fraction (unbiased in expectation);
  needs an explicit ``torch.Generator`` so results are reproducible.
"""

from __future__ import annotations

import torch

ROUNDING_MODES = ("floor", "nearest", "nearest_even", "stochastic")
MAX_SHIFT = 62  # 1 << 63 overflows int64


def check_rounding(mode: str) -> str:
    """Return ``mode`` if it is a known rounding mode, else raise a ValueError that lists them."""
    if mode not in ROUNDING_MODES:
        raise ValueError(f"unknown rounding mode {mode!r}; expected one of {ROUNDING_MODES}")
    return mode


def _need_generator(mode: str, generator: torch.Generator | None) -> None:
    if mode == "stochastic" and generator is None:
        raise ValueError("stochastic rounding needs a torch.Generator (pass generator=...)")


def round_float(x: torch.Tensor, mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Round a float64 tensor to integral float64 values with ``mode`` (no range or NaN checks).

    Exact for every finite float64 input: ``nearest`` and ``stochastic`` decide from the fraction
    ``x - floor(x)``, which is exact (``x + 0.5`` is not: it rounds 0.49999999999999994 up, and
    ``x + u`` moves integers of 2**52 and above).
    """
    if mode == "nearest_even":
        return torch.round(x)
    r = torch.floor(x)
    if mode == "floor":
        return r
    if mode == "nearest":
        return r + (x - r >= 0.5)
    check_rounding(mode)
    _need_generator(mode, generator)
    u = torch.rand(x.shape, generator=generator, dtype=torch.float64, device=x.device)
    return r + (u < x - r)


def round_real(x: torch.Tensor, mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Round a float tensor to integral values (returned as int64) with the given mode.

    Raises ValueError on NaN or infinity: a non-finite value has no integer representation and
    must never leak silently into a stored tensor.
    """
    check_rounding(mode)
    _need_generator(mode, generator)
    x = x.to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"cannot quantize: {bad} non-finite value(s) (NaN or inf) in the input")
    r = round_float(x, mode, generator)
    if bool((r.abs() > 2.0**62).any()):
        raise OverflowError("value too large to represent as a 64-bit integer before overflow handling")
    return r.to(torch.int64)


def round_shift(
    v: torch.Tensor,
    shift: int | torch.Tensor,
    mode: str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Compute ``v / 2**shift`` rounded with ``mode``, exactly, in int64.

    ``v`` is an int64 tensor; ``shift`` is an int or an int64 tensor broadcastable to ``v``
    (per-channel shifts). A negative shift is an exact left shift.
    """
    check_rounding(mode)
    _need_generator(mode, generator)
    if v.dtype != torch.int64:
        raise TypeError(f"round_shift expects an int64 tensor, got {v.dtype}")
    s = torch.as_tensor(shift, dtype=torch.int64, device=v.device)
    if s.numel() and (int(s.max()) > MAX_SHIFT or int(s.min()) < -MAX_SHIFT):
        raise ValueError(f"shift {int(s.max()) if int(s.max()) > MAX_SHIFT else int(s.min())} is outside "
                         f"[-{MAX_SHIFT}, {MAX_SHIFT}]: the requantization scale is too extreme for 64-bit integers")
    left = torch.clamp(-s, min=0)
    right = torch.clamp(s, min=0)
    v = torch.bitwise_left_shift(v, left)
    one = torch.ones((), dtype=torch.int64, device=v.device)
    if mode == "floor":
        return torch.bitwise_right_shift(v, right)
    if mode == "nearest":
        half = torch.where(right > 0, torch.bitwise_left_shift(one, right - 1), 0)
        return torch.bitwise_right_shift(v + half, right)
    if mode == "nearest_even":
        q = torch.bitwise_right_shift(v, right)
        r = v - torch.bitwise_left_shift(q, right)
        half = torch.where(right > 0, torch.bitwise_left_shift(one, right - 1), 0)
        up = (right > 0) & ((r > half) | ((r == half) & (torch.bitwise_and(q, 1) == 1)))
        return q + up.to(torch.int64)
    # stochastic: add a uniform integer in [0, 2**right) before flooring
    span = torch.bitwise_left_shift(one, right).to(torch.float64)
    u = torch.rand(torch.broadcast_shapes(v.shape, s.shape), generator=generator, dtype=torch.float64)
    noise = torch.floor(u * span).to(torch.int64)
    return torch.bitwise_right_shift(v + noise, right)

"""Quantize, dequantize and requantize: the one place where real values meet integers.

Every integer kernel in edgetrain ends the same way: an exact wide accumulator ``acc`` (int64
here, int32 on the device) at a known real scale ``s_acc`` becomes an output integer at the output
format's scale. The real ratio ``M = s_acc / s_out`` is written as ``m * 2**-shift`` with an
integer multiplier ``m`` (Jacob et al. 2018, eq. 5-6; CMSIS-NN ``arm_nn_requantize`` with single
rounding). For fixed-point formats ``M`` is a power of two, ``m == 1`` and the requantization is a
rounded shift, as in ``ap_fixed`` assignment.
"""

from __future__ import annotations

import math

import torch

from .affine import Affine
from .fixed import FixedPoint
from .rounding import round_float, round_real, round_shift

Format = FixedPoint | Affine

MULTIPLIER_BITS = 31  # m < 2**31: fits a signed 32-bit register, as on Cortex-M


def quantize(x: torch.Tensor, fmt: Format, generator: torch.Generator | None = None) -> torch.Tensor:
    """Real values -> raw integers (int64) in ``fmt``, with the format's rounding and overflow."""
    x = torch.as_tensor(x, dtype=torch.float64)
    if isinstance(fmt, FixedPoint):
        span = 2.0**fmt.width if fmt.overflow == "wrap" else None
        y = _scaled(x, x * 2.0**fmt.frac_bits, span)
        return fmt.fit(round_real(y, fmt.rounding, generator))
    scale, zp = fmt.scale_tensor(x.ndim), fmt.zero_point_tensor(x.ndim)
    return fmt.fit(round_real(_scaled(x, x / scale), fmt.rounding, generator) + zp)


def _scaled(x: torch.Tensor, y: torch.Tensor, span: float | None = None) -> torch.Tensor:
    """Make ``y`` (``x`` scaled to raw units) safe to round to int64 without changing the final
    raw value, so every finite input wraps or saturates exactly as ``ap_fixed`` does.

    A negative value that underflowed to 0 stays negative (floor gives -1). Saturating formats
    (``span`` None): values beyond +-2**40 (past any 32-bit range plus zero point) are clamped.
    Wrapping formats: a value of magnitude >= 2**53 is an integer and is reduced modulo ``span``
    exactly; one that overflowed to inf from a finite input is a multiple of ``span`` (0).
    NaN and inf inputs are left for ``round_real`` to reject.
    """
    y = torch.where((y == 0) & (x < 0), -(2.0**-1074), y)
    if span is None:
        return torch.where(torch.isfinite(x), y.clamp(-(2.0**40), 2.0**40), y)
    y = torch.where(torch.isinf(y) & torch.isfinite(x), 0.0, y)
    return torch.where(y.abs() >= 2.0**53, y - span * torch.floor(y / span), y)


def dequantize(raw: torch.Tensor, fmt: Format) -> torch.Tensor:
    """Raw integers -> real values (float64, exact for every format up to 32 bits)."""
    raw = torch.as_tensor(raw)
    if raw.is_floating_point():
        raise TypeError(f"dequantize expects an integer tensor, got {raw.dtype}")
    raw = raw.to(torch.int64)
    if isinstance(fmt, FixedPoint):
        return raw.to(torch.float64) * 2.0 ** (-fmt.frac_bits)
    return (raw - fmt.zero_point_tensor(raw.ndim)).to(torch.float64) * fmt.scale_tensor(raw.ndim)


def in_range(raw: torch.Tensor, fmt: Format) -> bool:
    """True if every raw value fits ``fmt`` (an empty tensor fits)."""
    if not raw.numel():
        return True
    lo, hi = torch.aminmax(raw)
    return int(lo) >= fmt.raw_min and int(hi) <= fmt.raw_max


def scale_of(fmt: Format, ndim: int = 0) -> torch.Tensor:
    """Real value of one raw step of ``fmt`` (float64; per channel for per-channel formats)."""
    if isinstance(fmt, FixedPoint):
        return torch.tensor(fmt.lsb, dtype=torch.float64)
    return fmt.scale_tensor(ndim)


def zero_point_of(fmt: Format, ndim: int = 0) -> torch.Tensor:
    if isinstance(fmt, FixedPoint):
        return torch.zeros((), dtype=torch.int64)
    return fmt.zero_point_tensor(ndim)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """Write a positive real ``M`` as ``m * 2**-shift`` with integer ``m``.

    Exact powers of two give ``m == 1`` (a pure shift); anything else gives a 31-bit multiplier
    ``m`` in ``[2**30, 2**31)`` (relative error below ``2**-31``).
    """
    if not (math.isfinite(real) and real > 0):
        raise ValueError(f"requantization multiplier must be finite and > 0, got {real}")
    mant, exp = math.frexp(real)  # real = mant * 2**exp, mant in [0.5, 1)
    if mant == 0.5:
        return 1, 1 - exp
    m = round(mant * (1 << MULTIPLIER_BITS))
    shift = MULTIPLIER_BITS - exp
    if m == 1 << MULTIPLIER_BITS:
        m, shift = m // 2, shift - 1
    return m, shift


def multipliers(acc_scale: torch.Tensor, out_fmt: Format) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element (or per-channel) ``(m, shift)`` int64 tensors for ``acc_scale / out_scale``.

    ``acc_scale`` is a float64 tensor (scalar or per channel); the result has its shape.
    """
    if isinstance(out_fmt, Affine) and out_fmt.per_channel:
        raise ValueError("a requantization target must be a per-tensor format")
    out_scale = scale_of(out_fmt).reshape(())
    ratio = (acc_scale / out_scale).reshape(-1).tolist()
    ms = [quantize_multiplier(r) for r in ratio]
    shape = acc_scale.shape
    m = torch.tensor([a for a, _ in ms], dtype=torch.int64).reshape(shape)
    s = torch.tensor([b for _, b in ms], dtype=torch.int64).reshape(shape)
    return m, s


def requantize(
    acc: torch.Tensor,
    m: torch.Tensor | int,
    shift: torch.Tensor | int,
    out_fmt: Format,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Exact wide accumulator -> raw output integers: ``fit(round(acc * m / 2**shift) + zp_out)``.

    Rounding is the output format's mode; overflow is its overflow mode (wrap or saturate for
    fixed point, saturate for affine). ``m``/``shift`` broadcast against ``acc`` (per channel).

    ``acc`` is int64, or float64 holding exact integers below 2**52 in magnitude (the integer
    forward keeps activations that way, so that BLAS can do its products). The result has the
    dtype of ``acc``. A unit multiplier on float64 is computed in float64, where scaling by a
    power of two, rounding and wrapping are exact; every other case runs in int64.
    """
    if isinstance(out_fmt, Affine) and out_fmt.per_channel:
        raise ValueError("a requantization target must be a per-tensor format")
    m_t = torch.as_tensor(m, dtype=torch.int64)
    unit = bool((m_t == 1).all())
    if acc.dtype == torch.float64:
        if unit and isinstance(out_fmt, FixedPoint) and out_fmt.rounding != "stochastic":
            scaled = acc * torch.exp2(-torch.as_tensor(shift, dtype=torch.float64))
            return out_fmt.fit(round_float(scaled, out_fmt.rounding))
        return requantize(acc.to(torch.int64), m_t, shift, out_fmt, generator).to(torch.float64)
    if acc.dtype != torch.int64:
        raise TypeError(f"requantize expects an int64 (or exact float64) accumulator, got {acc.dtype}")
    q = round_shift(acc if unit else acc * m_t, shift, out_fmt.rounding, generator)
    if isinstance(out_fmt, Affine):
        q = q + out_fmt.zero_point[0]
    return out_fmt.fit(q)

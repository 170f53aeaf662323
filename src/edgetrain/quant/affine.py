"""Affine (scale and zero-point) integer formats: uint8/int8 tensors and int32 biases.

A real value is ``scale * (q - zero_point)`` with ``q`` an integer of ``bits`` bits (Jacob et al.,
CVPR 2018, eq. 1). Scales and zero points are per tensor, or per channel along ``axis`` (used for
int8 weights, one scale per output channel, as in CMSIS-NN and TFLite). The default rounding when
quantizing floats is ``nearest``; out-of-range values saturate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .rounding import check_rounding


@dataclass(frozen=True)
class Affine:
    """An affine integer format. ``scale`` and ``zero_point`` are tuples: one entry per tensor,
    or one per channel along ``axis``."""

    bits: int
    signed: bool
    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None = None
    rounding: str = "nearest"

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 32:
            raise ValueError(f"Affine bits must be an integer in 2..32, got {self.bits!r}")
        check_rounding(self.rounding)
        for z in self.zero_point:
            if not float(z).is_integer():
                raise ValueError(f"Affine zero point must be an integer, got {z!r}")
        object.__setattr__(self, "scale", tuple(float(s) for s in self.scale))
        object.__setattr__(self, "zero_point", tuple(int(z) for z in self.zero_point))
        if len(self.scale) != len(self.zero_point) or not self.scale:
            raise ValueError("Affine needs as many zero points as scales (at least one)")
        if self.axis is None and len(self.scale) != 1:
            raise ValueError("a per-tensor Affine format has exactly one scale; set axis for per-channel")
        for s in self.scale:
            if not (math.isfinite(s) and s > 0):
                raise ValueError(f"Affine scale must be finite and > 0, got {s}")
        for z in self.zero_point:
            if not self.raw_min <= z <= self.raw_max:
                raise ValueError(f"zero point {z} is outside the {self.bits}-bit range")

    @property
    def raw_min(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def raw_max(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    @property
    def name(self) -> str:
        return f"{'int' if self.signed else 'uint'}{self.bits}"

    def __str__(self) -> str:
        return self.name

    def _view(self, values: tuple, ndim: int, dtype: torch.dtype) -> torch.Tensor:
        t = torch.tensor(values, dtype=dtype)
        if self.axis is None:
            return t.reshape(())
        shape = [1] * ndim
        shape[self.axis] = len(values)
        return t.reshape(shape)

    def scale_tensor(self, ndim: int) -> torch.Tensor:
        """Scales as a float64 tensor broadcastable against a tensor of ``ndim`` dimensions."""
        return self._view(self.scale, ndim, torch.float64)

    def zero_point_tensor(self, ndim: int) -> torch.Tensor:
        """Zero points as an int64 tensor broadcastable against a tensor of ``ndim`` dimensions."""
        return self._view(self.zero_point, ndim, torch.int64)

    def fit(self, raw: torch.Tensor) -> torch.Tensor:
        """Saturate integer values to the format's range."""
        return raw.clamp(self.raw_min, self.raw_max)

    def to_dict(self) -> dict:
        return {"kind": "affine", "bits": self.bits, "signed": self.signed, "scale": list(self.scale),
                "zero_point": list(self.zero_point), "axis": self.axis, "rounding": self.rounding}


def affine_from_range(
    lo: torch.Tensor | float,
    hi: torch.Tensor | float,
    bits: int = 8,
    signed: bool = False,
    symmetric: bool = False,
    axis: int | None = None,
) -> Affine:
    """Choose scale and zero point so that [lo, hi] (widened to include 0) maps onto the integer
    range. ``symmetric`` forces zero point 0 (int8 weights). ``lo``/``hi`` are per channel when
    ``axis`` is set."""
    lo_t = torch.as_tensor(lo, dtype=torch.float64).reshape(-1)
    hi_t = torch.as_tensor(hi, dtype=torch.float64).reshape(-1)
    if not (torch.isfinite(lo_t).all() and torch.isfinite(hi_t).all()):
        raise ValueError("cannot derive an Affine format from a non-finite range")
    lo_t, hi_t = torch.minimum(lo_t, torch.zeros(())), torch.maximum(hi_t, torch.zeros(()))
    qmin = -(1 << (bits - 1)) if signed else 0
    qmax = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    scales, zps = [], []
    for a, b in zip(lo_t.tolist(), hi_t.tolist(), strict=True):
        if symmetric:
            m = max(abs(a), abs(b))
            z = 0 if signed else (qmin + qmax + 1) // 2
            s = m / (qmax - z) if m > 0 else 1.0
        else:
            s = (b - a) / (qmax - qmin) if b > a else 1.0
            z = int(min(max(round(qmin - a / s), qmin), qmax))
        scales.append(s)
        zps.append(z)
    return Affine(bits, signed, tuple(scales), tuple(zps), axis)

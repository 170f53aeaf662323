"""Signed and unsigned fixed-point numbers with Vivado HLS ``ap_fixed`` semantics.

``FixedPoint(width=W, integer_bits=I)`` is ``ap_fixed<W, I>``: a two's-complement integer of W bits
(the *raw* value) read as ``raw * 2**-(W - I)``. I counts the sign bit, so ``ap_fixed<16,6>``
(hls4ml's default precision, our reference deployed format) covers [-32, 32 - 2**-10] in steps of
2**-10. ``signed=False`` is ``ap_ufixed<W, I>``.

Quantization modes follow the HLS types: the default is truncation toward minus infinity
(``AP_TRN``) and wrap-around on overflow (``AP_WRAP``); ``rounding`` may also be ``nearest``
(``AP_RND``), ``nearest_even`` (``AP_RND_CONV``) or ``stochastic``, and ``overflow`` may be
``saturate`` (``AP_SAT``). Raw values are held in int64 tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .rounding import check_rounding

OVERFLOW_MODES = ("wrap", "saturate")


@dataclass(frozen=True)
class FixedPoint:
    """A fixed-point format ``ap_fixed<width, integer_bits>`` (or ``ap_ufixed`` if unsigned)."""

    width: int
    integer_bits: int
    signed: bool = True
    rounding: str = "floor"
    overflow: str = "wrap"

    def __post_init__(self) -> None:
        if not isinstance(self.width, int) or not 1 <= self.width <= 32:
            raise ValueError(f"FixedPoint width must be an integer in 1..32, got {self.width!r}")
        if not isinstance(self.integer_bits, int):
            raise ValueError(f"FixedPoint integer_bits must be an integer, got {self.integer_bits!r}")
        if self.signed and self.width < 2:
            raise ValueError("a signed FixedPoint needs at least 2 bits")
        check_rounding(self.rounding)
        if self.overflow not in OVERFLOW_MODES:
            raise ValueError(f"unknown overflow mode {self.overflow!r}; expected one of {OVERFLOW_MODES}")

    @property
    def frac_bits(self) -> int:
        """Number of fractional bits, ``width - integer_bits`` (may be negative or exceed width)."""
        return self.width - self.integer_bits

    @property
    def bits(self) -> int:
        """Storage bits per value."""
        return self.width

    @property
    def lsb(self) -> float:
        """Value of one least-significant bit."""
        return 2.0 ** (-self.frac_bits)

    @property
    def raw_min(self) -> int:
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def raw_max(self) -> int:
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1

    @property
    def min_value(self) -> float:
        return self.raw_min * self.lsb

    @property
    def max_value(self) -> float:
        return self.raw_max * self.lsb

    @property
    def name(self) -> str:
        """Canonical spec string, e.g. ``fixed16_6`` or ``ufixed8_2:nearest:saturate``."""
        base = f"{'' if self.signed else 'u'}fixed{self.width}_{self.integer_bits}"
        extra = [m for m, d in ((self.rounding, "floor"), (self.overflow, "wrap")) if m != d]
        return ":".join([base, *extra])

    def __str__(self) -> str:
        return self.name

    def fit(self, raw: torch.Tensor) -> torch.Tensor:
        """Bring integer raw values into the format's range with its overflow mode (wrap or saturate)."""
        if self.overflow == "saturate":
            return raw.clamp(self.raw_min, self.raw_max)
        if raw.numel():
            lo, hi = torch.aminmax(raw)
            if int(lo) >= self.raw_min and int(hi) <= self.raw_max:
                return raw  # nothing to wrap: skip the modulo (the common case)
        span = 1 << self.width
        return torch.remainder(raw - self.raw_min, span) + self.raw_min

    def to_dict(self) -> dict:
        return {"kind": "fixed", "width": self.width, "integer_bits": self.integer_bits,
                "signed": self.signed, "rounding": self.rounding, "overflow": self.overflow}


def parse_fixed(spec: str) -> FixedPoint:
    """Parse ``fixed16_6`` / ``ufixed8_0`` with optional ``:mode`` suffixes, e.g.
    ``fixed16_6:nearest:saturate``. Modes may come in any order."""
    head, *mods = spec.strip().split(":")
    signed = not head.startswith("u")
    body = head[1:] if not signed else head
    if not body.startswith("fixed"):
        raise ValueError(f"not a fixed-point spec: {spec!r} (expected e.g. 'fixed16_6')")
    try:
        w_str, i_str = body[len("fixed"):].split("_")
        width, integer_bits = int(w_str), int(i_str)
    except ValueError:
        raise ValueError(
            f"cannot parse fixed-point spec {spec!r}: expected 'fixed<width>_<integer_bits>', "
            "e.g. 'fixed16_6'") from None
    rounding, overflow = "floor", "wrap"
    try:
        for m in mods:
            if m in OVERFLOW_MODES or m == "sat":
                overflow = "saturate" if m == "sat" else m
            else:
                rounding = check_rounding(m)
        return FixedPoint(width, integer_bits, signed, rounding, overflow)
    except ValueError as e:
        raise ValueError(f"bad fixed-point spec {spec!r}: {e}") from None

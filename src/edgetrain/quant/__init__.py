"""Number formats and their arithmetic: fixed point (``ap_fixed``), affine integers, rounding.

All conversions between real values and integers go through :func:`quantize`,
:func:`dequantize` and :func:`requantize` in ``requant.py``.
"""

from .affine import Affine, affine_from_range
from .fixed import OVERFLOW_MODES, FixedPoint, parse_fixed
from .requant import (
    Format,
    dequantize,
    in_range,
    multipliers,
    quantize,
    quantize_multiplier,
    requantize,
    scale_of,
    zero_point_of,
)
from .rounding import ROUNDING_MODES, round_float, round_real, round_shift


def format_from_dict(d: dict) -> Format:
    """Rebuild a format from its ``to_dict()`` form (used by model files)."""
    kind = d.get("kind")
    if kind == "fixed":
        return FixedPoint(d["width"], d["integer_bits"], d["signed"], d["rounding"], d["overflow"])
    if kind == "affine":
        return Affine(d["bits"], d["signed"], tuple(d["scale"]), tuple(d["zero_point"]), d["axis"],
                      d["rounding"])
    raise ValueError(f"unknown format kind {kind!r} (expected 'fixed' or 'affine')")


__all__ = [
    "Affine", "FixedPoint", "Format", "OVERFLOW_MODES", "ROUNDING_MODES", "affine_from_range",
    "dequantize", "format_from_dict", "in_range", "multipliers", "parse_fixed", "quantize", "quantize_multiplier",
    "requantize", "round_float", "round_real", "round_shift", "scale_of", "zero_point_of",
]

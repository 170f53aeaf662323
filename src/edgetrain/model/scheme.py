"""Quantization schemes: which number format each tensor of a converted network gets.

* ``fixed<W>_<I>[:rounding][:overflow]``: every tensor (input, weights, biases, activations) in
  ``ap_fixed<W, I>``, hls4ml's ``Precision`` model (default ``ap_fixed<16,6>``). Calibration data only
  checks how much of each tensor falls outside the range.
* ``int8``: weights int8 symmetric per output channel, activations int8 asymmetric per tensor,
  biases int32 at the accumulator scale (the CMSIS-NN / TFLite Micro convention).
* ``uint8``: weights, activations uint8 asymmetric per tensor, biases int32 at the accumulator scale
  (the format of fully quantized training, Deutel et al. arXiv 2407.10734, sec. III).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..quant import FixedPoint, parse_fixed


@dataclass(frozen=True)
class FixedScheme:
    fmt: FixedPoint

    @property
    def name(self) -> str:
        return self.fmt.name


@dataclass(frozen=True)
class AffineScheme:
    signed: bool  # int8 (True) or uint8 (False)
    bits: int = 8

    @property
    def name(self) -> str:
        return f"{'int' if self.signed else 'uint'}{self.bits}"

    @property
    def per_channel_weights(self) -> bool:
        return self.signed


Scheme = FixedScheme | AffineScheme


def parse_scheme(spec: str) -> Scheme:
    """Parse a format spec given on the command line (``fixed16_6``, ``int8``, ``uint8``...)."""
    s = spec.strip().lower()
    if s in ("int8", "uint8"):
        return AffineScheme(signed=s == "int8")
    if "fixed" in s:
        fmt = parse_fixed(s)
        if fmt.rounding == "stochastic":
            raise ValueError(f"format {spec!r}: stochastic rounding is a training-time option; a deployed "
                             "model's formats must round deterministically (floor, nearest, nearest_even)")
        return FixedScheme(fmt)
    raise ValueError(f"unknown format {spec!r}; expected 'fixed<W>_<I>' (e.g. fixed16_6, "
                     "fixed8_3:nearest:saturate), 'int8' or 'uint8'")

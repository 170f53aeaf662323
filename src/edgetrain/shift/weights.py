"""Stored-weight drift: the deployed weights themselves change while the model sits on the device.

Two scenarios after Gural et al., "Low-Rank Training of Deep Neural Networks for Emerging Memory
Technology" (arXiv 2009.03887):

* **analog**: weights held as analog levels (e.g. resistive or flash cells) wander by Gaussian noise
  of ``sigma_lsb`` least-significant bits; the read-out is rounded to the nearest level and a cell
  saturates at the ends of its range.
* **digital**: each stored bit flips independently with probability ``p`` (retention errors, soft
  errors in SRAM or NVM); the word is then read back in the parameter's format.

Both act on raw integer values and their format (``FixedPoint`` or ``Affine``) and return values in
range, so the result can be written straight back with ``DeployedModel.with_params``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..model import DeployedModel
from ..quant import Format, in_range, round_real
from .input import GeneratorLike, as_generator, format_number

DRIFT_KINDS = ("none", "analog", "digital")


def _check_raw(raw: torch.Tensor, fmt: Format, what: str) -> None:
    if not isinstance(raw, torch.Tensor) or raw.is_floating_point() or raw.is_complex():
        raise TypeError(f"{what} expects an integer raw tensor, got "
                        f"{raw.dtype if isinstance(raw, torch.Tensor) else type(raw).__name__}")
    if not in_range(raw, fmt):
        raise ValueError(f"{what}: raw values outside the range of {fmt.name} "
                         f"[{fmt.raw_min}, {fmt.raw_max}]")


def analog_drift(
    raw: torch.Tensor, fmt: Format, sigma_lsb: float, generator: GeneratorLike
) -> torch.Tensor:
    """Add ``N(0, sigma_lsb^2)`` (in LSBs) to each raw value, round to nearest, clip to the range.

    Clipping happens whatever the format's overflow mode: a physical cell saturates, it does not
    wrap around. Returns a new int64 tensor of the same shape.
    """
    _check_raw(raw, fmt, "analog_drift")
    if not (math.isfinite(sigma_lsb) and sigma_lsb >= 0):
        raise ValueError(f"analog_drift: sigma_lsb must be a finite number >= 0, got {sigma_lsb}")
    g = as_generator(generator, "analog_drift")
    noise = torch.randn(raw.shape, generator=g, dtype=torch.float64, device=g.device)
    drifted = round_real(raw.to(torch.float64) + sigma_lsb * noise.to(raw.device), "nearest")
    return drifted.clamp(fmt.raw_min, fmt.raw_max)


def bit_flips(raw: torch.Tensor, fmt: Format, p: float, generator: GeneratorLike) -> torch.Tensor:
    """Flip each of the ``fmt.bits`` bits of every stored word independently with probability ``p``.

    The word is the two's-complement pattern for signed formats and the plain binary value for
    unsigned ones; after the flips it is read back the same way, so the result always lies in
    ``[fmt.raw_min, fmt.raw_max]``. ``p = 1`` inverts every bit (signed: ``raw -> ~raw = -raw - 1``).
    Returns a new int64 tensor of the same shape.
    """
    _check_raw(raw, fmt, "bit_flips")
    if not (0.0 <= p <= 1.0):
        raise ValueError(f"bit_flips: p must be a probability in [0, 1], got {p}")
    g = as_generator(generator, "bit_flips")
    bits = fmt.bits
    # float64 draws: p down to ~1e-16 is honoured (float32 would round p < 6e-8 to 0 or 6e-8).
    u = torch.rand((*raw.shape, bits), generator=g, dtype=torch.float64, device=g.device)
    weights = torch.pow(2, torch.arange(bits, dtype=torch.int64))  # bit k has weight 2**k
    mask = ((u < p).to(torch.int64) * weights).sum(-1).to(raw.device)
    word = raw.to(torch.int64) & ((1 << bits) - 1)
    word = word ^ mask
    if fmt.raw_min < 0:  # signed: the top bit carries weight -2**(bits-1)
        word = torch.where(word >= (1 << (bits - 1)), word - (1 << bits), word)
    return word


def drift_model(
    model: DeployedModel,
    kind: str,
    amount: float,
    generator: GeneratorLike,
    params: set[str] | None = None,
) -> DeployedModel:
    """A new model whose stored parameters (all, or the names in ``params``, e.g. ``{"0.weight"}``)
    have drifted: ``kind="analog"`` with ``amount`` = sigma in LSBs, ``kind="digital"`` with
    ``amount`` = bit-flip probability. Parameters are visited in model order, so one generator
    state gives one result."""
    if kind not in ("analog", "digital"):
        raise ValueError(f"drift kind must be 'analog' or 'digital', got {kind!r}")
    g = as_generator(generator, "drift_model")
    names = [n for n, _, _ in model.params()]
    if params is not None:
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise KeyError(f"model has no parameter(s) {unknown}; it has {names}")
    drift = analog_drift if kind == "analog" else bit_flips
    updates = {name: drift(raw, fmt, amount, g) for name, raw, fmt in model.params()
               if params is None or name in params}
    return model.with_params(updates)


@dataclass(frozen=True)
class WeightDrift:
    """A stored-weight drift scenario: ``kind`` ("analog", "digital" or "none"), ``amount`` (sigma
    in LSBs, or flip probability) and ``every``: 0 drifts once, when the stream starts; ``k > 0``
    drifts again every ``k`` stream samples, cumulatively, like a cell that keeps ageing.
    Specs ``analog:4``, ``digital:1e-4``, ``analog:1@1000``, ``none`` (see ``parse_drift``)."""

    kind: str
    amount: float = 0.0
    every: int = 0

    def __post_init__(self) -> None:
        if self.kind not in DRIFT_KINDS:
            raise ValueError(f"unknown drift kind {self.kind!r}; expected one of {DRIFT_KINDS}")
        a = self.amount
        if not (isinstance(a, int | float) and math.isfinite(a) and a >= 0):
            raise ValueError(f"drift amount must be a finite number >= 0, got {a!r}")
        if self.kind == "digital" and a > 1:
            raise ValueError(f"digital drift amount is a flip probability in [0, 1], got {a}")
        if not (isinstance(self.every, int) and self.every >= 0):
            raise ValueError(f"drift 'every' must be an integer >= 0, got {self.every!r}")

    @property
    def name(self) -> str:
        if self.kind == "none":
            return "none"
        base = f"{self.kind}:{format_number(self.amount)}"
        return base + (f"@{self.every}" if self.every else "")

    def due(self, t: int) -> bool:
        """Whether the weights drift just before stream sample ``t`` (0-based) is processed."""
        if self.kind == "none":
            return False
        return t == 0 if self.every == 0 else t % self.every == 0

    def apply(
        self, model: DeployedModel, generator: GeneratorLike, params: set[str] | None = None
    ) -> DeployedModel:
        """One drift event on ``model`` (see ``drift_model``); ``none`` returns the model itself."""
        if self.kind == "none":
            return model
        return drift_model(model, self.kind, self.amount, generator, params)

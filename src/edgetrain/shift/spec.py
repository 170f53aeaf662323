"""Spec strings for shifts, schedules and weight drift, as written in configs and result records.

Grammar (every object's ``name`` is written in it, so ``parse(x.name).name == x.name``)::

    shift     := part ("+" part)*                applied left to right
    part      := "none" | "noise:S" | "white:A" | "contrast:C" | "offset:O"
               | "rotate:DEG[:random]" | "scale:F[:random]" | "translate:D[,DY][:random]"
    schedule  := shift ("|" shift)* "@" EVERY    e.g. "none|noise:0.3@500"
    drift     := "none" | ("analog:SIGMA_LSB" | "digital:P") ["@" EVERY]

The kinds are listed in one explicit table (``SHIFT_KINDS``), not registered at import.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from .input import (
    Compose,
    Contrast,
    GaussianNoise,
    NoShift,
    Offset,
    Rotate,
    Scale,
    Shift,
    Translate,
    WhiteNoise,
)
from .stream import Schedule
from .weights import DRIFT_KINDS, WeightDrift


def _number(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"{text!r} is not a finite number")
    return v


def _one_number(cls: type) -> Callable[[list[str]], Shift]:
    def build(args: list[str]) -> Shift:
        if len(args) != 1:
            raise ValueError(f"expected exactly one number, got {len(args)} argument(s)")
        return cls(_number(args[0]))
    return build


def _split_random(args: list[str]) -> tuple[list[str], bool]:
    if args and args[-1] == "random":
        return args[:-1], True
    return args, False


def _build_rotate(args: list[str]) -> Shift:
    args, random = _split_random(args)
    if len(args) != 1:
        raise ValueError("expected an angle in degrees, optionally followed by ':random'")
    return Rotate(_number(args[0]), random)


def _build_scale(args: list[str]) -> Shift:
    args, random = _split_random(args)
    if len(args) != 1:
        raise ValueError("expected a scale factor, optionally followed by ':random'")
    return Scale(_number(args[0]), random)


def _build_translate(args: list[str]) -> Shift:
    args, random = _split_random(args)
    parts = args[0].split(",") if len(args) == 1 else []
    if len(parts) not in (1, 2):
        raise ValueError("expected pixels 'D' or 'DX,DY', optionally followed by ':random'")
    dx = _number(parts[0])
    dy = _number(parts[1]) if len(parts) == 2 else dx
    return Translate(dx, dy, random)


def _build_none(args: list[str]) -> Shift:
    if args:
        raise ValueError("'none' takes no arguments")
    return NoShift()


# kind -> (usage shown in errors, builder taking the text after "kind:" split on ":")
SHIFT_KINDS: dict[str, tuple[str, Callable[[list[str]], Shift]]] = {
    "none": ("none", _build_none),
    "noise": ("noise:<sigma>", _one_number(GaussianNoise)),
    "white": ("white:<amplitude>", _one_number(WhiteNoise)),
    "rotate": ("rotate:<degrees>[:random]", _build_rotate),
    "translate": ("translate:<pixels>[,<dy>][:random]", _build_translate),
    "scale": ("scale:<factor>[:random]", _build_scale),
    "contrast": ("contrast:<factor>", _one_number(Contrast)),
    "offset": ("offset:<amount>", _one_number(Offset)),
}


def _valid_kinds() -> str:
    return "valid kinds: " + ", ".join(usage for usage, _ in SHIFT_KINDS.values())


def _parse_part(part: str, spec: str) -> Shift:
    kind, *args = part.strip().split(":")
    kind = kind.strip().lower()
    if kind not in SHIFT_KINDS:
        raise ValueError(f"shift spec {spec!r}: unknown kind {kind!r}; {_valid_kinds()}")
    try:
        return SHIFT_KINDS[kind][1]([a.strip() for a in args])
    except ValueError as e:
        raise ValueError(f"shift spec {spec!r}: bad {part.strip()!r} ({e}); "
                         f"{_valid_kinds()}") from None


def parse_shift(spec: str) -> Shift:
    """Read a shift spec such as ``noise:0.3`` or ``rotate:10+noise:0.1`` (see module docstring).

    Raises ValueError naming the spec and listing the valid kinds for an unknown kind, a value
    that is not a number, or an out-of-range value (e.g. a negative sigma).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty shift spec {spec!r}; {_valid_kinds()}")
    # Split on '+' only before a kind name, so exponents such as '1e+3' stay intact.
    parts = re.split(r"\s*\+\s*(?=[A-Za-z])", spec.strip())
    shifts = [_parse_part(p, spec) for p in parts]
    return shifts[0] if len(shifts) == 1 else Compose(tuple(shifts))


def _split_every(spec: str, what: str) -> tuple[str, int | None]:
    if "@" not in spec:
        return spec, None
    body, every = spec.rsplit("@", 1)
    try:
        return body, int(every)
    except ValueError:
        raise ValueError(f"{what} spec {spec!r}: '@{every}' is not an integer sample count") from None


def parse_schedule(spec: str) -> Schedule:
    """Read a schedule spec ``shift|shift|...@every``, e.g. ``none|noise:0.3@500``."""
    body, every = _split_every(spec.strip(), "schedule")
    if every is None:
        raise ValueError(f"schedule spec {spec!r}: missing '@<every>' (e.g. 'none|noise:0.3@500')")
    try:
        return Schedule(tuple(parse_shift(s) for s in body.split("|")), every)
    except ValueError as e:
        raise ValueError(f"schedule spec {spec!r}: {e}") from None


def parse_drift(spec: str) -> WeightDrift:
    """Read a weight-drift spec: ``analog:4`` (sigma in LSBs), ``digital:1e-4`` (flip
    probability), either with an optional ``@every`` (re-drift every that many stream samples),
    or ``none``."""
    valid = "valid drift specs: none, analog:<sigma_lsb>[@every], digital:<p>[@every]"
    body, every = _split_every(spec.strip(), "drift")
    kind, *args = body.split(":")
    kind = kind.strip().lower()
    if kind not in DRIFT_KINDS:
        raise ValueError(f"drift spec {spec!r}: unknown kind {kind!r}; {valid}")
    try:
        if kind == "none":
            if args or every is not None:
                raise ValueError("'none' takes no arguments")
            return WeightDrift("none")
        if len(args) != 1:
            raise ValueError("expected exactly one number")
        return WeightDrift(kind, _number(args[0]), every or 0)
    except ValueError as e:
        raise ValueError(f"drift spec {spec!r}: {e}; {valid}") from None

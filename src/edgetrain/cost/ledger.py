"""``Ledger``: what a step, a trial or a run cost, in the units every method is compared on.

The keys are the result record's ``ledger`` (DESIGN.md). Every field is optional: ``None`` means
"does not apply" (or "not measured") and is written as JSON ``null``, never replaced by a made-up
number. Ledgers add with ``+`` so layer figures sum to a step, and steps to a run.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields

INT_FIELDS = ("forward_passes", "macs", "macs_forward", "macs_backward", "extra_memory_bytes",
              "train_ram_bytes", "flash_bytes", "weight_writes", "max_writes_per_cell",
              "write_cell_steps")
FLOAT_FIELDS = ("mean_write_density", "energy_j", "latency_s", "wall_s")

ADDITIVE = ("forward_passes", "macs", "macs_forward", "macs_backward", "weight_writes",
            "write_cell_steps", "energy_j", "latency_s", "wall_s")
"""Fields that ``+`` sums: counts of work done and resources spent over time."""

PEAK = ("extra_memory_bytes", "train_ram_bytes", "flash_bytes", "max_writes_per_cell")
"""Fields that ``+`` maximises: sizes that exist at once, not one after another."""


@dataclass(frozen=True)
class Ledger:
    """Counts and costs of one piece of work.

    - ``forward_passes``: model forward passes (one per sample evaluated).
    - ``macs`` = ``macs_forward`` + ``macs_backward`` where both are given.
    - ``extra_memory_bytes``: RAM beyond what inference needs; ``train_ram_bytes``: total RAM
      while training; ``flash_bytes``: stored model (parameters + requantization constants).
    - ``weight_writes``: stored weight values that changed; ``max_writes_per_cell``: writes to the
      most-written cell; ``mean_write_density``: writes / (cells x steps) (Gural et al.,
      arXiv 2009.03887). ``write_cell_steps`` is that denominator (cells x steps) when known; it
      is what lets densities add exactly (an extra key beyond DESIGN.md's list).
    - ``energy_j``, ``latency_s``: modelled on a device profile; ``wall_s``: host wall time.
    """

    forward_passes: int | None = None
    macs: int | None = None
    macs_forward: int | None = None
    macs_backward: int | None = None
    extra_memory_bytes: int | None = None
    train_ram_bytes: int | None = None
    flash_bytes: int | None = None
    weight_writes: int | None = None
    max_writes_per_cell: int | None = None
    mean_write_density: float | None = None
    energy_j: float | None = None
    latency_s: float | None = None
    wall_s: float | None = None
    write_cell_steps: int | None = None

    def __post_init__(self) -> None:
        for name in INT_FIELDS + FLOAT_FIELDS:
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool):
                raise TypeError(f"ledger field {name} must be a number, got {v!r}")
            if name in INT_FIELDS:
                if float(v) != int(v):
                    raise ValueError(f"ledger field {name} counts things; got non-integer {v!r}")
                v = int(v)
            else:
                v = float(v)
                if math.isnan(v):
                    raise ValueError(f"ledger field {name} is NaN; use None for 'does not apply'")
            if v < 0:
                raise ValueError(f"ledger field {name} must be >= 0, got {v!r}")
            object.__setattr__(self, name, v)
        if self.macs is None and self.macs_forward is not None and self.macs_backward is not None:
            object.__setattr__(self, "macs", self.macs_forward + self.macs_backward)

    def __add__(self, other: Ledger) -> Ledger:
        """Combine two ledgers; ``None + x = x``.

        Additive fields (``ADDITIVE``) sum. Peak fields (``PEAK``) take the max: right for memory
        and flash (the larger need is the need). ``max_writes_per_cell`` under ``+`` is only
        right for *disjoint* cells (layers -> a step); across steps that write the same cells the
        true figure can be up to the sum, so a run's figure must come from the ``WriteCounter``
        (see ``writes.writes_ledger``). ``mean_write_density`` combines exactly as
        ``(w1 + w2) / (cell_steps1 + cell_steps2)`` when both sides carry ``write_cell_steps``;
        otherwise, with densities on both sides, it is unknown and becomes ``None``.
        """
        if not isinstance(other, Ledger):
            return NotImplemented
        out: dict = {}
        for name in ADDITIVE:
            a, b = getattr(self, name), getattr(other, name)
            out[name] = b if a is None else a if b is None else a + b
        for name in PEAK:
            a, b = getattr(self, name), getattr(other, name)
            out[name] = b if a is None else a if b is None else max(a, b)
        out["mean_write_density"] = _combine_density(self, other, out)
        return Ledger(**out)

    def __radd__(self, other: object) -> Ledger:
        if other == 0:  # so that sum(ledgers) works
            return self
        return NotImplemented  # type: ignore[return-value]

    def replace(self, **changes: object) -> Ledger:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def to_dict(self, extra: bool = True) -> dict:
        """JSON-ready dict of every key (``None`` for what does not apply). ``extra=False`` leaves
        out ``write_cell_steps`` so the dict has exactly DESIGN.md's ledger keys."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        if not extra:
            d.pop("write_cell_steps")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Ledger:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown ledger keys {sorted(unknown)}; known: {sorted(names)}")
        return cls(**d)


def _combine_density(a: Ledger, b: Ledger, summed: dict) -> float | None:
    da, db = a.mean_write_density, b.mean_write_density
    if da is None:
        return db
    if db is None:
        return da
    cells = summed["write_cell_steps"]
    if a.write_cell_steps is None or b.write_cell_steps is None or not cells:
        return None
    return summed["weight_writes"] / cells if summed["weight_writes"] is not None else None


def total(ledgers: list[Ledger] | tuple[Ledger, ...]) -> Ledger:
    """Sum of ledgers (``Ledger()`` for none)."""
    out = Ledger()
    for item in ledgers:
        out = out + item
    return out

"""Peak RAM from tensor lifetimes, flash from stored tensors, and whether a model fits a device.

The accounting follows what MCU deployments do (Deutel et al. 2024, arXiv 2407.10734): weights
and constants stay in flash and are read in place; RAM holds the activations that are alive at
the same time, plus whatever training adds (writable copies of trained parameters, gradients,
optimizer state). A *step* is one layer's execution; a buffer lives from the step that produces
it to the last step that reads it, inclusive. Peak RAM is the largest sum over any step.

Not counted here: program code, the stack, kernel scratch buffers (im2col etc.; those come from
the kernel generator's ``*_get_buffer_size`` twins and can be added as ``"scratch"`` buffers), and
the fact that some parts split SRAM into regions that one buffer cannot straddle (see the device
notes).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..model.deployed import DeployedModel
from ..model.layers import Conv1d, Conv2d, Dense, Flatten, GlobalAvgPool, ReLU
from ..quant import Affine, Format

BUFFER_KINDS = ("activation", "weights", "scratch", "train", "error", "gradient", "optimizer")

IN_PLACE = (ReLU, Flatten)
"""Layers run in place on their input buffer: ReLU overwrites values with the same format,
Flatten only renames the shape."""

REQUANT_PAIR_BYTES = 5
"""One requantization constant pair: an int32 multiplier + an int8 shift."""


def bytes_per_value(fmt: Format) -> int:
    """Storage bytes of one value: ``ceil(bits / 8)`` (no bit packing across values)."""
    return math.ceil(fmt.bits / 8)


@dataclass(frozen=True)
class Buffer:
    """A block of RAM alive over layer steps ``first..last`` (inclusive)."""

    name: str
    nbytes: int
    first: int
    last: int
    kind: str = "activation"
    align: int = 1
    """Byte alignment its element type needs (4 for int32, 8 for double); used by ``layout``."""

    def __post_init__(self) -> None:
        if self.align not in (1, 2, 4, 8):
            raise ValueError(f"buffer {self.name!r}: alignment must be 1, 2, 4 or 8, got {self.align!r}")
        if self.kind not in BUFFER_KINDS:
            raise ValueError(f"buffer {self.name!r}: kind must be one of {BUFFER_KINDS}, "
                             f"got {self.kind!r}")
        if self.nbytes < 0:
            raise ValueError(f"buffer {self.name!r}: negative size {self.nbytes}")
        if self.last < self.first:
            raise ValueError(f"buffer {self.name!r}: last step {self.last} before first "
                             f"{self.first}")

    def alive(self, step: int) -> bool:
        return self.first <= step <= self.last


@dataclass(frozen=True)
class MemoryPlan:
    """A set of buffers with lifetimes; answers how much RAM is live when, and the peak."""

    buffers: tuple[Buffer, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "buffers", tuple(self.buffers))

    @property
    def steps(self) -> range:
        if not self.buffers:
            return range(0)
        return range(min(b.first for b in self.buffers), max(b.last for b in self.buffers) + 1)

    def live_at(self, step: int) -> list[Buffer]:
        return [b for b in self.buffers if b.alive(step)]

    def bytes_at(self, step: int) -> int:
        return sum(b.nbytes for b in self.live_at(step))

    def peak_step(self) -> int | None:
        """The earliest step with the most live bytes (``None`` for an empty plan)."""
        if not self.buffers:
            return None
        return max(self.steps, key=lambda s: (self.bytes_at(s), -s))

    def peak_bytes(self) -> int:
        step = self.peak_step()
        return 0 if step is None else self.bytes_at(step)

    def by_kind(self, step: int | None = None) -> dict[str, int]:
        """Live bytes per buffer kind at ``step`` (default: the peak step)."""
        step = self.peak_step() if step is None else step
        out: dict[str, int] = defaultdict(int)
        if step is not None:
            for b in self.live_at(step):
                out[b.kind] += b.nbytes
        return dict(out)

    def layout(self) -> tuple[dict[str, int], int]:
        """Byte offsets in one static arena, and the arena's size (what a C build allocates).

        Greedy by size (largest first; ties by first step, then name): each buffer goes to the
        lowest offset, aligned to its ``align``, that overlaps no placed buffer alive at any of the
        same steps. The arena is at least ``peak_bytes`` (buffers cannot move once placed) and is
        rounded up to 8 bytes. Deterministic: the generated C and the ledger read the same numbers.
        """
        names = [b.name for b in self.buffers]
        if len(set(names)) != len(names):
            raise ValueError("layout needs unique buffer names")
        placed: list[tuple[Buffer, int]] = []
        offsets: dict[str, int] = {}
        for b in sorted(self.buffers, key=lambda b: (-b.nbytes, b.first, b.name)):
            busy = sorted((o, o + p.nbytes) for p, o in placed
                          if p.nbytes and b.nbytes and p.first <= b.last and b.first <= p.last)
            offset = 0
            for start, end in busy:
                if offset + b.nbytes <= start:
                    break
                offset = max(offset, -(-end // b.align) * b.align)
            offsets[b.name] = offset
            placed.append((b, offset))
        size = max((o + b.nbytes for b, o in placed), default=0)
        return {n: offsets[n] for n in names}, -(-size // 8) * 8

    def with_buffers(self, *buffers: Buffer) -> MemoryPlan:
        return MemoryPlan(self.buffers + tuple(buffers))

    def __add__(self, other: MemoryPlan) -> MemoryPlan:
        """Both sets of buffers on the same step axis (e.g. inference plan + training state)."""
        if not isinstance(other, MemoryPlan):
            return NotImplemented
        return MemoryPlan(self.buffers + other.buffers)


def activation_bytes(shape: tuple[int, ...], fmt: Format, batch: int = 1) -> int:
    return math.prod(shape) * batch * bytes_per_value(fmt)


def inference_plan(model: DeployedModel, batch: int = 1) -> MemoryPlan:
    """Activation buffers of one inference: layer ``i`` runs at step ``i``.

    The input and each layer's output is a buffer from the step that produces it (step 0 for
    the input) to the step that consumes it; the model's output stays live to the last step.
    With one producer and one consumer per buffer this is ping-pong: the peak is the largest
    ``input + output`` of any layer. ReLU and Flatten work in place: they extend their input
    buffer's life instead of allocating a new one.
    """
    shapes = model.shapes()
    n = len(model.layers)
    last_step = max(n - 1, 0)
    buffers: list[Buffer] = []
    cur_name, cur_first = "input", 0
    cur_bytes = activation_bytes(shapes[0], model.input_fmt, batch)
    for i, layer in enumerate(model.layers):
        if isinstance(layer, IN_PLACE):
            continue
        buffers.append(Buffer(cur_name, cur_bytes, cur_first, i))
        cur_name, cur_first = f"{i}.{layer.kind}.out", i
        cur_bytes = activation_bytes(shapes[i + 1], layer.out_fmt, batch)
    buffers.append(Buffer(cur_name, cur_bytes, cur_first, max(last_step, cur_first)))
    return MemoryPlan(tuple(buffers))


def param_bytes(model: DeployedModel, names: Iterable[str] | None = None) -> int:
    """Storage bytes of the named parameters (all by default), ``ceil(bits/8)`` per value."""
    wanted = None if names is None else set(names)
    total = 0
    for name, t, fmt in model.params():
        if wanted is None or name in wanted:
            total += t.numel() * bytes_per_value(fmt)
    if wanted is not None:
        missing = wanted - {n for n, _, _ in model.params()}
        if missing:
            raise ValueError(f"model has no parameters {sorted(missing)}")
    return total


def requant_pairs(model: DeployedModel) -> list[tuple[str, int]]:
    """Requantization constant pairs stored per layer, as ``(layer name, pairs)``.

    Dense/Conv: one pair per output channel if the weight format is per-channel (``Affine`` with
    an axis), otherwise one pair for the layer. GlobalAvgPool: one pair (the ``1/positions``
    scale). Fixed-point layers still get one pair although their multiplier is 1 (a pure shift)
    that a code generator may fold away: the count is an upper bound by at most 5 bytes a layer.
    ReLU, MaxPool and Flatten store nothing.
    """
    out = []
    for i, layer in enumerate(model.layers):
        if isinstance(layer, Dense | Conv1d | Conv2d):
            per_channel = isinstance(layer.w_fmt, Affine) and layer.w_fmt.per_channel
            out.append((f"{i}.{layer.kind}", int(layer.weight.shape[0]) if per_channel else 1))
        elif isinstance(layer, GlobalAvgPool):
            out.append((f"{i}.{layer.kind}", 1))
    return out


def flash_items(model: DeployedModel) -> list[tuple[str, int]]:
    """Every item stored in flash with its bytes: parameters, then requantization constants."""
    items = [(name, t.numel() * bytes_per_value(fmt)) for name, t, fmt in model.params()]
    items += [(f"{name}.requant", pairs * REQUANT_PAIR_BYTES)
              for name, pairs in requant_pairs(model)]
    return items


def flash_bytes(model: DeployedModel) -> int:
    """Flash for the model's data: every parameter tensor at ``ceil(bits/8)`` bytes per value plus
    ``REQUANT_PAIR_BYTES`` per requantization pair (see ``requant_pairs``). Code is not counted."""
    return sum(b for _, b in flash_items(model))


@dataclass(frozen=True)
class FitReport:
    """Whether something fits a device; each problem is ``(what, needed_bytes, available_bytes)``."""

    ok: bool
    problems: list[tuple[str, int, int]] = field(default_factory=list)
    device: str = ""

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        where = f" on {self.device}" if self.device else ""
        if self.ok:
            return f"fits{where}"
        lines = [f"does not fit{where}:"]
        for what, need, have in self.problems:
            lines.append(f"  {what}: needs {need:,} B, {have:,} B available "
                         f"(over by {need - have:,} B)")
        return "\n".join(lines)


def _ram_problem(plan: MemoryPlan, available: int) -> tuple[str, int, int] | None:
    peak = plan.peak_bytes()
    if peak <= available:
        return None
    step = plan.peak_step()
    live = sorted(plan.live_at(step), key=lambda b: -b.nbytes) if step is not None else []
    names = ", ".join(f"{b.name} ({b.kind}, {b.nbytes:,} B)" for b in live)
    return (f"RAM at step {step} [{names}]", peak, available)


def fits(device: object, ram_bytes: int | MemoryPlan | None = None,
         flash_bytes: int | None = None) -> FitReport:
    """Check a RAM need (a byte count or a ``MemoryPlan``) and a flash need against ``device``'s
    ``sram_bytes`` / ``flash_bytes``. ``None`` skips that check. For a plan, the report names the
    peak step and the buffers live there."""
    sram = getattr(device, "sram_bytes", None)
    flash = getattr(device, "flash_bytes", None)
    if sram is None or flash is None:
        raise TypeError(f"device {getattr(device, 'name', device)!r} has no SRAM/flash sizes "
                        "(fits() needs an MCU profile)")
    problems: list[tuple[str, int, int]] = []
    if isinstance(ram_bytes, MemoryPlan):
        p = _ram_problem(ram_bytes, sram)
        if p:
            problems.append(p)
    elif ram_bytes is not None and ram_bytes > sram:
        problems.append(("RAM", int(ram_bytes), int(sram)))
    if flash_bytes is not None and flash_bytes > flash:
        problems.append(("flash (parameters + requantization constants)", int(flash_bytes),
                         int(flash)))
    return FitReport(not problems, problems, getattr(device, "name", ""))


def model_fits(model: DeployedModel, device: object, batch: int = 1,
               extra: MemoryPlan | None = None) -> FitReport:
    """Does ``model``'s inference (plus an ``extra`` plan, e.g. training buffers) fit ``device``?"""
    plan = inference_plan(model, batch)
    if extra is not None:
        plan = plan + extra
    return fits(device, plan, flash_bytes(model))

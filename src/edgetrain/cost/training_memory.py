"""Peak RAM of fully quantized training (FQT) on a microcontroller, from tensor lifetimes.

The accounting follows Deutel et al. 2024, "On-Device Training of Fully Quantized Deep Neural
Networks on Cortex-M Microcontrollers" (arXiv 2407.10734): the forward runs as in inference, but
some activations must survive until the backward reads them, the backward adds error tensors,
and training adds writable copies of the trained parameters, gradients and optimizer state. Frozen
parameters stay in flash and are read in place.

Step axis for a model of ``n`` layers, with ``L`` the lowest trained layer index::

    0 .. n-1          forward of layer i at step i
    n                 loss head (softmax cross-entropy; consumes the logits, makes the first error)
    n+1 .. 2n-L       backward of layer i at step 2n - i, for i >= L only
    2n+1              weight update

The backward stops at ``L``: layer ``L`` computes its own gradients but no error for its input, so
nothing below ``L`` keeps activations or gets an error buffer. Steps ``2n-L+1 .. 2n`` exist on the
axis but hold only the persistent buffers.

Precisions (as compared in the paper):

- ``"uint8"``: activations in their deployed format (``bytes_per_value``), errors 1 B, trained
  weights/biases in their deployed formats, gradients int32 (4 B), or, with ``grad_buffer="int16"``
  and mini-batches, an int16 block-floating-point buffer: 2 B per trained value plus a 1 B exponent
  per weight row / conv filter and per bias vector (``train.fqt.blockfloat``; our extension).
- ``"mixed"``: uint8 forward as above, float32 backward: errors 4 B, gradients 4 B, parameters in
  their deployed formats.
- ``"float32"``: every value 4 B (activations, errors, parameters, gradients).

Not counted: program code, the stack, kernel scratch (im2col etc.), the labels and the softmax
scratch of the loss head.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from ..model.deployed import DeployedModel
from ..model.layers import Conv1d, Conv2d, Dense, MaxPool, ReLU
from ..quant import Format
from .memory import IN_PLACE, Buffer, FitReport, MemoryPlan, bytes_per_value, fits, flash_bytes

PRECISIONS = ("uint8", "mixed", "float32")
OPTIMIZERS = ("standardize", "sgd", "qas")
TRAINING_KINDS = ("activation", "error", "weights", "gradient", "optimizer")
"""Buffer kinds a training plan uses, in the order ``training_memory`` reports them."""

ERROR_BYTES = {"uint8": 1, "mixed": 4, "float32": 4}
"""Bytes of one error value per precision (uint8 errors in FQT, float32 otherwise)."""

GRAD_BYTES = 4
"""Gradients are int32 accumulators (uint8) or float32 (mixed, float32): 4 B either way."""

GRAD_BUFFERS = ("int32", "int16")
"""The persistent mini-batch gradient buffer: ``GRAD_BYTES`` per value, or (uint8 only) int16 block float."""

BFP_MANT_BYTES = 2
"""One int16 mantissa of the block-float gradient buffer."""

BFP_EXP_BYTES = 1
"""One shared exponent of the block-float gradient buffer (a small non-negative shift: a uint8)."""

STATE_BYTES = 4
"""One optimizer state value (moving mean/variance, momentum): float32."""

E_MAX_BYTES = 8
"""A layer's running error maximum for dynamic partial updates: a double, as the reference keeps it
(the level it is compared with is a double too, so a device that is to match bit for bit needs it)."""

WEIGHTED = (Dense, Conv1d, Conv2d)


def _value_bytes(fmt: Format, precision: str) -> int:
    """Bytes of one activation or parameter value: its deployed format, or 4 B in float32."""
    return 4 if precision == "float32" else bytes_per_value(fmt)


def _align(value_bytes: int) -> int:
    """Alignment for values of this many bytes: the largest of 8, 4, 2, 1 not above it."""
    return next(a for a in (8, 4, 2, 1) if value_bytes >= a)


@dataclass(frozen=True)
class _Setup:
    """Validated arguments: trained names in model order, the trained layers, and ``L``."""

    names: tuple[str, ...]
    layers: frozenset[int]
    weight_layers: frozenset[int]
    lowest: int


def _check_int(what: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {value!r}")


def check_grad_buffer(grad_buffer: str, precision: str, accumulate: int) -> None:
    """Refuse a gradient buffer the configuration cannot use: an unknown name, ``"int16"`` outside
    uint8 training (mixed and float32 accumulate real-valued gradients), or ``"int16"`` without a
    mini-batch (``accumulate == 1`` keeps no persistent buffer: rows are applied as computed)."""
    if grad_buffer not in GRAD_BUFFERS:
        raise ValueError(f"unknown grad_buffer {grad_buffer!r}; choose one of {GRAD_BUFFERS}")
    if grad_buffer == "int16" and precision != "uint8":
        raise ValueError(f"grad_buffer 'int16' (block-float int16 gradient accumulation) needs precision 'uint8'; "
                         f"precision {precision!r} accumulates real-valued gradients: use grad_buffer 'int32'")
    if grad_buffer == "int16" and accumulate == 1:
        raise ValueError("grad_buffer 'int16' narrows the persistent mini-batch gradient buffer; with one sample "
                         "per update (accumulate/batch 1) there is none: use grad_buffer 'int32'")


def _setup(model: DeployedModel, trained: Iterable[str], precision: str, optimizer: str,
           accumulate: int, batch: int, grad_buffer: str = "int32") -> _Setup:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS}")
    _check_int("accumulate", accumulate)
    _check_int("batch", batch)
    check_grad_buffer(grad_buffer, precision, accumulate)
    if isinstance(trained, str):
        raise ValueError(f"trained must be a collection of parameter names, got the string {trained!r} "
                         "(wrap one name in a list, or use train.select.select_params)")
    wanted = set(trained)
    names = [n for n, _, _ in model.params()]
    unknown = sorted(wanted - set(names), key=str)
    if unknown:
        raise ValueError(f"unknown parameter names {unknown}; the model has {names}")
    if not wanted:
        raise ValueError("no trained parameters: training needs at least one parameter name")
    chosen = tuple(n for n in names if n in wanted)
    layers = frozenset(int(n.split(".")[0]) for n in chosen)
    weight_layers = frozenset(int(n.split(".")[0]) for n in chosen if n.endswith(".weight"))
    return _Setup(chosen, layers, weight_layers, min(layers))


def _backward_step(n: int, i: int) -> int:
    return 2 * n - i


def _activation_buffers(model: DeployedModel, s: _Setup, precision: str, batch: int) -> list[Buffer]:
    """The forward ping-pong of ``inference_plan`` with the lifetimes the backward needs.

    Each buffer is made by a layer (or is the input), carried through in-place ReLU/Flatten, and
    read by the next layer (its consumer). It is kept past the consumer's forward step until
    the backward step of: the consumer, if the consumer's weight is trained (the weight gradient
    needs the input; a bias-only layer does not); an in-place ReLU above ``L`` (its mask); the
    consumer, if it is a MaxPool above ``L`` (which input won each window); its maker, if that is
    a dense/conv layer at or above ``L`` (the backward drops errors that would push a saturated
    output further out, ``fqt.kernels.saturation_grad``, so it reads the layer's own output). The
    logits are kept until the loss step ``n`` at least. GlobalAvgPool keeps nothing.
    """
    shapes = model.shapes()
    n = len(model.layers)
    buffers: list[Buffer] = []
    name, first, keep = "input", 0, 0
    align = _align(_value_bytes(model.input_fmt, precision))
    nbytes = math.prod(shapes[0]) * batch * align
    for i, layer in enumerate(model.layers):
        if isinstance(layer, IN_PLACE):
            if isinstance(layer, ReLU) and i > s.lowest:
                keep = max(keep, _backward_step(n, i))
            continue
        needed = (i in s.weight_layers) or (isinstance(layer, MaxPool) and i > s.lowest)
        last = max(i, keep, _backward_step(n, i) if needed else i)
        buffers.append(Buffer(name, nbytes, first, last, "activation", align))
        name, first = f"{i}.{layer.kind}.out", i
        keep = _backward_step(n, i) if isinstance(layer, WEIGHTED) and i >= s.lowest else 0
        align = _align(_value_bytes(layer.out_fmt, precision))
        nbytes = math.prod(shapes[i + 1]) * batch * align
    buffers.append(Buffer(name, nbytes, first, max(n, first, keep), "activation", align))
    return buffers


def _error_buffers(model: DeployedModel, s: _Setup, precision: str, batch: int) -> list[Buffer]:
    """Errors from the loss down to the output of layer ``L``.

    The error at layer ``i``'s output is made at step ``2n - i - 1`` (the backward of layer
    ``i + 1``, or the loss step ``n`` for the last layer) and read at the backward of layer ``i``.
    ReLU and Flatten backward work in place, so the buffer continues to the next layer below.
    Layer ``L`` makes no input error.
    """
    shapes = model.shapes()
    n = len(model.layers)
    per_value = ERROR_BYTES[precision] * batch
    buffers: list[Buffer] = []
    top = model.layers[n - 1]
    name, first, nbytes = f"err.{n - 1}.{top.kind}.out", n, math.prod(shapes[n]) * per_value
    for j in range(n - 1, s.lowest - 1, -1):
        layer = model.layers[j]
        if isinstance(layer, IN_PLACE):
            continue  # never layer L, which has parameters
        buffers.append(Buffer(name, nbytes, first, _backward_step(n, j), "error", ERROR_BYTES[precision]))
        if j > s.lowest:
            below = model.layers[j - 1]
            name, first = f"err.{j - 1}.{below.kind}.out", _backward_step(n, j)
            nbytes = math.prod(shapes[j]) * per_value
    return buffers


def _state_buffers(model: DeployedModel, s: _Setup, precision: str, accumulate: int, optimizer: str,
                   momentum: bool, grad_buffer: str = "int32") -> list[Buffer]:
    """RAM copies of trained parameters, gradients and optimizer state.

    Persistent buffers live over the whole plan (``0 .. 2n+1``). With ``accumulate == 1`` the
    gradient is computed and applied one output row at a time, so each trained weight needs only
    a one-row temporary at its layer's backward step.

    ``grad_buffer="int16"`` (mini-batches, uint8): each trained tensor's persistent gradient is int16
    mantissas (``.grad``, 2 B per value) plus one exponent byte per row (``.grad_exp``: per weight row
    or conv filter; one for a bias vector). A sample's gradient block must be complete before its
    shared exponent can be chosen, so its layer's backward step also holds that block in int32
    (``.grad_row``: one weight row, or the whole bias vector).
    """
    n = len(model.layers)
    end = 2 * n + 1
    out: list[Buffer] = []
    for name in s.names:
        t, fmt = model.param(name)
        size = _value_bytes(fmt, precision)
        out.append(Buffer(f"{name}.ram", t.numel() * size, 0, end, "weights", _align(size)))
    for name in s.names:
        t, _ = model.param(name)
        if accumulate > 1 and grad_buffer == "int16":
            is_weight = name.endswith(".weight")
            step = _backward_step(n, int(name.split(".")[0]))
            out.append(Buffer(f"{name}.grad", t.numel() * BFP_MANT_BYTES, 0, end, "gradient", BFP_MANT_BYTES))
            out.append(Buffer(f"{name}.grad_exp", (int(t.shape[0]) if is_weight else 1) * BFP_EXP_BYTES, 0, end,
                              "gradient", BFP_EXP_BYTES))
            block = t[0].numel() if is_weight else t.numel()
            out.append(Buffer(f"{name}.grad_row", block * GRAD_BYTES, step, step, "gradient", GRAD_BYTES))
        elif accumulate > 1:
            out.append(Buffer(f"{name}.grad", t.numel() * GRAD_BYTES, 0, end, "gradient", GRAD_BYTES))
        elif name.endswith(".weight"):
            step = _backward_step(n, int(name.split(".")[0]))
            out.append(Buffer(f"{name}.grad_row", t[0].numel() * GRAD_BYTES, step, step, "gradient", GRAD_BYTES))
    for name in s.names:
        t, _ = model.param(name)
        if optimizer == "standardize" and name.endswith(".weight"):
            out.append(Buffer(f"{name}.row_stats", 2 * STATE_BYTES * int(t.shape[0]), 0, end, "optimizer",
                              STATE_BYTES))
        if momentum:
            out.append(Buffer(f"{name}.momentum", t.numel() * STATE_BYTES, 0, end, "optimizer", STATE_BYTES))
    for i in sorted(s.layers):
        out.append(Buffer(f"{i}.e_max", E_MAX_BYTES, 0, end, "optimizer", E_MAX_BYTES))
    return out


def training_plan(model: DeployedModel, trained: Iterable[str], precision: str, *, accumulate: int = 1,
                  optimizer: str = "standardize", momentum: bool = False, batch: int = 1,
                  grad_buffer: str = "int32") -> MemoryPlan:
    """Every RAM buffer of one FQT training step with its lifetime on the step axis (module doc).

    ``trained``: parameter names ``"<layer>.<weight|bias>"`` (see ``train.select.select_params``).
    ``accumulate``: samples whose gradients are summed before one update; above 1 a persistent
    4 B-per-value gradient buffer is needed. ``optimizer``: ``"standardize"`` keeps a moving mean and
    variance per output row of each trained weight; ``"sgd"`` and ``"qas"`` keep nothing unless
    ``momentum`` (4 B per trained value; ``momentum`` adds the same buffer to ``"standardize"``).
    Every trained layer also keeps its running error maximum ``e_max`` for dynamic partial updates
    (Deutel et al. 2024, arXiv 2407.10734, sec. IV). ``batch``: samples per forward; multiplies the
    per-sample tensors (activations, errors), not parameters, gradients or state. ``grad_buffer``:
    ``"int32"`` (default) or ``"int16"``, the block-float buffer of uint8 mini-batches
    (``_state_buffers``; refused where it does not apply, ``check_grad_buffer``).
    """
    s = _setup(model, trained, precision, optimizer, accumulate, batch, grad_buffer)
    return MemoryPlan(tuple(_activation_buffers(model, s, precision, batch)
                            + _error_buffers(model, s, precision, batch)
                            + _state_buffers(model, s, precision, accumulate, optimizer, bool(momentum), grad_buffer)))


def training_flash_bytes(model: DeployedModel, precision: str) -> int:
    """Flash for the model's data during training.

    uint8 and mixed: ``memory.flash_bytes`` (every parameter, since trained ones are copied to RAM
    from flash at boot, plus requantization constants). float32: 4 B per value of every parameter
    and no requantization constants. Program code is not counted; a C export will measure it.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if precision == "float32":
        return 4 * model.num_params()
    return flash_bytes(model)


def step_label(model: DeployedModel, step: int) -> str:
    """What runs at ``step`` of a training plan: ``"forward of layer 2"``, ``"loss"``, ..."""
    n = len(model.layers)
    if 0 <= step < n:
        return f"forward of layer {step} ({model.layers[step].kind})"
    if step == n:
        return "loss"
    if n < step <= 2 * n:
        i = 2 * n - step
        return f"backward of layer {i} ({model.layers[i].kind})"
    if step == 2 * n + 1:
        return "weight update"
    raise ValueError(f"step {step} is outside the training step axis 0..{2 * n + 1}")


def training_memory(model: DeployedModel, trained: Iterable[str], precision: str, *, accumulate: int = 1,
                    optimizer: str = "standardize", momentum: bool = False, batch: int = 1,
                    grad_buffer: str = "int32") -> dict:
    """Summary of ``training_plan``: peak RAM, the earliest step where it occurs, bytes per kind at
    that step (every kind in ``TRAINING_KINDS``, 0 if absent), training flash, every buffer, and
    ``arena_bytes``: the size of the static arena that holds them all at fixed offsets
    (``MemoryPlan.layout``; what the C export allocates, at least the peak)."""
    plan = training_plan(model, trained, precision, accumulate=accumulate, optimizer=optimizer,
                         momentum=momentum, batch=batch, grad_buffer=grad_buffer)
    at_peak = plan.by_kind()
    _, arena = plan.layout()
    return {
        "train_ram_bytes": plan.peak_bytes(),
        "arena_bytes": arena,
        "peak_step": plan.peak_step(),
        "by_kind": {k: at_peak.get(k, 0) for k in TRAINING_KINDS},
        "flash_bytes": training_flash_bytes(model, precision),
        "buffers": [{"name": b.name, "kind": b.kind, "nbytes": b.nbytes, "first": b.first, "last": b.last}
                    for b in plan.buffers],
    }


class DoesNotFit(ValueError):
    """Training does not fit a device; ``report`` is the ``FitReport``, ``plan`` the ``MemoryPlan``."""

    def __init__(self, message: str, report: FitReport, plan: MemoryPlan) -> None:
        super().__init__(message)
        self.report = report
        self.plan = plan


def check_training_fits(model: DeployedModel, trained: Iterable[str], precision: str, device: object, *,
                        accumulate: int = 1, optimizer: str = "standardize", momentum: bool = False,
                        batch: int = 1, grad_buffer: str = "int32") -> FitReport:
    """The (ok) ``FitReport`` of training's peak RAM and flash on ``device`` (anything with ``name``,
    ``sram_bytes``, ``flash_bytes``); raises ``DoesNotFit`` naming the device, the peak step and the
    buffers live there when either does not fit."""
    trained = trained if isinstance(trained, str) else tuple(trained)  # read twice below
    plan = training_plan(model, trained, precision, accumulate=accumulate, optimizer=optimizer,
                         momentum=momentum, batch=batch, grad_buffer=grad_buffer)
    report = fits(device, plan, training_flash_bytes(model, precision))
    if report.ok:
        return report
    step = plan.peak_step()
    where = f"  peak RAM {plan.peak_bytes():,} B at step {step}, {step_label(model, step)}"
    if all(what.startswith("flash") for what, _, _ in report.problems):
        # the RAM problem line already lists the live buffers; otherwise list them here
        live = sorted(plan.live_at(step), key=lambda b: -b.nbytes)
        where += ": " + ", ".join(f"{b.name} ({b.kind}, {b.nbytes:,} B)" for b in live)
    message = (f"{precision} training of {list(dict.fromkeys(trained))} does not fit "
               f"{getattr(device, 'name', device)!s}\n{report}\n{where}")
    raise DoesNotFit(message, report, plan)

"""RAM of forward-only ES training on a microcontroller, buffer by buffer, as the C export lays it out.

Evolution strategies (``train.es``; AbdulQader et al., arXiv 2103.14007; MeZO, Malladi et al.,
arXiv 2305.17333) need no backward: a generation scores population members with the inference
forward and steps along the noise. On a microcontroller whose frozen weights stay in flash the
training RAM is then:

- the inference activations (``memory.inference_plan``: ping-pong buffers, layer ``i`` at step ``i``);
- ``<name>.ram``: the trained value ``theta`` of each trained tensor, in its deployed format;
- ``<name>.member``: the copy the forward reads, ``theta`` between generations and one member's
  perturbed values while it is scored. A datapath that perturbs each weight as it reads it
  (what ``ESTrainer.extra_memory`` assumes) needs no such copy; a CPU running shared forward kernels
  does, because saturated values ``sat(theta + d)`` cannot be undone in place;
- ``samples.x`` / ``samples.y``: the ring buffer of labelled samples (``batch`` of them: the export
  requires buffer == batch), raw inputs in the input format and one byte per label;
- ``fitness``: one 32-bit count of correct predictions per member;
- ``registers``: ``sigma`` (float64, as the trainer keeps it), samples seen (64 bit), generation and
  accepted counters (32 bit each): 24 bytes.

The ES buffers live over the whole plan, steps ``0 .. n`` (``n``: the generation's bookkeeping after
the ``n`` layer steps). Not counted: code, the stack (a few noise stream states, one sample's
logits), and the per-layer requantization registers the runtime keeps next to the arena.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from ..model.deployed import DeployedModel
from .memory import Buffer, MemoryPlan, bytes_per_value, inference_plan

FITNESS_COUNT_BYTES = 4
"""One member's fitness: a 32-bit count of correct predictions (fitness 'accuracy')."""
REGISTER_BYTES = 24
"""sigma (8), samples seen (8), generation (4) and accepted offspring (4)."""
LABEL_BYTES = 1
ES_KINDS = ("activation", "weights", "train", "optimizer")
"""Buffer kinds of an ES plan: activations, theta, the member copy and ring buffer, fitness and registers."""


def _align(nbytes: int) -> int:
    return next(a for a in (8, 4, 2, 1) if nbytes >= a)


def es_plan(model: DeployedModel, trained: Iterable[str], *, batch: int, members: int) -> MemoryPlan:
    """Every RAM buffer of ES training on a microcontroller with its lifetime (module docstring).

    ``trained``: parameter names ``"<layer>.<weight|bias>"`` (``train.select.select_params``); ``batch``:
    samples in the ring buffer (= the mini-batch); ``members``: members scored per generation
    (``ESTrainer.members``).
    """
    if isinstance(trained, str):
        raise ValueError(f"trained must be a collection of parameter names, got the string {trained!r}")
    for what, value in (("batch", batch), ("members", members)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{what} must be an integer >= 1, got {value!r}")
    specs = {name: (t, fmt) for name, t, fmt in model.params()}
    wanted = list(dict.fromkeys(trained))
    unknown = [n for n in wanted if n not in specs]
    if unknown:
        raise ValueError(f"unknown parameter names {unknown}; the model has {list(specs)}")
    if not wanted:
        raise ValueError("no trained parameters: ES training needs at least one parameter name")
    end = len(model.layers)
    buffers = list(inference_plan(model).buffers)
    for name in (n for n in specs if n in wanted):  # model order
        t, fmt = specs[name]
        size = bytes_per_value(fmt)
        buffers.append(Buffer(f"{name}.ram", t.numel() * size, 0, end, "weights", _align(size)))
        buffers.append(Buffer(f"{name}.member", t.numel() * size, 0, end, "train", _align(size)))
    n_in = math.prod(model.input_shape)
    buffers += [Buffer("samples.x", batch * n_in * bytes_per_value(model.input_fmt), 0, end, "train"),
                Buffer("samples.y", batch * LABEL_BYTES, 0, end, "train"),
                Buffer("fitness", members * FITNESS_COUNT_BYTES, 0, end, "optimizer", FITNESS_COUNT_BYTES),
                Buffer("registers", REGISTER_BYTES, 0, end, "optimizer", 8)]
    return MemoryPlan(tuple(buffers))


def es_memory(model: DeployedModel, trained: Iterable[str], *, batch: int, members: int) -> dict:
    """Summary of ``es_plan``: ``arena_bytes`` (the static arena of the C export, ``MemoryPlan.layout``),
    ``train_ram_bytes`` (the peak), the inference activations' share, and bytes per item."""
    trained = tuple(trained) if not isinstance(trained, str) else trained
    plan = es_plan(model, trained, batch=batch, members=members)
    _, arena = plan.layout()
    items: dict[str, int] = {"activations": inference_plan(model).peak_bytes()}
    for kind, key in (("weights", "theta"), ("train", None), ("optimizer", None)):
        for b in plan.buffers:
            if b.kind != kind:
                continue
            k = key or ("member_copy" if b.name.endswith(".member") else b.name.replace(".", "_"))
            items[k] = items.get(k, 0) + b.nbytes
    return {"arena_bytes": arena, "train_ram_bytes": plan.peak_bytes(), "items": items,
            "buffers": [{"name": b.name, "kind": b.kind, "nbytes": b.nbytes, "first": b.first, "last": b.last}
                        for b in plan.buffers]}


__all__ = ["ES_KINDS", "FITNESS_COUNT_BYTES", "LABEL_BYTES", "REGISTER_BYTES", "es_memory", "es_plan"]

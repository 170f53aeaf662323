"""Generate a self-contained C99 library that runs and trains a deployed uint8 model on a Cortex-M.

``export_fqt(model, trainer, out_dir)`` writes five files:

* ``et_kernels.h`` / ``et_kernels.c``: the runtime, the same for every model (``export/c/``): uint8
  forward kernels, the FQT backward with dynamic partial updates, the SGD update with re-ranging,
  and the API (``et_init``, ``et_predict``, ``et_train_step``, ``et_state_write``).
* ``et_model.h`` / ``et_model.c``: this model's tables: layer descriptors, parameters (``const``,
  in flash), the exponential table of the loss head, and one static arena whose size and buffer
  offsets come from the same planner as the Python ledger (``cost.training_memory.training_plan``,
  ``MemoryPlan.layout``).
* ``manifest.json``: the configuration, the arena layout, and what to compare against.

The C reproduces ``FQTTrainer(precision="uint8", ranges="fixed", optimizer=sgd)`` bit for bit (see
``export.check`` and the tests). Configurations it does not implement are refused by name.

``export_es(model, trainer, out_dir, seed)`` writes the same kind of library for forward-only training
by evolution strategies (``ESTrainer``): the runtime adds ``et_es.h`` / ``et_es.c`` (seeds, the LFSR,
member perturbation, fitness, the estimators' updates, the sample ring buffer) on top of the same
forward kernels, ``et_model.c`` holds the ES settings and a fitness table, and the arena comes from
``cost.es_memory.es_plan``. ``check_es_exportable`` says which ES settings the C reproduces exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import struct
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from ..cost.es_memory import es_memory, es_plan
from ..cost.memory import IN_PLACE, bytes_per_value
from ..cost.training_memory import training_plan
from ..model import DeployedModel
from ..model.forward import bias_shift, requant_params
from ..model.layers import Conv1d, Conv2d, Dense, Flatten, GlobalAvgPool, MaxPool, ReLU
from ..quant import Affine, multipliers, scale_of
from ..train.es.fitness import fitness as es_fitness
from ..train.es.trainer import ESTrainer
from ..train.fqt.kernels import error_format, exp_table
from ..train.fqt.trainer import FQTTrainer

RUNTIME_FILES = ("et_kernels.h", "et_kernels.c")
KIND = {Dense: 1, Conv2d: 2, Conv1d: 2, ReLU: 3, MaxPool: 4, GlobalAvgPool: 5, Flatten: 6}


class NotExportable(ValueError):
    """The model or the training configuration has something the C runtime does not implement."""


def _is_u8(fmt) -> bool:
    return isinstance(fmt, Affine) and not fmt.per_channel and not fmt.signed and fmt.bits == 8


def check_exportable(model: DeployedModel, trainer: FQTTrainer) -> None:
    """Raise ``NotExportable`` naming the first thing the C runtime cannot reproduce exactly."""
    if trainer.precision != "uint8":
        raise NotExportable(f"the C export trains in uint8; precision {trainer.precision!r} is Python-only")
    if trainer.ranges != "fixed":
        raise NotExportable("the C export implements fixed ranges (ranges='fixed'); 'moving' is Python-only")
    opt = trainer.optimizer
    if opt.kind != "sgd" or opt.momentum:
        raise NotExportable(f"the C export implements plain SGD (optimizer 'sgd', momentum 0); got {opt.kind!r}"
                            f"{' with momentum' if opt.momentum else ''}")
    if trainer.grad_buffer != "int32":
        raise NotExportable(f"the C export accumulates gradients in int32 (grad_buffer 'int32'); grad_buffer "
                            f"{trainer.grad_buffer!r} (block-float int16) is Python-only")
    check_model_exportable(model)
    trainer.layers(model)  # validates the params spec


def check_model_exportable(model: DeployedModel) -> None:
    """Raise ``NotExportable`` naming the first thing of ``model`` the C kernels cannot run exactly."""
    if not _is_u8(model.input_fmt):
        raise NotExportable(f"the model's input must be uint8 per tensor (deploy with --format uint8), "
                            f"got {getattr(model.input_fmt, 'name', model.input_fmt)}")
    for i, layer in enumerate(model.layers):
        if type(layer) not in KIND:
            raise NotExportable(f"layer {i}: no C kernel for {type(layer).__name__}")
        fmts = [layer.in_fmt, layer.out_fmt] + ([layer.w_fmt] if hasattr(layer, "w_fmt") else [])
        for f in fmts:
            if not _is_u8(f) or f.rounding != "nearest":
                raise NotExportable(f"layer {i} ({layer.kind}): formats must be uint8 per tensor with 'nearest' "
                                    f"rounding, got {getattr(f, 'name', f)} ({getattr(f, 'rounding', '?')})")
        if isinstance(layer, (Dense, Conv2d, Conv1d)):
            if bias_shift(layer) != 0:
                raise NotExportable(f"layer {i}: the bias must sit at the accumulator scale (bias shift 0)")
            if max(layer.weight.shape[0], 1) > 65535:
                raise NotExportable(f"layer {i}: more than 65535 output channels")
        if isinstance(layer, MaxPool) and any(s < k for s, k in zip(layer.stride, layer.kernel, strict=True)):
            raise NotExportable(f"layer {i}: max pool windows overlap (stride < kernel)")
    shapes = model.shapes()
    for i, layer in enumerate(model.layers):
        for key, value in _geometry(layer, shapes[i], shapes[i + 1]).items():
            limit = 255 if key[0] in "ksp" else 65535  # uint8 kernel/stride/padding, uint16 sizes
            if int(value) > limit:
                raise NotExportable(f"layer {i} ({layer.kind}): {key} = {int(value)} exceeds the C layer table's "
                                    f"limit of {limit}")
    if model.output_shape[0] > 255:
        raise NotExportable("more than 255 classes (labels are uint8)")


def _act_name(model: DeployedModel, i: int) -> str:
    """Arena buffer holding layer ``i``'s output (``-1``: the input)."""
    while i >= 0 and isinstance(model.layers[i], IN_PLACE):
        i -= 1
    return "input" if i < 0 else f"{i}.{model.layers[i].kind}.out"


def _err_name(model: DeployedModel, j: int) -> str:
    """Arena buffer holding the error at layer ``j``'s output (``training_memory._error_buffers``)."""
    n = len(model.layers)
    p = j + 1
    while p < n and isinstance(model.layers[p], IN_PLACE):
        p += 1
    return f"err.{p - 1}.{model.layers[p - 1].kind}.out"


@dataclass(frozen=True)
class Export:
    """What ``export_fqt`` / ``export_es`` wrote: the directory, the arena size and layout, and the trained
    layers."""

    out_dir: Path
    arena_bytes: int
    offsets: dict[str, int]
    trained: tuple[int, ...]
    bias_only: tuple[int, ...]
    manifest: dict
    sources: tuple[str, ...] = ("et_kernels.c", "et_model.c")
    """The C files of the library, in ``out_dir``."""
    params: tuple[str, ...] = ()
    """The trained parameter names, in the trainer's order (``export_es``; FQT trains whole layers)."""


def _c_double(v: float) -> str:
    return float(v).hex() if v != 0 else "0.0"


def _geometry(layer, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> dict:
    def chw(shape):
        if len(shape) == 1:
            return shape[0], 1, 1
        if len(shape) == 2:
            return shape[0], 1, shape[1]
        return shape

    (ic, ih, iw), (oc, oh, ow) = chw(in_shape), chw(out_shape)
    g = {"in_c": ic, "in_h": ih, "in_w": iw, "out_c": oc, "out_h": oh, "out_w": ow,
         "kh": 1, "kw": 1, "sh": 1, "sw": 1, "ph": 0, "pw": 0}
    if isinstance(layer, Dense):
        g.update(in_c=math.prod(in_shape), in_h=1, in_w=1)
    elif isinstance(layer, Conv2d):
        g.update(kh=layer.weight.shape[2], kw=layer.weight.shape[3], sh=layer.stride[0], sw=layer.stride[1],
                 ph=layer.padding[0], pw=layer.padding[1])
    elif isinstance(layer, Conv1d):
        g.update(kw=layer.weight.shape[2], sw=layer.stride, pw=layer.padding)
    elif isinstance(layer, MaxPool):
        if len(layer.kernel) == 2:
            g.update(kh=layer.kernel[0], kw=layer.kernel[1], sh=layer.stride[0], sw=layer.stride[1])
        else:
            g.update(kw=layer.kernel[0], sw=layer.stride[0])
    return g


def _array(ctype: str, name: str, values: list[int], per_line: int = 24) -> str:
    body = ",\n    ".join(", ".join(str(v) for v in values[s:s + per_line]) for s in range(0, len(values), per_line))
    return f"static const {ctype} {name}[{len(values)}] = {{\n    {body}\n}};\n"


_FIELDS = ("kind", "train", "in_c", "in_h", "in_w", "out_c", "out_h", "out_w", "kh", "kw", "sh", "sw", "ph", "pw",
           "w_flash", "b_flash", "in_off", "out_off", "w_off", "b_off", "gw_off", "gb_off", "err_out_off",
           "err_in_off", "emax_off", "in_zp", "out_zp", "in_scale", "out_scale", "w_scale0", "b_scale0", "w_zp0",
           "m0", "shift0", "err_m", "err_shift")
_DOUBLES = frozenset({"in_scale", "out_scale", "w_scale0", "b_scale0"})


def _layer_rows(model: DeployedModel, descs: list[dict]) -> list[str]:
    """The initializers of the ``et_layer`` table (``et_kernels.h``), one per layer."""
    rows = []
    for i, d in enumerate(descs):
        vals = ", ".join(f".{f} = {_c_double(d[f]) if f in _DOUBLES else d[f]}" for f in _FIELDS)
        rows.append(f"    {{ /* {i}: {model.layers[i].kind} */ {vals} }}")
    return rows


def _linear_flash(i: int, layer: Dense | Conv2d | Conv1d, tables: list[str]) -> dict:
    """Append layer ``i``'s weight and bias tables (flash) to ``tables``; return its descriptor fields:
    the tables' names, the formats' first scale / zero point and the first requantization constants."""
    tables.append(_array("uint8_t", f"w{i}", layer.weight.reshape(-1).tolist()))
    tables.append(_array("int32_t", f"b{i}", layer.bias.reshape(-1).tolist(), 8))
    m, s = requant_params(layer)
    return {"w_flash": f"w{i}", "b_flash": f"b{i}", "w_scale0": layer.w_fmt.scale[0], "b_scale0": layer.b_fmt.scale[0],
            "w_zp0": layer.w_fmt.zero_point[0], "m0": int(m.reshape(-1)[0]), "shift0": int(s.reshape(-1)[0])}


def export_fqt(model: DeployedModel, trainer: FQTTrainer, out_dir: str | Path) -> Export:
    """Write the C library for training ``model`` with ``trainer`` on a microcontroller (module doc)."""
    check_exportable(model, trainer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trained, bias_only = trainer.layers(model)
    names = trainer.writes(model)
    plan = training_plan(model, names, "uint8", accumulate=trainer.batch, optimizer="sgd", momentum=False, batch=1)
    offsets, arena = plan.layout()
    lowest = min(trained)
    shapes = model.shapes()
    n = len(model.layers)
    e_fmt = error_format(-trainer.error_range, trainer.error_range)
    grad_rows = trainer.batch == 1

    def off(name: str | None) -> int:
        if name is None:
            return -1
        if name not in offsets:
            raise AssertionError(f"the memory plan has no buffer {name!r}")
        return offsets[name]

    tables, descs = [], []
    max_rows = 1
    for i, layer in enumerate(model.layers):
        g = _geometry(layer, shapes[i], shapes[i + 1])
        linear = isinstance(layer, (Dense, Conv2d, Conv1d))
        train = 0 if i not in trained else (2 if i in bias_only else 1)
        d = {"kind": KIND[type(layer)], "train": train, **g, "w_flash": "0", "b_flash": "0",
             "in_off": off(_act_name(model, i - 1)), "out_off": off(_act_name(model, i)),
             "w_off": -1, "b_off": -1, "gw_off": -1, "gb_off": -1, "err_out_off": -1, "err_in_off": -1,
             "emax_off": -1, "in_zp": layer.in_fmt.zero_point[0], "out_zp": layer.out_fmt.zero_point[0],
             "in_scale": layer.in_fmt.scale[0], "out_scale": layer.out_fmt.scale[0], "w_scale0": 1.0,
             "b_scale0": 1.0, "w_zp0": 0, "m0": 1, "shift0": 0, "err_m": 1, "err_shift": 0}
        if i >= lowest:
            d["err_out_off"] = off(_err_name(model, i))
            if i > lowest:
                d["err_in_off"] = off(_err_name(model, i - 1))
        if linear:
            max_rows = max(max_rows, int(layer.weight.shape[0]))
            d.update(_linear_flash(i, layer, tables))
            if train:
                d.update(b_off=off(f"{i}.bias.ram"), emax_off=off(f"{i}.e_max"))
                if train == 1:
                    d["w_off"] = off(f"{i}.weight.ram")
                    d["gw_off"] = off(f"{i}.weight.grad_row" if grad_rows else f"{i}.weight.grad")
                if not grad_rows:
                    d["gb_off"] = off(f"{i}.bias.grad")
        elif isinstance(layer, GlobalAvgPool):
            positions = math.prod(shapes[i][1:])
            m, s = multipliers(scale_of(layer.in_fmt) / positions, layer.out_fmt)
            em, es = multipliers(torch.tensor(e_fmt.scale[0] / positions, dtype=torch.float64), e_fmt)
            d.update(m0=int(m), shift0=int(s), err_m=int(em), err_shift=int(es))
        elif isinstance(layer, (ReLU, Flatten)):
            d["in_off"] = d["out_off"]
        descs.append(d)

    rows = _layer_rows(model, descs)
    policy = trainer.policy
    table = exp_table(model.output_fmt)
    input_size = math.prod(model.input_shape)
    classes = model.output_shape[0]

    layout_lines = "\n".join(f" *   {offsets[b.name]:6d} {b.nbytes:6d}  {b.first:2d}..{b.last:<2d} {b.name} ({b.kind})"
                             for b in sorted(plan.buffers, key=lambda b: offsets[b.name]))
    rates = (f".partial = {int(policy is not None)}, .lam_min = {_c_double(trainer.lam_min)}, "
             f".lam_max = {_c_double(trainer.lam_max)}")
    header = f"""/* Generated by edgetrain export-c: the tables of one model. Do not edit. */
#ifndef ET_MODEL_H
#define ET_MODEL_H
#include "et_kernels.h"

#define ET_INPUT_SIZE {input_size}
#define ET_CLASSES {classes}
#define ET_BATCH {trainer.batch}
#define ET_LAYERS {n}
#define ET_MAX_ROWS {max_rows}
#define ET_ARENA_BYTES {arena}

#endif
"""
    source = f"""/* Generated by edgetrain export-c: the tables of one model. Do not edit.
 * Arena layout (offset, bytes, live steps) from cost.training_memory.training_plan + MemoryPlan.layout:
{layout_lines}
 */
#include "et_model.h"

{"".join(tables)}
static const double exp_table[{table.numel()}] = {{
    {", ".join(_c_double(v) for v in table.tolist())}
}};

static const et_layer layers[ET_LAYERS] = {{
{(","+chr(10)).join(rows)}
}};

/* One static arena for every training buffer; a union aligns it for int32 and double. */
static union {{ double align; uint8_t bytes[ET_ARENA_BYTES]; }} et_arena;
static et_live live[ET_LAYERS];

const et_model_t et_model = {{
    .layers = layers, .n_layers = ET_LAYERS, .lowest = {lowest}, .batch = ET_BATCH, .grad_rows = {int(grad_rows)},
    .input_size = ET_INPUT_SIZE, .classes = ET_CLASSES, .max_rows = ET_MAX_ROWS,
    .arena = et_arena.bytes, .live = live, .exp_table = exp_table,
    .e_scale = {_c_double(e_fmt.scale[0])}, .e_zp = {e_fmt.zero_point[0]},
    {rates},
    .lr = {_c_double(trainer.optimizer.lr)},
}};
"""
    src_dir = resources.files("edgetrain.export") / "c"
    for name in RUNTIME_FILES:
        with resources.as_file(src_dir / name) as p:
            shutil.copyfile(p, out / name)
    (out / "et_model.h").write_text(header)
    (out / "et_model.c").write_text(source)
    manifest = {
        "format": "edgetrain-c-export/1",
        "trainer": {"precision": trainer.precision, "params": trainer.params, "lam_min": trainer.lam_min,
                    "lam_max": trainer.lam_max, "lr": trainer.optimizer.lr, "optimizer": trainer.optimizer.kind,
                    "batch": trainer.batch, "error_range": trainer.error_range, "ranges": trainer.ranges},
        "input_shape": list(model.input_shape), "classes": classes,
        "trained": sorted(trained), "bias_only": sorted(bias_only),
        "arena_bytes": arena, "peak_bytes": plan.peak_bytes(),
        "buffers": [{"name": b.name, "kind": b.kind, "offset": offsets[b.name], "nbytes": b.nbytes,
                     "first": b.first, "last": b.last} for b in plan.buffers],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return Export(out, arena, offsets, tuple(sorted(trained)), tuple(sorted(bias_only)), manifest)


@dataclass(frozen=True)
class LayerState:
    """One trained layer's state as ``et_state_write`` serializes it."""

    weight: torch.Tensor | None
    bias: torch.Tensor
    w_scale: float
    w_zp: int
    b_scale: float
    e_max: float


def parse_state(model: DeployedModel, export: Export, data: bytes) -> dict[int, LayerState]:
    """Decode ``et_state_write``'s bytes (layout in ``et_kernels.c``) for the trained layers."""
    out, pos = {}, 0

    def take(nbytes: int) -> bytes:
        nonlocal pos
        if pos + nbytes > len(data):
            raise ValueError(f"state is {len(data)} bytes; expected more (at {pos} + {nbytes})")
        chunk = data[pos:pos + nbytes]
        pos += nbytes
        return chunk

    for i in export.trained:
        layer = model.layers[i]
        w = None
        if i not in export.bias_only:
            w = torch.frombuffer(bytearray(take(layer.weight.numel())), dtype=torch.uint8).to(torch.int64)
            w = w.reshape(layer.weight.shape)
        rows = layer.weight.shape[0]
        b = torch.tensor(struct.unpack(f"<{rows}i", take(4 * rows)), dtype=torch.int64)
        (ws,), (wz,), (bs,), (em,) = (struct.unpack("<d", take(8)), struct.unpack("<i", take(4)),
                                      struct.unpack("<d", take(8)), struct.unpack("<d", take(8)))
        out[i] = LayerState(w, b, ws, wz, bs, em)
    if pos != len(data):
        raise ValueError(f"state has {len(data) - pos} unexpected trailing bytes")
    return out


# -- forward-only ES (train.es.trainer.ESTrainer) ---------------------------------------------------------

ES_RUNTIME_FILES = ("et_kernels.h", "et_kernels.c", "et_es.h", "et_es.c")
ES_EXACT_PAIRS = {"rademacher": 2, "uniform": 1, "gaussian": 1}
"""Most perturbation pairs per generation the C reproduces exactly, by distribution. The trainer sums
``w_i z_i`` over the pairs with ``torch.tensordot`` (BLAS), whose order of additions (and use of fused
multiply-adds) is not specified; each ``w_i z_i`` is exact for ``z = +-1``, so a sum of two is the one
rounding of an exact sum whatever the order, and a single term is exact for any ``z``."""
_ES_CODES = {"one-plus-one": 0, "antithetic": 1, "spsa": 2, "rademacher": 0, "uniform": 1, "gaussian": 2,
             "floor": 0, "nearest": 1, "stochastic": 2}


def check_es_exportable(model: DeployedModel, trainer: ESTrainer, seed: int = 0) -> None:
    """Raise ``NotExportable`` naming the first ES setting (or model property) the C runtime cannot
    reproduce bit for bit, and what it supports."""
    if not isinstance(trainer, ESTrainer):
        raise NotExportable(f"export_es needs an ESTrainer, got {type(trainer).__name__}")
    if trainer.source != "lfsr":
        raise NotExportable(f"the C export draws its noise from the LFSR (source 'lfsr'); source {trainer.source!r} "
                            "(torch's MT19937 generator) is Python-only")
    if trainer.fitness != "accuracy":
        raise NotExportable(f"the C export scores members by fitness 'accuracy'; fitness {trainer.fitness!r} uses "
                            "torch.log_softmax, whose exp and log the C cannot reproduce bit for bit")
    if trainer.rank != 0:
        raise NotExportable(f"the C export perturbs every value (rank 0); rank {trainer.rank} (low-rank "
                            "perturbations) is Python-only")
    if trainer.shadow:
        raise NotExportable("the C export keeps the trained values in their deployed format (shadow False); "
                            "shadow True (a float32 shadow copy) is Python-only")
    if trainer.buffer != trainer.batch:
        raise NotExportable(f"the C export needs buffer == batch (the whole ring buffer is the mini-batch); buffer "
                            f"{trainer.buffer} > batch {trainer.batch} draws each mini-batch with torch.randperm, "
                            "which the C cannot reproduce")
    pairs, limit = trainer.pairs, ES_EXACT_PAIRS[trainer.distribution]
    if trainer.estimator != "one-plus-one" and pairs > limit:
        what = (f"population {trainer.population}" if trainer.estimator == "antithetic"
                else f"directions {trainer.directions}")
        raise NotExportable(f"estimator {trainer.estimator!r} with {what} ({pairs} perturbation pairs) and "
                            f"distribution {trainer.distribution!r}: the C export implements at most {limit} pair(s) "
                            f"for this distribution (population <= {2 * limit} / directions <= {limit}; see "
                            "ES_EXACT_PAIRS)")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise NotExportable(f"the seed must be an integer in [0, 2**64), got {seed!r}")
    check_model_exportable(model)
    if model.output_shape[0] < 2:
        raise NotExportable("fitness 'accuracy' needs at least 2 classes")
    if not trainer.writes(model):
        raise NotExportable(f"parameter selection {trainer.params!r} picks no parameters of this model")


def _fitness_table(model: DeployedModel, batch: int) -> list[float]:
    """``fitness.fitness(..., "accuracy")`` of a member with ``c`` correct predictions, ``c = 0..batch``,
    computed by that function itself (so the C uses exactly its doubles)."""
    logits = torch.zeros((batch + 1, batch, model.output_shape[0]), dtype=torch.int64)
    logits[:, :, 1] = 1  # every prediction class 1 ...
    for c in range(batch + 1):
        logits[c, :c, 0] = 2  # ... except the first c, which are class 0, the label
    values = es_fitness(logits, torch.zeros(batch, dtype=torch.int64), model.output_fmt, "accuracy").tolist()
    if values != sorted(set(values)):
        raise AssertionError("the fitness table must rise strictly with the count")
    return values


def export_es(model: DeployedModel, trainer: ESTrainer, out_dir: str | Path, seed: int = 0) -> Export:
    """Write the C library that trains ``model`` on a microcontroller as ``trainer.init(model, seed)``
    followed by ``trainer.step`` does (module docstring; what is exact and why: ``c/et_es.c``).

    RAM: one static arena (``cost.es_memory.es_plan``) with the inference activations, the trained
    tensors' values ``theta`` and a second copy of them that the forward reads (a member's perturbed values
    while it is scored), the ring buffer, the fitness counts and the registers. That is more than
    ``ESTrainer.extra_memory`` counts: it assumes the trained values already sit in writable weight memory
    and that members are perturbed as weights are read, so it has neither copy (the manifest lists both
    figures). The noise generators are a few words on the stack.
    """
    check_es_exportable(model, trainer, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = trainer.writes(model)
    specs = {n: (t, fmt) for n, t, fmt in model.params()}
    members = trainer.members
    plan = es_plan(model, names, batch=trainer.batch, members=members)
    offsets, arena = plan.layout()
    shapes = model.shapes()
    n = len(model.layers)

    tables, descs, max_rows = [], [], 1
    for i, layer in enumerate(model.layers):
        g = _geometry(layer, shapes[i], shapes[i + 1])
        d = {"kind": KIND[type(layer)], "train": 0, **g, "w_flash": "0", "b_flash": "0",
             "in_off": offsets[_act_name(model, i - 1)], "out_off": offsets[_act_name(model, i)],
             "w_off": offsets.get(f"{i}.weight.member", -1), "b_off": offsets.get(f"{i}.bias.member", -1),
             "gw_off": -1, "gb_off": -1, "err_out_off": -1, "err_in_off": -1, "emax_off": -1,
             "in_zp": layer.in_fmt.zero_point[0], "out_zp": layer.out_fmt.zero_point[0],
             "in_scale": layer.in_fmt.scale[0], "out_scale": layer.out_fmt.scale[0], "w_scale0": 1.0,
             "b_scale0": 1.0, "w_zp0": 0, "m0": 1, "shift0": 0, "err_m": 1, "err_shift": 0}
        if isinstance(layer, (Dense, Conv2d, Conv1d)):
            max_rows = max(max_rows, int(layer.weight.shape[0]))
            d.update(_linear_flash(i, layer, tables))
        elif isinstance(layer, GlobalAvgPool):
            m, s = multipliers(scale_of(layer.in_fmt) / math.prod(shapes[i][1:]), layer.out_fmt)
            d.update(m0=int(m), shift0=int(s))
        elif isinstance(layer, (ReLU, Flatten)):
            d["in_off"] = d["out_off"]
        descs.append(d)

    params = []
    for k, name in enumerate(names):
        t, fmt = specs[name]
        layer, kind = name.split(".")
        size = 1 if kind == "weight" else 4
        if bytes_per_value(fmt) != size:
            raise AssertionError(f"{name}: {fmt.name} is not stored in {size} byte(s)")
        params.append(f"    {{ /* {k}: {name} */ .layer = {layer}, .bytes = {size}, .n = {t.numel()}, "
                      f".theta_off = {offsets[name + '.ram']}, .eval_off = {offsets[name + '.member']}, "
                      f".flash = {kind[0]}{layer}, .raw_min = {fmt.raw_min}LL, .raw_max = {fmt.raw_max}LL }}")
    table = [_c_double(v) for v in _fitness_table(model, trainer.batch)]
    fitness_rows = ",\n    ".join(", ".join(table[i:i + 6]) for i in range(0, len(table), 6))
    input_size = math.prod(model.input_shape)
    classes = model.output_shape[0]
    layout_lines = "\n".join(f" *   {offsets[b.name]:6d} {b.nbytes:6d}  {b.first:2d}..{b.last:<2d} {b.name} ({b.kind})"
                             for b in sorted(plan.buffers, key=lambda b: offsets[b.name]))
    settings = (f"estimator {trainer.estimator}, params {trainer.params}, {trainer.distribution} noise, "
                f"{trainer.rounding} rounding, sigma {trainer.sigma}, lr {trainer.lr}, batch {trainer.batch}, "
                f"seed {seed}")
    header = f"""/* Generated by edgetrain export-c --train es: the tables of one model. Do not edit. */
#ifndef ET_MODEL_H
#define ET_MODEL_H
#include "et_kernels.h"
#include "et_es.h"

#define ET_ES 1 /* the driver calls et_es_init / et_es_step / et_es_state_* */
#define ET_INPUT_SIZE {input_size}
#define ET_CLASSES {classes}
#define ET_BATCH {trainer.batch} /* the mini-batch and ring buffer; the driver's largest et_es_step call */
#define ET_LAYERS {n}
#define ET_MAX_ROWS {max_rows}
#define ET_ARENA_BYTES {arena}

#endif
"""
    source = f"""/* Generated by edgetrain export-c --train es: the tables of one model. Do not edit.
 * ESTrainer: {settings}.
 * Arena layout (offset, bytes, live steps) from cost.es_memory.es_plan + MemoryPlan.layout:
{layout_lines}
 */
#include "et_model.h"

{"".join(tables)}
/* The layers; trained tensors are read from their eval copies (w_off / b_off), the rest from flash. */
static const et_layer layers[ET_LAYERS] = {{
{(","+chr(10)).join(_layer_rows(model, descs))}
}};

/* One static arena for every buffer; a union aligns it for int32 and double. */
static union {{ double align; uint8_t bytes[ET_ARENA_BYTES]; }} et_arena;
static et_live live[ET_LAYERS];

/* The forward's tables (et_kernels.c); no backward: lowest = ET_LAYERS. */
const et_model_t et_model = {{
    .layers = layers, .n_layers = ET_LAYERS, .lowest = ET_LAYERS, .batch = 1, .grad_rows = 1,
    .input_size = ET_INPUT_SIZE, .classes = ET_CLASSES, .max_rows = ET_MAX_ROWS,
    .arena = et_arena.bytes, .live = live, .exp_table = 0, .e_scale = 1.0, .e_zp = 0,
    .partial = 0, .lam_min = 0.0, .lam_max = 0.0, .lr = 0.0,
}};

/* The trained tensors in the trainer's order (ESState.names). */
static const et_es_param params[{len(params)}] = {{
{(","+chr(10)).join(params)}
}};

/* fitness.fitness(logits, y, fmt, "accuracy") of a member with c correct predictions, c = 0..{trainer.batch} */
static const double fitness[{len(table)}] = {{
    {fitness_rows}
}};

const et_es_model_t et_es_model = {{
    .params = params, .n_params = {len(params)}, .estimator = {_ES_CODES[trainer.estimator]} /* {trainer.estimator} */,
    .distribution = {_ES_CODES[trainer.distribution]} /* {trainer.distribution} */,
    .rounding = {_ES_CODES[trainer.rounding]} /* {trainer.rounding} */, .pairs = {trainer.pairs},
    .members = {members}, .batch = {trainer.batch}, .seed = {seed}ULL,
    .sigma0 = {_c_double(float(trainer.sigma))}, .lr = {_c_double(float(trainer.lr))},
    .sigma_up = {_c_double(float(trainer.sigma_up))}, .sigma_down = {_c_double(trainer.sigma_up ** -0.25)},
    .sigma_min = {_c_double(float(trainer.sigma_min))}, .sigma_max = {_c_double(float(trainer.sigma_max))},
    .fitness = fitness, .sqrt3 = {_c_double(math.sqrt(3.0))}, .gauss_scale = {_c_double(math.sqrt(4 / 12))},
    .x_off = {offsets["samples.x"]}, .y_off = {offsets["samples.y"]}, .count_off = {offsets["fitness"]},
    .regs_off = {offsets["registers"]},
}};
"""
    src_dir = resources.files("edgetrain.export") / "c"
    for name in ES_RUNTIME_FILES:
        with resources.as_file(src_dir / name) as path:
            shutil.copyfile(path, out / name)
    (out / "et_model.h").write_text(header)
    (out / "et_model.c").write_text(source)
    trained = sorted({int(nm.split(".")[0]) for nm in names})
    bias_only = [i for i in trained if f"{i}.weight" not in names]
    memory = es_memory(model, names, batch=trainer.batch, members=members)
    manifest = {
        "format": "edgetrain-c-export-es/1",
        "trainer": dataclasses.asdict(trainer), "seed": seed, "params": list(names),
        "input_shape": list(model.input_shape), "classes": classes, "members": members, "pairs": trainer.pairs,
        "arena_bytes": arena, "peak_bytes": plan.peak_bytes(), "ram_items": memory["items"],
        "extra_memory": trainer.extra_memory(model),
        "buffers": [{"name": b.name, "kind": b.kind, "offset": offsets[b.name], "nbytes": b.nbytes,
                     "first": b.first, "last": b.last} for b in plan.buffers],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return Export(out, arena, offsets, tuple(trained), tuple(bias_only), manifest,
                  sources=("et_kernels.c", "et_es.c", "et_model.c"), params=tuple(names))


__all__ = ["ES_EXACT_PAIRS", "ES_RUNTIME_FILES", "Export", "LayerState", "NotExportable", "check_es_exportable",
           "check_exportable", "check_model_exportable", "export_es", "export_fqt", "parse_state"]

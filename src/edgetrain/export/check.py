"""Run the generated C on the host or on an emulated Cortex-M and compare it with Python, byte for byte.

Both runs use the firmware driver ``export/target/main_target.c`` and its file protocol (documented
there): ``encode_input`` writes ``et_in.bin`` (training samples in steps, probe inputs),
``reference_output`` computes with ``FQTTrainer`` what ``et_out.bin`` must hold (each step's logits
before training, the probe logits and the serialized trained state after it), and ``compare`` names
the first place where a run differs; ``es_reference_output`` / ``es_compare`` do the same for an ES
export (``ESTrainer``). On the host the driver is linked with ``c/et_host_io.c`` (POSIX
files in place of semihosting), optionally with AddressSanitizer and UBSan; on the target it runs
under ``qemu-system-arm`` with semihosting, optionally with the instruction-counting plugin.
"""

from __future__ import annotations

import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..model import DeployedModel
from ..model.forward import forward_int
from ..train.es.trainer import ESState, ESTrainer
from ..train.fqt.trainer import FQTTrainer
from . import toolchain
from .generate import Export

HOST_IO_C = Path(__file__).resolve().parent / "c" / "et_host_io.c"


def encode_input(x: torch.Tensor, y: torch.Tensor, per_step: int, probes: torch.Tensor) -> bytes:
    """``et_in.bin``: ``x`` raw uint8 inputs ``[steps * per_step, ...]`` with labels ``y``, in steps of
    ``per_step`` samples, then the ``probes`` (raw inputs)."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} inputs but {y.shape[0]} labels")
    if per_step < 1 or x.shape[0] % per_step:
        raise ValueError(f"{x.shape[0]} samples do not split into steps of {per_step}")
    for name, t in (("inputs", x), ("probes", probes)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) > 255):
            raise ValueError(f"{name} must be raw uint8 values (0..255)")
    steps = x.shape[0] // per_step
    out = bytearray(struct.pack("<4i", steps, per_step if steps else 0, probes.shape[0], 0))
    flat = x.flatten(1).to(torch.uint8)
    for j in range(x.shape[0]):
        out += bytes(flat[j].tolist()) + bytes([int(y[j])])
    for p in probes.reshape(probes.shape[0], -1).to(torch.uint8):
        out += bytes(p.tolist())
    return bytes(out)


def state_bytes(model: DeployedModel, trainer: FQTTrainer, state) -> bytes:
    """What ``et_state_write`` serializes, from a Python ``FQTState`` (layout in ``et_kernels.c``)."""
    trained, bias_only = trainer.layers(model)
    out = bytearray()
    for i in sorted(trained):
        layer = state.model.layers[i]
        if i not in bias_only:
            out += bytes(layer.weight.reshape(-1).to(torch.uint8).tolist())
        out += struct.pack(f"<{layer.bias.numel()}i", *layer.bias.tolist())
        out += struct.pack("<d", layer.w_fmt.scale[0]) + struct.pack("<i", layer.w_fmt.zero_point[0])
        out += struct.pack("<d", layer.b_fmt.scale[0]) + struct.pack("<d", state.e_max.get(i, 0.0))
    return bytes(out)


def _logits(model: DeployedModel, q: torch.Tensor) -> bytes:
    if q.shape[0] == 0:
        return b""
    return bytes(forward_int(model, q, overflow="wrap").reshape(-1).to(torch.uint8).tolist())


def _driver_output(model: DeployedModel, trainer, x: torch.Tensor, y: torch.Tensor, per_step: int,
                   probes: torch.Tensor, seed: int, serialize, on_step) -> bytes:
    """What the firmware driver writes, computed in Python: per step the logits of its samples before
    it, the trainer's step, the probe logits and the length-prefixed ``serialize(model, trainer, state)``
    (once, after no step, when ``x`` is empty). ``on_step(info)``, if given, sees each step's ``StepInfo``."""
    state = trainer.init(model, seed=seed)
    out = bytearray()

    def after() -> None:
        out.extend(_logits(state.model, probes))
        st = serialize(model, trainer, state)
        out.extend(struct.pack("<I", len(st)) + st)

    for s in range(0, x.shape[0], per_step):
        xs, ys = x[s:s + per_step], y[s:s + per_step]
        out.extend(_logits(state.model, xs))
        state, info = trainer.step(state, (xs, ys))
        if on_step is not None:
            on_step(info)
        after()
    if x.shape[0] == 0:
        after()
    return bytes(out)


def reference_output(model: DeployedModel, trainer: FQTTrainer, x: torch.Tensor, y: torch.Tensor, per_step: int,
                     probes: torch.Tensor, seed: int = 0, ledgers: list | None = None) -> bytes:
    """The bytes ``et_out.bin`` must hold after the driver ran ``encode_input(x, y, per_step, probes)``.
    ``ledgers``, if given, receives each step's ``Ledger`` (MACs the reference counted)."""
    return _driver_output(model, trainer, x, y, per_step, probes, seed, state_bytes,
                          None if ledgers is None else (lambda info: ledgers.append(info.ledger)))


def es_state_bytes(model: DeployedModel, trainer: ESTrainer, state: ESState) -> bytes:
    """What ``et_es_state_write`` serializes, from a Python ``ESState`` (layout in ``c/et_es.c``): each
    trained tensor's raw values (uint8 weights, int32 biases), then step, accepted (uint32), seen (uint64)
    and sigma (double), little-endian."""
    out = bytearray()
    for name in trainer.writes(model):
        t, _ = state.model.param(name)
        flat = t.reshape(-1).tolist()
        out += bytes(flat) if name.endswith(".weight") else struct.pack(f"<{len(flat)}i", *flat)
    return bytes(out + struct.pack("<IIQd", state.step, state.accepted, state.seen, state.sigma))


def es_reference_output(model: DeployedModel, trainer: ESTrainer, x: torch.Tensor, y: torch.Tensor, per_step: int,
                        probes: torch.Tensor, seed: int = 0, infos: list | None = None) -> bytes:
    """The bytes ``et_out.bin`` of an ES export must hold after the driver ran ``encode_input(x, y,
    per_step, probes)``: per step the logits before it, then ``ESTrainer.step`` on its samples, the probe
    logits and ``es_state_bytes``. ``infos``, if given, receives each step's ``StepInfo``."""
    return _driver_output(model, trainer, x, y, per_step, probes, seed, es_state_bytes,
                          None if infos is None else infos.append)


def es_compare(model: DeployedModel, export: Export, want: bytes, got: bytes, steps: int, per_step: int,
               n_probe: int) -> Mismatch | None:
    """``compare`` for an ES export: ``None`` if ``got == want``, else the first differing item."""
    if want == got:
        return None
    classes = model.output_shape[0]
    sizes = [(name, model.param(name)[0].numel() * (1 if name.endswith(".weight") else 4)) for name in export.params]
    items = []
    for step in range(max(steps, 1)):
        items += [(f"step {step}: logits of sample {j} before training", classes)
                  for j in range(per_step if steps else 0)]
        items += [(f"after step {step}: logits of probe {j}", classes) for j in range(n_probe)]
        items.append((f"after step {step}: state length", 4))
        items += [(f"after step {step}: {name}", n) for name, n in sizes]
        items += [(f"after step {step}: {reg}", n) for reg, n in (("step", 4), ("accepted", 4), ("seen", 8),
                                                                   ("sigma", 8))]
    pos = 0
    for what, n in items:
        a, b = want[pos:pos + n], got[pos:pos + n]
        if a != b:
            return Mismatch(what, a, b)
        pos += n
    return Mismatch("trailing bytes", want[pos:], got[pos:])


@dataclass(frozen=True)
class Mismatch:
    """Where two outputs first differ: ``what`` (e.g. ``"step 3 logits of sample 2"``) and the bytes."""

    what: str
    want: bytes
    got: bytes

    def __str__(self) -> str:
        return f"{self.what}: want {self.want.hex(' ')} got {self.got.hex(' ')}"


def compare(model: DeployedModel, export: Export, want: bytes, got: bytes, steps: int, per_step: int,
            n_probe: int) -> Mismatch | None:
    """``None`` if ``got == want``, else the first differing item, named by step and field."""
    if want == got:
        return None
    classes = model.output_shape[0]
    pos = 0

    def items():
        nonlocal pos
        for step in range(max(steps, 1)):
            if steps:
                for j in range(per_step):
                    yield f"step {step}: logits of sample {j} before training", classes
            for j in range(n_probe):
                yield f"after step {step}: logits of probe {j}", classes
            yield f"after step {step}: state length", 4
            size = struct.unpack("<I", want[pos:pos + 4])[0] if pos + 4 <= len(want) else 0
            yield from _state_items(model, export, step, size)

    for what, n in items():
        a, b = want[pos:pos + n], got[pos:pos + n]
        if a != b:
            return Mismatch(what, a, b)
        pos += n
    return Mismatch("trailing bytes", want[pos:], got[pos:])


def _state_items(model: DeployedModel, export: Export, step: int, size: int):
    for i in export.trained:
        rows = int(model.layers[i].weight.shape[0])
        if i not in export.bias_only:
            yield f"after step {step}: layer {i} weights", model.layers[i].weight.numel()
        yield f"after step {step}: layer {i} biases", 4 * rows
        yield f"after step {step}: layer {i} weight scale", 8
        yield f"after step {step}: layer {i} weight zero point", 4
        yield f"after step {step}: layer {i} bias scale", 8
        yield f"after step {step}: layer {i} e_max", 8


def _sources(export: Export) -> list[Path]:
    return [*(export.out_dir / name for name in export.sources), toolchain.MAIN_TARGET_C]


def run_host(export: Export, data: bytes, sanitize: bool = False, workdir: str | Path | None = None,
             timeout: float = 120.0) -> bytes:
    """Build the driver and the generated C with the host ``gcc`` (``sanitize``: ASan + UBSan), run it
    on ``data`` (``et_in.bin``) and return ``et_out.bin``. Raises ``RuntimeError`` with the program's
    output if it fails (a sanitizer report included)."""
    with tempfile.TemporaryDirectory(prefix="edgetrain-host-") as tmp:
        work = Path(workdir or tmp)
        exe = toolchain.compile_host_program(
            [*_sources(export), HOST_IO_C], [export.out_dir, toolchain.TARGET_DIR],
            work / ("et_host_asan" if sanitize else "et_host"), defines=[("ET_IO_BYTES", _io_bytes(data))],
            sanitize=sanitize)
        (work / "et_in.bin").write_bytes(data)
        rc, output = toolchain.run_host_program(exe, work, timeout=timeout)
        if rc != 0:
            raise RuntimeError(f"host run failed (exit status {rc}):\n{output}")
        return (work / "et_out.bin").read_bytes()


def _io_bytes(data: bytes) -> int:
    return max(65536, (len(data) + 65536 + 4095) // 4096 * 4096)


@dataclass(frozen=True)
class TargetRun:
    """One run on an emulated Cortex-M: ``et_out.bin``, per-function instruction counts (with the
    plugin), section sizes of the ELF, the arena's symbol size, and the wall time of QEMU."""

    output: bytes
    counts: dict[str, int] | None
    size: dict[str, int]
    arena_symbol_bytes: int
    seconds: float
    console: str


def build_target(export: Export, cpu: str, workdir: str | Path, io_bytes: int, ram_bytes: int,
                 flash_bytes: int) -> Path:
    """Cross-compile the driver and the generated C for ``cpu``; returns the ELF path."""
    return toolchain.compile_target(_sources(export), [export.out_dir], cpu, Path(workdir) / f"et_{cpu}.elf",
                                    defines=[("ET_IO_BYTES", io_bytes)], ram_bytes=ram_bytes, flash_bytes=flash_bytes)


def run_target(export: Export, data: bytes, cpu: str = "cortex-m4", plugin: bool = False,
               ram_bytes: int = toolchain.BOARD_RAM_BYTES, flash_bytes: int = toolchain.BOARD_FLASH_BYTES,
               timeout: float = 300.0) -> TargetRun:
    """Cross-compile for ``cpu``, run under QEMU on ``data`` and return what it wrote and measured."""
    with tempfile.TemporaryDirectory(prefix="edgetrain-target-") as tmp:
        work = Path(tmp)
        elf = build_target(export, cpu, work, _io_bytes(data), ram_bytes, flash_bytes)
        (work / "et_in.bin").write_bytes(data)
        res = toolchain.run_qemu(elf, cpu, work, timeout=timeout, plugin=plugin)
        if res.returncode != 0:
            raise RuntimeError(f"{cpu} run failed (exit status {res.returncode}):\n{res.output}")
        sizes = toolchain.symbol_sizes(elf)
        return TargetRun((work / "et_out.bin").read_bytes(), res.counts, toolchain.target_size(elf),
                         sizes.get("et_arena", -1), res.seconds, res.output)


__all__ = ["Mismatch", "TargetRun", "build_target", "compare", "encode_input", "es_compare", "es_reference_output",
           "es_state_bytes", "reference_output", "run_host", "run_target", "state_bytes"]

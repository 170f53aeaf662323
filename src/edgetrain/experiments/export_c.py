"""What ``edgetrain export-c`` does: write the C library for a saved model, and optionally prove it.

``export_c`` builds the ``FQTTrainer`` configuration from the options, refuses one that does not
fit the device (the training memory planner's ledger says why), writes the C files
(``export.generate.export_fqt``), and with ``check`` runs the generated code on training samples of
the model's own dataset: on the host (``gcc``, with ``sanitize`` under ASan/UBSan) and/or on the
device's emulated Cortex-M (``qemu-system-arm``), comparing every logit, weight, bias and format
byte for byte with the Python reference. On the target it also reports code size, static RAM
against the planner's arena, and instructions executed per phase (``measure_phases``).

``export_c_es`` does the same for forward-only training by evolution strategies (``--train es``,
``export.generate.export_es``), checked against ``ESTrainer.step``, with the arena of
``cost.es_memory`` and the instructions of one generation on the target.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..cost import Ledger
from ..cost.es_memory import es_plan
from ..cost.memory import fits, flash_bytes
from ..cost.training_memory import check_training_fits
from ..data import load_dataset
from ..device import get_device
from ..export import check, toolchain
from ..export.generate import Export, check_es_exportable, export_es, export_fqt
from ..model import DeployedModel
from ..model.forward import quantize_input
from ..model.io import load_model
from ..report import make_record, print_table, write_json
from ..train.es.trainer import ESTrainer
from ..train.fqt.optimizer import Optimizer
from ..train.fqt.trainer import FQTTrainer

CHECKS = ("none", "host", "target", "both")

CONV_FORWARD = ("et_conv_fwd", "et_conv_fwd_pad", "et_conv_fwd_gather", "et_conv_fwd_gather_bounds",
                "et_conv_fwd_weights", "et_conv_fwd_rows", "et_conv_fwd_direct")
"""The convolution forward and the helpers it calls (padded input copy, operand gather, int16 weights,
the dot products and requantization, the wide fan-in fallback): every function named ``et_conv_fwd*``."""
FORWARD = ("et_dense_fwd", *CONV_FORWARD, "et_relu_fwd", "et_maxpool_fwd", "et_gap_fwd")
BACKWARD_MAC = ("et_dense_grad_row", "et_conv_grad_row", "et_conv_grad_row_k3", "et_conv_grad_row_s1",
                "et_tap_errors", "et_dense_bwd_input", "et_conv_bwd_input")
"""The backward kernels that do the MACs the ledger counts (weight gradients, input errors)."""
BACKWARD = ("et_loss_error", "et_saturate", "et_select_rows", "et_relu_bwd", "et_maxpool_bwd", "et_gap_bwd",
            *BACKWARD_MAC)
UPDATE = ("et_update_layer",)


def fqt_trainer(layers: str = "last:2", update_rate: float = 0.1, lr: float = 0.1, batch: int = 8,
                device: str | None = None) -> FQTTrainer:
    """The uint8 FQT configuration the C export implements: SGD, fixed ranges, dynamic partial
    updates at most ``update_rate`` (1 = every row, every step)."""
    if not (0.0 < update_rate <= 1.0):
        raise ValueError(f"--update-rate must lie in (0, 1], got {update_rate}")
    lam_min = 1.0 if update_rate == 1.0 else 0.0
    return FQTTrainer(precision="uint8", params=layers, lam_min=lam_min, lam_max=update_rate,
                      optimizer=Optimizer("sgd", lr=lr), batch=batch, device=device)


def check_samples(model: DeployedModel, steps: int, per_step: int, probes: int = 4, seed: int = 0,
                  data_dir: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw training samples (``steps * per_step``) and probe inputs from the model's own dataset."""
    name = model.meta.get("dataset")
    if not name:
        raise ValueError("the model does not record its dataset; it is needed for the check samples")
    ds = load_dataset(name, data_dir=data_dir, seed=int(model.meta.get("split_seed", seed)),
                      ts_pad="edge" if str(name).startswith("ts:") else None)
    n = steps * per_step
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, ds.train.x.shape[0], (n,), generator=g)
    x = quantize_input(model, ds.train.x[idx])
    y = ds.train.y[idx]
    return x, y, quantize_input(model, ds.test.x[:probes])


def measure_phases(counts: dict[str, int]) -> dict[str, int]:
    """Instructions per phase from the plugin's per-function counts: the named forward, backward
    and update kernels (each function's own instructions; the double-precision support routines
    they call are counted apart, as ``float_support``)."""
    phases = {"forward": sum(counts.get(f, 0) for f in FORWARD),
              "backward": sum(counts.get(f, 0) for f in BACKWARD),
              "update": sum(counts.get(f, 0) for f in UPDATE)}
    phases["float_support"] = sum(v for k, v in counts.items() if k.startswith(("__aeabi", "__", "floor", "rint",
                                                                                 "frexp", "fabs")))
    phases["total"] = counts.get("[total]", sum(counts.values()))
    return phases


def export_c(model_path: str, out: str, layers: str = "last:2", update_rate: float = 0.1, lr: float = 0.1,
             batch: int = 8, device: str = "cortex-m4", check_mode: str = "host", steps: int = 50, seed: int = 0,
             data_dir: str | None = None, json_path: str | None = None) -> dict:
    """Export, check and report; returns the result record (module docstring)."""
    if check_mode not in CHECKS:
        raise ValueError(f"--check must be one of {CHECKS}, got {check_mode!r}")
    if steps < 1:
        raise ValueError(f"--steps must be at least 1, got {steps}")
    t0 = time.perf_counter()
    dev = get_device(device)
    model = load_model(model_path)
    trainer = fqt_trainer(layers, update_rate, lr, batch)
    names = trainer.writes(model)
    check_training_fits(model, names, "uint8", dev, accumulate=batch, optimizer="sgd")
    export = export_fqt(model, trainer, out)
    sram = getattr(dev, "sram_bytes", None)
    if sram is not None and export.arena_bytes > sram:
        raise ValueError(f"the training arena ({export.arena_bytes:,} B) does not fit {dev.name}'s "
                         f"{sram:,} B of SRAM")
    row = {"out": str(export.out_dir), "trained layers": ",".join(map(str, export.trained)),
           "arena bytes": export.arena_bytes, "peak bytes": export.manifest["peak_bytes"],
           f"{dev.name} SRAM": sram}
    result: dict = {"arena_bytes": export.arena_bytes, "peak_bytes": export.manifest["peak_bytes"]}
    if check_mode != "none":
        x, y, probes = check_samples(model, steps, batch, seed=seed, data_dir=data_dir)
        result["forwards"] = 2 * x.shape[0] + steps * probes.shape[0]  # before each step, training, probes
        data = check.encode_input(x, y, batch, probes)
        want = check.reference_output(model, trainer, x, y, batch, probes, seed=seed)
        if check_mode in ("host", "both"):
            got = check.run_host(export, data)
            result["host"] = _verdict(check.compare(model, export, want, got, steps, batch, probes.shape[0]),
                                      f"{steps} steps", got)
            row["host check"] = result["host"]
        if check_mode in ("target", "both"):
            cpu = toolchain.cpu_for_device(device)
            run = check.run_target(export, data, cpu, plugin=True, ram_bytes=sram or toolchain.BOARD_RAM_BYTES)
            result["target"] = _verdict(check.compare(model, export, want, run.output, steps, batch,
                                                      probes.shape[0]), f"{steps} steps", run.output)
            result["target_cpu"] = cpu
            result["size"] = run.size
            result["arena_symbol_bytes"] = run.arena_symbol_bytes
            result["phases"] = measure_phases(run.counts or {})
            result["instructions"] = run.counts
            row.update({f"{cpu} check": result["target"], "code bytes": run.size.get("text"),
                        "static RAM bytes": run.size.get("ram"), "arena symbol bytes": run.arena_symbol_bytes})
    title = f"C export of {Path(model_path).name} (uint8 FQT, SGD, {trainer.rate_tag}, batch {batch})"
    print_table([{"item": k, "value": v} for k, v in row.items()], title=title)
    if "phases" in result:
        forwards = result["forwards"]
        print_table([{"phase": k, "instructions": v,
                      "per forward" if k == "forward" else "": (v / forwards) if k == "forward" else None}
                     for k, v in result["phases"].items()], title=f"instructions on {result['target_cpu']}")
    rec = make_record(method=f"fqt-uint8-{trainer.rate_tag}", dataset=model.meta.get("dataset"),
                      model=model.meta.get("arch"), fmt="uint8", shift="none", device=dev.name, seed=seed,
                      accuracy={"clean": None, "shifted": None, "final": None, "reference": None},
                      ledger=Ledger(train_ram_bytes=export.arena_bytes, flash_bytes=result.get("size", {}).get("flash"),
                                    wall_s=time.perf_counter() - t0).to_dict(), export=result, params=list(names),
                      manifest=export.manifest)
    return _finish(rec, result, json_path)


def _verdict(mismatch, what: str, got: bytes) -> str:
    """The check's line in the report: bit-exact over ``what``, or where the first difference is."""
    return f"bit-exact over {what} ({len(got):,} B)" if mismatch is None else f"MISMATCH at {mismatch}"


def _finish(rec: dict, result: dict, json_path: str | None) -> dict:
    """Write the record (``--json``), then fail if a check found a difference."""
    if json_path:
        write_json(json_path, rec)
    if any(result.get(k, "bit-exact").startswith("MISMATCH") for k in ("host", "target")):
        raise ArithmeticError("the generated C differs from the Python reference; see the table above")
    return rec


# -- forward-only ES (--train es) ---------------------------------------------------------------------------

ES_FUNCTIONS_PREFIX = "et_es_"


def es_trainer(layers: str = "last:2", estimator: str = "spsa", sigma: float = 8.0, lr: float = 8.0, batch: int = 16,
               population: int = 4, directions: int = 1, distribution: str = "rademacher",
               rounding: str = "stochastic", fitness: str = "accuracy", source: str = "lfsr",
               buffer: int | None = None) -> ESTrainer:
    """The ``ESTrainer`` of ``export-c --train es``: the ring buffer holds one mini-batch (``buffer``
    defaults to ``batch``); ``export.generate.check_es_exportable`` refuses what the C does not reproduce."""
    return ESTrainer(estimator=estimator, params=layers, population=population, directions=directions, sigma=sigma,
                     lr=lr, distribution=distribution, source=source, rounding=rounding, fitness=fitness,
                     buffer=batch if buffer is None else buffer, batch=batch)


def es_generation_instructions(export: Export, x: torch.Tensor, y: torch.Tensor, per_step: int,
                               probes: torch.Tensor, with_training: int, cpu: str, ram_bytes: int) -> float:
    """Instructions of one ES generation on ``cpu``: the instructions of the run that trained
    (``with_training``, the ``[total]`` count of a run of ``encode_input(x, y, per_step, probes)``) minus
    those of a run that makes the same predictions without training, per generation. The predictions see
    the initial parameters instead of the trained ones, and the state is written once instead of once
    per step: both change the count by far less than 1%."""
    steps = x.shape[0] // per_step
    same = torch.cat([torch.cat([x[s * per_step:(s + 1) * per_step], probes]) for s in range(steps)])
    run = check.run_target(export, check.encode_input(x[:0], y[:0], per_step, same), cpu, plugin=True,
                           ram_bytes=ram_bytes)
    return (with_training - (run.counts or {}).get("[total]", 0)) / steps


def export_c_es(model_path: str, out: str, layers: str = "last:2", estimator: str = "spsa", sigma: float = 8.0,
                lr: float = 8.0, batch: int = 16, population: int = 4, directions: int = 1,
                distribution: str = "rademacher", rounding: str = "stochastic", fitness: str = "accuracy",
                source: str = "lfsr", buffer: int | None = None, device: str = "cortex-m4", check_mode: str = "host",
                steps: int = 50, seed: int = 0, data_dir: str | None = None, json_path: str | None = None) -> dict:
    """``export_c`` for forward-only ES (``export.generate.export_es``): export, check ``steps``
    generations of ``batch`` samples each against ``ESTrainer.step`` byte for byte, and report the arena
    (``cost.es_memory``) next to ``ESTrainer.extra_memory``; on the target also the code size and the
    instructions of one generation (``es_generation_instructions``)."""
    if check_mode not in CHECKS:
        raise ValueError(f"--check must be one of {CHECKS}, got {check_mode!r}")
    if steps < 1:
        raise ValueError(f"--steps must be at least 1, got {steps}")
    t0 = time.perf_counter()
    dev = get_device(device)
    model = load_model(model_path)
    trainer = es_trainer(layers, estimator, sigma, lr, batch, population, directions, distribution, rounding,
                         fitness, source, buffer)
    check_es_exportable(model, trainer, seed)
    names = trainer.writes(model)
    plan = es_plan(model, names, batch=batch, members=trainer.members)
    fit = fits(dev, plan, flash_bytes(model))
    if not fit:
        raise ValueError(f"ES training of {list(names)} does not fit {dev.name}\n{fit}")
    export = export_es(model, trainer, out, seed)
    sram = getattr(dev, "sram_bytes", None)
    extra = trainer.extra_memory(model)
    items = export.manifest["ram_items"]
    row = {"out": str(export.out_dir), "trained": ",".join(names), "arena bytes": export.arena_bytes,
           "of which member copy": items["member_copy"], "ESTrainer.extra_memory": extra["total"],
           f"{dev.name} SRAM": sram}
    result: dict = {"arena_bytes": export.arena_bytes, "peak_bytes": export.manifest["peak_bytes"],
                    "ram_items": items, "python_extra_memory": extra}
    if check_mode != "none":
        x, y, probes = check_samples(model, steps, batch, seed=seed, data_dir=data_dir)
        result["forwards"] = steps * (trainer.members * batch + batch + probes.shape[0])
        data = check.encode_input(x, y, batch, probes)
        want = check.es_reference_output(model, trainer, x, y, batch, probes, seed=seed)
        if check_mode in ("host", "both"):
            got = check.run_host(export, data)
            result["host"] = _verdict(check.es_compare(model, export, want, got, steps, batch, probes.shape[0]),
                                      f"{steps} generations", got)
            row["host check"] = result["host"]
        if check_mode in ("target", "both"):
            cpu = toolchain.cpu_for_device(device)
            ram = sram or toolchain.BOARD_RAM_BYTES
            run = check.run_target(export, data, cpu, plugin=True, ram_bytes=ram)
            result["target"] = _verdict(check.es_compare(model, export, want, run.output, steps, batch,
                                                         probes.shape[0]), f"{steps} generations", run.output)
            result.update(target_cpu=cpu, size=run.size, arena_symbol_bytes=run.arena_symbol_bytes,
                          instructions=run.counts)
            total = (run.counts or {}).get("[total]", 0)
            per_gen = es_generation_instructions(export, x, y, batch, probes, total, cpu, ram)
            result["instructions_per_generation"] = per_gen
            row.update({f"{cpu} check": result["target"], "code bytes": run.size.get("text"),
                        "static RAM bytes": run.size.get("ram"), "arena symbol bytes": run.arena_symbol_bytes,
                        "instructions per generation": round(per_gen)})
    title = (f"C export of {Path(model_path).name} (uint8, {trainer.name}, {trainer.distribution}, "
             f"{trainer.members} members x {batch} samples)")
    print_table([{"item": k, "value": v} for k, v in row.items()], title=title)
    activations = items["activations"]
    rec = make_record(method=trainer.name, dataset=model.meta.get("dataset"), model=model.meta.get("arch"),
                      fmt="uint8", shift="none", device=dev.name, seed=seed,
                      accuracy={"clean": None, "shifted": None, "final": None, "reference": None},
                      ledger=Ledger(train_ram_bytes=export.arena_bytes,
                                    extra_memory_bytes=export.arena_bytes - activations,
                                    flash_bytes=result.get("size", {}).get("flash"),
                                    wall_s=time.perf_counter() - t0).to_dict(),
                      export=result, params=list(names), manifest=export.manifest)
    return _finish(rec, result, json_path)


__all__ = ["BACKWARD", "BACKWARD_MAC", "CHECKS", "CONV_FORWARD", "FORWARD", "UPDATE", "check_samples", "es_trainer",
           "es_generation_instructions", "export_c", "export_c_es", "fqt_trainer", "measure_phases"]

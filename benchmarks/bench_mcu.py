"""Training on an emulated Cortex-M (issue: generated C, verified bit-exact): the targets, measured.

The digits CNN (pretrained in float, deployed uint8) trains its last two layers on device with
uint8 FQT, 10% dynamic partial updates, SGD, mini-batch 8. The generated C runs under
``qemu-system-arm`` (mps2-an386, a Cortex-M4; also M0+ on mps2-an385 and M7 on mps2-an500) with an
instruction-counting TCG plugin; every output byte is compared with the Python reference.

* **fits**: the M4 build's static RAM (``.data + .bss`` + the 8 KiB stack reservation) is at most
  256 KiB, and the arena symbol in the ELF is exactly the planner's ``arena_bytes``;
* **forward**: instructions executed in the convolution forward (``et_conv_fwd`` and the operand
  gather it calls) per convolution MAC, at most 3 on the M4;
* **backward**: instructions in the backward MAC kernels (weight gradients and input errors, with
  their helpers) per backward MAC (the MACs the Python ledger counts for the same samples), at most 6
  on the M4, for the 10% run and for the full update; the whole backward (loss head, saturation, row
  selection, ReLU/pool backward too) is shown next to it;
* **partial updates**: backward instructions of the full update over those of the 10% run, same
  samples, at least 4x.

Instructions are QEMU's executed guest instructions (exact and repeatable), not cycles: the
cycles-per-MAC of the device profiles are this figure times an assumed cycles-per-instruction.

Run: ``python benchmarks/bench_mcu.py [--steps 50] [--json PATH]``. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time

import torch

from edgetrain.cost.training_memory import training_memory
from edgetrain.data import load_dataset
from edgetrain.experiments.deploy import pretrain_and_deploy
from edgetrain.experiments.export_c import (
    BACKWARD,
    BACKWARD_MAC,
    CONV_FORWARD,
    check_samples,
    fqt_trainer,
    measure_phases,
)
from edgetrain.export import check, toolchain
from edgetrain.export.generate import export_fqt
from edgetrain.model.layers import Conv1d, Conv2d
from edgetrain.report import print_table, versions, write_json

MAX_FWD_PER_MAC = 3.0
MAX_BWD_PER_MAC = 6.0
MIN_PARTIAL_CUT = 4.0
SRAM_LIMIT = 256 * 1024
CPUS = ("cortex-m4", "cortex-m0plus", "cortex-m7")


def conv_forward_macs(model) -> int:
    """MACs of every convolution layer of one forward."""
    shapes = model.shapes()
    return sum(math.prod(shapes[i + 1]) * layer.weight[0].numel()
               for i, layer in enumerate(model.layers) if isinstance(layer, (Conv2d, Conv1d)))


def run_config(model, rate: float, steps: int, batch: int, cpus, workdir: str) -> dict:
    trainer = fqt_trainer("last:2", rate, 0.1, batch)
    export = export_fqt(model, trainer, f"{workdir}/rate{rate}")
    x, y, probes = check_samples(model, steps, batch)
    data = check.encode_input(x, y, batch, probes)
    ledgers = []
    want = check.reference_output(model, trainer, x, y, batch, probes, ledgers=ledgers)
    forwards = 2 * steps * batch + steps * probes.shape[0]
    out = {"rate": rate, "arena_bytes": export.arena_bytes,
           "planner_arena_bytes": training_memory(model, trainer.writes(model), "uint8", accumulate=batch,
                                                  optimizer="sgd")["arena_bytes"],
           "backward_macs": sum(led.macs_backward for led in ledgers),
           "conv_forward_macs": forwards * conv_forward_macs(model), "cpus": {}}
    for cpu in cpus:
        run = check.run_target(export, data, cpu, plugin=True)
        mismatch = check.compare(model, export, want, run.output, steps, batch, probes.shape[0])
        counts = run.counts or {}
        bwd = sum(counts.get(f, 0) for f in BACKWARD)
        bwd_mac = sum(counts.get(f, 0) for f in BACKWARD_MAC)
        out["cpus"][cpu] = {
            "bit_exact": mismatch is None, "mismatch": None if mismatch is None else str(mismatch),
            "text_bytes": run.size.get("text"), "ram_bytes": run.size.get("ram"),
            "arena_symbol_bytes": run.arena_symbol_bytes, "phases": measure_phases(counts),
            "conv_fwd_per_mac": sum(counts.get(f, 0) for f in CONV_FORWARD) / out["conv_forward_macs"],
            "backward_per_mac": bwd_mac / out["backward_macs"] if out["backward_macs"] else None,
            "backward_all_per_mac": bwd / out["backward_macs"] if out["backward_macs"] else None,
            "backward_instructions": bwd, "qemu_s": run.seconds}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=15, help="float pretraining epochs")
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args()
    if not toolchain.have_target_toolchain():
        raise SystemExit("bench_mcu needs arm-none-eabi-gcc (gcc-arm-none-eabi, libnewlib-arm-none-eabi) "
                         "and qemu-system-arm (qemu-system-arm)")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    dep = pretrain_and_deploy(load_dataset("digits"), "cnn", "uint8", epochs=args.epochs, seed=0,
                              show_progress=False)
    model = dep.model
    with tempfile.TemporaryDirectory(prefix="bench-mcu-") as tmp:
        dyn = run_config(model, 0.1, args.steps, args.batch, CPUS, tmp)
        full = run_config(model, 1.0, args.steps, args.batch, ("cortex-m4",), tmp)
    m4, m4_full = dyn["cpus"]["cortex-m4"], full["cpus"]["cortex-m4"]
    cut = m4_full["backward_instructions"] / m4["backward_instructions"]
    rows = [{"cpu": cpu, "bit-exact": r["bit_exact"], "code B": r["text_bytes"], "RAM B": r["ram_bytes"],
             "arena B": r["arena_symbol_bytes"], "conv fwd instr/MAC": r["conv_fwd_per_mac"],
             "bwd MAC kernels instr/MAC": r["backward_per_mac"], "whole bwd instr/MAC": r["backward_all_per_mac"],
             "QEMU s": r["qemu_s"]}
            for cpu, r in dyn["cpus"].items()]
    print_table(rows, title=f"digits CNN, last two layers, uint8, dyn10, batch {args.batch}, {args.steps} steps")
    print_table([{"cpu": "cortex-m4 (full update)", "bit-exact": m4_full["bit_exact"],
                  "conv fwd instr/MAC": m4_full["conv_fwd_per_mac"],
                  "bwd MAC kernels instr/MAC": m4_full["backward_per_mac"],
                  "whole bwd instr/MAC": m4_full["backward_all_per_mac"]}], title="reference: full update")
    targets = [
        {"target": "M4 static RAM <= 256 KiB", "measured": m4["ram_bytes"], "reference": SRAM_LIMIT,
         "ratio": m4["ram_bytes"] / SRAM_LIMIT, "met": m4["ram_bytes"] <= SRAM_LIMIT and m4["bit_exact"]},
        {"target": "arena symbol == planner arena", "measured": m4["arena_symbol_bytes"],
         "reference": dyn["planner_arena_bytes"], "ratio": m4["arena_symbol_bytes"] / dyn["planner_arena_bytes"],
         "met": m4["arena_symbol_bytes"] == dyn["planner_arena_bytes"]},
        {"target": "M4 conv forward instr/MAC <= 3", "measured": m4["conv_fwd_per_mac"],
         "reference": MAX_FWD_PER_MAC, "ratio": m4["conv_fwd_per_mac"] / MAX_FWD_PER_MAC,
         "met": m4["conv_fwd_per_mac"] <= MAX_FWD_PER_MAC},
        {"target": "M4 backward MAC kernels instr/MAC <= 6 (dyn10)", "measured": m4["backward_per_mac"],
         "reference": MAX_BWD_PER_MAC, "ratio": m4["backward_per_mac"] / MAX_BWD_PER_MAC,
         "met": m4["backward_per_mac"] <= MAX_BWD_PER_MAC},
        {"target": "M4 backward MAC kernels instr/MAC <= 6 (full)", "measured": m4_full["backward_per_mac"],
         "reference": MAX_BWD_PER_MAC, "ratio": m4_full["backward_per_mac"] / MAX_BWD_PER_MAC,
         "met": m4_full["backward_per_mac"] <= MAX_BWD_PER_MAC},
        {"target": "full / dyn10 backward instructions >= 4", "measured": cut, "reference": MIN_PARTIAL_CUT,
         "ratio": cut / MIN_PARTIAL_CUT, "met": cut >= MIN_PARTIAL_CUT and m4_full["bit_exact"]},
    ]
    print_table(targets, title="targets (ratio = measured / reference)")
    result = {"bench": "mcu", "steps": args.steps, "batch": args.batch, "dyn10": dyn, "full": full,
              "full_over_dyn10_backward": cut, "targets": targets, "wall_s": time.perf_counter() - t0,
              "versions": versions()}
    if args.json_path:
        write_json(args.json_path, result)
    print(json.dumps({t["target"]: [t["measured"], t["met"]] for t in targets}))


if __name__ == "__main__":
    main()

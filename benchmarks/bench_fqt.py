"""Fully quantized training (Deutel et al., arXiv 2407.10734): the issue's targets on the digits
transfer task (cnn pretrained on digits 0-4, last two layers learn 5-9 on device), every figure a
ratio against a reference measured in the same run.

* **accuracy**: uint8 FQT (full update) within 2 points of float32 training, same epochs, same seeds
  (mean over ``--seeds``);
* **memory**: peak training RAM of uint8 at most 0.45x float32's for the same network and trained
  layers, from the tensor-lifetime planner (``cost.training_memory``), for the mini-batch run here and
  for per-sample updates (batch 1, no gradient accumulation buffer); the batch-1 configuration is also
  trained (first seed) so its accuracy is shown, not assumed;
* **dynamic partial updates** at 10%: backward MACs at most 0.2x of the full update, accuracy within
  1.5 points (same seeds); the host wall time of the backward is reported next to it (it is *not* the
  device's: the host still multiplies the pruned zeros of the error propagation);
* **throughput**: training samples per second of the uint8 step against the integer forward alone.
* **int16 gradient buffer** (``FQTTrainer(grad_buffer="int16")``: block-floating-point int16 mantissas
  with one exponent per weight row / filter / bias vector, our extension, not the paper's): RAM of
  uint8 with it against float32 at the mini-batch size (at most 0.45x), and its transfer accuracy
  against float32 (within 2 points, as uint8) and against uint8 with the int32 buffer (points), same
  seeds and epochs; its host step time against the int32 buffer's.

The integer kernels' bit-exactness against a scalar reference is checked by ``tests/test_fqt_kernels.py``.

Run: ``python benchmarks/bench_fqt.py [--seeds 0,1,...,9] [--json PATH]``. The last line printed is one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from edgetrain.cost.training_memory import training_memory
from edgetrain.experiments.fqt_demo import FQTDemoConfig, make_task, train_task
from edgetrain.model.forward import forward_int
from edgetrain.report import print_table, versions, write_json
from edgetrain.report.timing import median_time
from edgetrain.train.fqt.optimizer import Optimizer
from edgetrain.train.fqt.trainer import FQTTrainer
from edgetrain.train.protocol import Batch

MAX_ACC_GAP = 2.0
MAX_RAM_RATIO = 0.45
MAX_MAC_RATIO = 0.2
MAX_DYN_DROP = 1.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2,3,4,5,6,7,8,9",
                    help="seeds (each pretrains its own model); the accuracy figures are means over them. Ten, "
                         "because three gave a dyn10 drop of 1.1 points where ten give 2.7")
    ap.add_argument("--epochs", type=int, default=10, help="on-device epochs (mini-batch runs)")
    ap.add_argument("--batch1-epochs", type=int, default=3, help="on-device epochs of the batch-1 runs")
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    cfg = FQTDemoConfig(epochs={"digits-transfer": args.epochs}, seeds=tuple(seeds), progress=False)
    opt = Optimizer(cfg.optimizer, cfg.lr)
    configs = {
        "float32-full": FQTTrainer("float32", "last:2", optimizer=opt, batch=cfg.batch),
        "uint8-full": FQTTrainer("uint8", "last:2", optimizer=opt, batch=cfg.batch),
        "uint8-dyn10": FQTTrainer("uint8", "last:2", 0.0, 0.1, opt, batch=cfg.batch),
        "uint8-int16": FQTTrainer("uint8", "last:2", optimizer=opt, batch=cfg.batch, grad_buffer="int16"),
    }
    acc: dict[str, list[float]] = {k: [] for k in configs}
    macs: dict[str, list[int]] = {k: [] for k in configs}
    back_s: dict[str, list[float]] = {k: [] for k in configs}
    task = None
    for seed in seeds:
        task = make_task("digits-transfer", cfg, seed)
        for label, trainer in configs.items():
            res = train_task(trainer, task, seed)
            acc[label].append(res["after"])
            macs[label].append(res["ledger"].macs_backward)
            back_s[label].append(res["backward_s"])
    # batch 1 (per-sample updates): accuracy of the configuration whose RAM the second memory target uses
    b1_opt = Optimizer(cfg.optimizer, cfg.lr / cfg.batch)
    b1_task = make_task("digits-transfer", FQTDemoConfig(epochs={"digits-transfer": args.batch1_epochs}), seeds[0])
    b1 = {p: train_task(FQTTrainer(p, "last:2", optimizer=b1_opt, batch=1), b1_task, seeds[0])["after"]
          for p in ("float32", "uint8")}

    names = configs["uint8-full"].writes(task.model)
    ram = {(p, b): training_memory(task.model, names, p, accumulate=b, optimizer=opt.kind)["train_ram_bytes"]
           for p in ("float32", "mixed", "uint8") for b in (cfg.batch, 1)}
    ram_int16 = training_memory(task.model, names, "uint8", accumulate=cfg.batch, optimizer=opt.kind,
                                grad_buffer="int16")["train_ram_bytes"]
    mean = {k: statistics.fmean(v) for k, v in acc.items()}
    gap = 100 * (mean["float32-full"] - mean["uint8-full"])
    drop = 100 * (mean["uint8-full"] - mean["uint8-dyn10"])
    mac_ratio = sum(macs["uint8-dyn10"]) / sum(macs["uint8-full"])
    time_ratio = sum(back_s["uint8-dyn10"]) / sum(back_s["uint8-full"])
    ram_ratio = ram[("uint8", cfg.batch)] / ram[("float32", cfg.batch)]
    ram_ratio1 = ram[("uint8", 1)] / ram[("float32", 1)]
    ram_ratio16 = ram_int16 / ram[("float32", cfg.batch)]
    gap16 = 100 * (mean["float32-full"] - mean["uint8-int16"])
    vs_int32 = 100 * (mean["uint8-full"] - mean["uint8-int16"])

    # throughput: one uint8 training step (batch 8) against the integer forward of the same batch
    trainer = configs["uint8-full"]
    state = trainer.init(task.model, 0)
    batch = Batch(task.x[:cfg.batch], task.y[:cfg.batch])
    t_step = median_time(lambda: trainer.step(state, batch), repeats=15)
    t_fwd = median_time(lambda: forward_int(task.model, batch.x, overflow="wrap"), repeats=15)
    trainer16 = configs["uint8-int16"]
    state16 = trainer16.init(task.model, 0)
    t_step16 = median_time(lambda: trainer16.step(state16, batch), repeats=15)

    rows = [
        {"figure": "float32 full: accuracy on 5-9 (mean)", "value": round(mean["float32-full"], 4), "target": ""},
        {"figure": "uint8 full: accuracy (mean)", "value": round(mean["uint8-full"], 4), "target": ""},
        {"figure": "uint8 gap to float32 (points)", "value": round(gap, 2), "target": f"<= {MAX_ACC_GAP}"},
        {"figure": f"RAM uint8/float32, mini-batch {cfg.batch}", "value": round(ram_ratio, 3),
         "target": f"<= {MAX_RAM_RATIO}"},
        {"figure": "RAM uint8/float32, per-sample updates", "value": round(ram_ratio1, 3),
         "target": f"<= {MAX_RAM_RATIO}"},
        {"figure": "batch 1: float32 / uint8 accuracy (seed 0)", "value": f"{b1['float32']:.4f} / {b1['uint8']:.4f}",
         "target": ""},
        {"figure": "dyn10/full backward MACs (uint8)", "value": round(mac_ratio, 3), "target": f"<= {MAX_MAC_RATIO}"},
        {"figure": "dyn10 accuracy drop (points)", "value": round(drop, 2), "target": f"<= {MAX_DYN_DROP}"},
        {"figure": "dyn10/full backward host wall time", "value": round(time_ratio, 3), "target": "(host, not device)"},
        {"figure": "uint8 train step / forward time (batch 8)", "value": round(t_step / t_fwd, 2), "target": ""},
        {"figure": f"RAM uint8 int16-buffer/float32, mini-batch {cfg.batch}", "value": round(ram_ratio16, 3),
         "target": f"<= {MAX_RAM_RATIO}"},
        {"figure": "uint8 int16-buffer: accuracy (mean)", "value": round(mean["uint8-int16"], 4), "target": ""},
        {"figure": "uint8 int16-buffer gap to float32 (points)", "value": round(gap16, 2),
         "target": f"<= {MAX_ACC_GAP}"},
        {"figure": "uint8 int16-buffer gap to uint8 int32 (points)", "value": round(vs_int32, 2), "target": ""},
        {"figure": "uint8 int16/int32 buffer train step time", "value": round(t_step16 / t_step, 2),
         "target": "(host)"},
    ]
    print_table(rows, title=f"FQT on digits transfer (cnn, last two layers), seeds {seeds}")
    result = {
        "benchmark": "fqt", "seeds": seeds, "epochs": args.epochs, "batch": cfg.batch,
        "accuracy": {k: v for k, v in acc.items()}, "accuracy_mean": mean, "batch1_accuracy": b1,
        "train_ram_bytes": {**{f"{p}-b{b}": v for (p, b), v in ram.items()},
                            f"uint8-int16-b{cfg.batch}": ram_int16},
        "backward_macs": macs, "backward_s": back_s, "step_s": t_step, "forward_s": t_fwd, "step_int16_s": t_step16,
        "targets": {
            "uint8_within_2pts_of_float32": {"gap_points": gap, "met": gap <= MAX_ACC_GAP},
            "ram_ratio_minibatch": {"ratio": ram_ratio, "met": ram_ratio <= MAX_RAM_RATIO},
            "ram_ratio_per_sample_updates": {"ratio": ram_ratio1, "met": ram_ratio1 <= MAX_RAM_RATIO},
            "ram_ratio_minibatch_int16_buffer": {"ratio": ram_ratio16, "met": ram_ratio16 <= MAX_RAM_RATIO},
            "int16_buffer_within_2pts_of_float32": {"gap_points": gap16, "met": gap16 <= MAX_ACC_GAP},
            "int16_buffer_vs_int32_buffer": {"gap_points": vs_int32, "met": None, "note": "reported, no target"},
            "dyn10_macs": {"ratio": mac_ratio, "met": mac_ratio <= MAX_MAC_RATIO},
            "dyn10_accuracy": {"drop_points": drop, "met": drop <= MAX_DYN_DROP},
            "kernels_bit_exact": {"met": None, "note": "checked by tests/test_fqt_kernels.py"},
        },
        "versions": versions(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if args.json_path:
        write_json(args.json_path, result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Throughput of the integer-exact forward against the float torch forward of the same network.

Issue target: the integer-exact batched forward of the built-in ``cnn`` runs at least 0.5x the float
forward's samples/s at batch 256. Both run in this process on the same inputs (the ``digits`` test
split, tiled to the batch), with the same thread count, timed in alternation
(``report.timing.paired_ratio``): the ratio is the median of per-round ratios, so a slow spell of a
shared machine lands on both sides; the samples/s are medians of the same timings. The last line
printed is one JSON object.

Run: ``python benchmarks/bench_inference.py [--batch 256] [--repeats 7] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json

import torch

from edgetrain.data import load_dataset
from edgetrain.experiments.deploy import pretrain_and_deploy
from edgetrain.model.forward import forward_int, quantize_input
from edgetrain.report import print_table, versions, write_json
from edgetrain.report.timing import paired_ratio
from edgetrain.threads import DEFAULT_THREADS, torch_threads

TARGET_RATIO = 0.5
MIN_TIME = 0.2
"""Seconds each timing loops for."""


def bench(arch: str, fmt: str, batch: int, repeats: int, epochs: int) -> dict:
    ds = load_dataset("digits", seed=0)
    with torch_threads(DEFAULT_THREADS):  # the same model on every machine (edgetrain.threads)
        dep = pretrain_and_deploy(ds, arch, fmt, epochs=epochs, seed=0, show_progress=False)
    reps = -(-batch // ds.test.x.shape[0])
    x = ds.test.x.repeat(reps, *([1] * (ds.test.x.ndim - 1)))[:batch].contiguous()
    q = quantize_input(dep.model, x)
    net = dep.net.float().eval()
    with torch.inference_mode():
        exact = paired_ratio(lambda: net(x), lambda: forward_int(dep.model, q), repeats, MIN_TIME)
        quant = paired_ratio(lambda: net(x), lambda: forward_int(dep.model, quantize_input(dep.model, x)), repeats,
                             MIN_TIME)
    # the ratio is float time over integer time: integer samples/s as a fraction of float samples/s
    return {"arch": arch, "format": fmt, "batch": batch, "float_samples_per_s": batch / exact["fn_s"],
            "int_samples_per_s": batch / exact["ref_s"],
            "int_with_input_quantization_samples_per_s": batch / quant["ref_s"], "ratio": exact["ratio"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--epochs", type=int, default=5, help="pre-training epochs (weights do not affect speed)")
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args()
    rows = [bench(arch, fmt, args.batch, args.repeats, args.epochs)
            for arch, fmt in (("cnn", "fixed16_6"), ("cnn", "int8"), ("mlp", "fixed16_6"))]
    print_table([{"arch": r["arch"], "format": r["format"], "float samples/s": round(r["float_samples_per_s"]),
                  "int samples/s": round(r["int_samples_per_s"]),
                  "int incl. input quantize": round(r["int_with_input_quantization_samples_per_s"]),
                  "int/float": round(r["ratio"], 3)} for r in rows],
                title=f"integer-exact vs float forward, batch {args.batch}, {torch.get_num_threads()} threads")
    main_row = rows[0]
    result = {"benchmark": "bench_inference", "batch": args.batch, "threads": torch.get_num_threads(),
              "rows": rows,
              "targets": [{"name": f"cnn fixed16_6 int/float throughput ratio at batch {args.batch}",
                           "value": main_row["ratio"], "target": f">= {TARGET_RATIO}",
                           "met": main_row["ratio"] >= TARGET_RATIO}],
              "versions": versions()}
    if args.json_path:
        write_json(args.json_path, result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

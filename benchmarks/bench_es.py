"""Cost of one ES generation against one batched integer forward of the same number of samples,
and bit-for-bit reproducibility.

Issue targets checked here:

* a generation of population ``P`` at batch ``B`` (drawing the perturbations from their seeds,
  the population's batched integer forward, fitness, ranks, update and write count: one
  ``ESTrainer.step``) costs at most 1.5x one batched ``forward_int`` of ``P x B`` samples, timed
  in the same process in alternation (``report.timing.paired_ratio``: the median of per-round
  ratios, so a slow spell of a shared machine lands on both), at each thread count of
  ``--threads``;
* the same seed gives the same adapted model, bit for bit (two runs compared parameter by
  parameter), for every estimator.

The recovery target (ES vs backprop fine-tuning) is shown by ``edgetrain es-demo``.

Run: ``python benchmarks/bench_es.py [--population 20] [--batch 64] [--repeats 9] [--threads 1,2]
[--json PATH]``.
The last line printed is one JSON object.
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
from edgetrain.train.es.trainer import ESTrainer
from edgetrain.train.protocol import Batch

TARGET_RATIO = 1.5
CASES = (("mlp", "last"), ("mlp", "all"), ("cnn", "last"), ("cnn", "all"))


def generation_ratio(model, q: torch.Tensor, y: torch.Tensor, params: str, population: int, repeats: int) -> dict:
    """Seconds of one generation (a full ``step`` on a full buffer) vs one forward of P x B samples."""
    batch = q.shape[0]
    trainer = ESTrainer(estimator="antithetic", params=params, population=population, batch=batch, buffer=batch)
    state, _ = trainer.step(trainer.init(model, 0), Batch(q, y))  # fills the buffer
    empty = Batch(q[:0], y[:0])
    holder = {"state": state}

    def generation() -> None:  # a step with no new samples runs one generation on the buffer
        holder["state"], _ = trainer.step(holder["state"], empty)

    big = q.repeat(population, *([1] * (q.ndim - 1)))
    with torch.inference_mode():
        t = paired_ratio(generation, lambda: forward_int(model, big, overflow="wrap"), repeats)
    n_trained = sum(model.param(n)[0].numel() for n in trainer.writes(model))
    return {"params": params, "trained_values": n_trained, "population": population, "batch": batch,
            "threads": torch.get_num_threads(), "forward_ms": t["ref_s"] * 1e3,
            "generation_ms": t["fn_s"] * 1e3, "ratio": t["ratio"]}


def reproducible(model, q: torch.Tensor, y: torch.Tensor, estimator: str, source: str) -> bool:
    """Two runs from the same seed end with bit-identical parameters."""
    def run() -> list[torch.Tensor]:
        trainer = ESTrainer(estimator=estimator, params="last", source=source, batch=32, buffer=64,
                            distribution="gaussian" if source == "torch" else "rademacher")
        state = trainer.init(model, 3)
        for start in range(0, 320, 16):
            state, _ = trainer.step(state, Batch(q[start:start + 16], y[start:start + 16]))
        return [t for _, t, _ in trainer.model(state).params()]

    a, b = run(), run()
    return all(torch.equal(s, t) for s, t in zip(a, b, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--population", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--threads", default="1,2", help="torch thread counts to time at, comma-separated")
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    torch.manual_seed(0)
    ds = load_dataset("digits", seed=0)
    rows, repro = [], {}
    for arch in ("mlp", "cnn"):
        with torch_threads(DEFAULT_THREADS):  # the same model on every machine (edgetrain.threads)
            model = pretrain_and_deploy(ds, arch, epochs=args.epochs, seed=0, show_progress=False).model
        q = quantize_input(model, ds.train.x[: max(args.batch, 320)])
        y = ds.train.y[: q.shape[0]]
        default_threads = torch.get_num_threads()
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            for case_arch, params in CASES:
                if case_arch == arch:
                    r = generation_ratio(model, q[: args.batch], y[: args.batch], params, args.population,
                                         args.repeats)
                    rows.append({"model": arch, **r})
        torch.set_num_threads(default_threads)
        for est in ("one-plus-one", "antithetic", "spsa"):
            for source in ("lfsr", "torch"):
                repro[f"{arch}/{est}/{source}"] = reproducible(model, q, y, est, source)
    print_table([{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
                title=f"one ES generation vs one integer forward of P x B samples (P={args.population}, "
                      f"B={args.batch}, medians of {args.repeats})")
    worst = max(r["ratio"] for r in rows)
    result = {
        "benchmark": "bench_es", "cases": rows, "reproducible": repro,
        "targets": {
            "generation_vs_forward_ratio": {"target": f"<= {TARGET_RATIO}", "worst": worst,
                                            "met": worst <= TARGET_RATIO},
            "same_seed_same_result": {"target": "bit-identical parameters", "met": all(repro.values())},
        },
        "threads": threads, "versions": versions(),
    }
    if args.json_path:
        write_json(args.json_path, result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

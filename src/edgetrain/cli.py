"""Command line: parses arguments and calls ``experiments``; no logic of its own."""

from __future__ import annotations

import argparse
import math
import sys

from . import __version__
from .threads import DEFAULT_THREADS, torch_threads


def _common(p: argparse.ArgumentParser, device: bool = True) -> None:
    p.add_argument("--seed", type=int, default=0, help="random seed (data split, training, shifts)")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="write the result record as JSON")
    if device:
        p.add_argument("--device", default="cortex-m4", help="device profile for costs (see 'edgetrain devices')")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _items(text: str) -> tuple[str, ...]:
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    if not items:
        raise ValueError(f"expected a comma-separated list, got {text!r}")
    return items


def _number(text: str, option: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"{option}: {text!r} is not a number") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{option}: {text!r} must be a finite number >= 0")
    return v


def _data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="directory with dataset files (else $EDGETRAIN_DATA, then the cache)")
    p.add_argument("--download", action="store_true", help="download missing MNIST-family files (checksummed)")


DEVICE_COLUMNS = {
    "mcu": ["name", "core", "clock_mhz", "sram_kb", "flash_kb", "cycles_per_mac", "energy_per_mac_pj", "estimated"],
    "fpga": ["name", "part", "luts", "ffs", "dsps", "bram_36k", "clock_mhz", "estimated"],
    "nvm": ["name", "write_pj_per_bit", "read_pj_per_bit", "endurance_writes", "estimated"],
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edgetrain", description="Train quantized networks on the device "
                                 "where they are deployed, and count what it costs.")
    ap.add_argument("--version", action="version", version=f"edgetrain {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="train, deploy, shift and cost a small CNN on digits (built-in defaults)")
    _common(d)
    _data(d)
    d.add_argument("--dataset", default="digits")
    d.add_argument("--arch", default="cnn", choices=("cnn", "mlp"))
    d.add_argument("--format", dest="fmt", default="fixed16_6", help="fixed<W>_<I>[:rounding][:overflow], int8, uint8")
    d.add_argument("--shift", default="noise:0.3", help="input shift, e.g. noise:0.3, rotate:15, contrast:0.5")
    d.add_argument("--epochs", type=_positive, default=30)
    d.add_argument("--out", default="runs/demo", help="directory for result.json, CSV and PNG")
    d.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("pretrain", help="train a float network and save it deployed (.etm)")
    _common(p)
    _data(p)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--arch", default="cnn", choices=("cnn", "mlp"))
    p.add_argument("--format", dest="fmt", default="fixed16_6")
    p.add_argument("--epochs", type=_positive, default=30)
    p.add_argument("--out", required=True, help="path of the .etm model file to write")
    p.add_argument("--no-progress", action="store_true")

    e = sub.add_parser("evaluate", help="integer-exact accuracy of a saved model, optionally under a shift")
    _common(e)
    _data(e)
    e.add_argument("model", help="a .etm file written by 'edgetrain pretrain'")
    e.add_argument("--dataset", help="dataset (default: the one the model was trained on)")
    e.add_argument("--shift", default="none", help="input shift, e.g. noise:0.3")

    s = sub.add_parser("es-demo", help="forward-only ES recovery from input noise (AbdulQader et al. 2021)")
    _common(s, device=False)
    _data(s)
    s.add_argument("--dataset", default="digits")
    s.add_argument("--arch", default="mlp,cnn", help="comma-separated architectures (mlp, cnn)")
    s.add_argument("--format", dest="fmt", default="fixed16_6")
    s.add_argument("--sigmas", default="0.3,0.5", help="comma-separated input noise levels")
    s.add_argument("--params", default="last", help="what ES trains: last, last:K, bias, bias:last:K, all, names")
    s.add_argument("--variants", default="all", help="comma-separated ES variants (default: all)")
    s.add_argument("--budget", type=_positive, default=1_000_000, help="forward passes per ES variant")
    s.add_argument("--buffer", type=_positive, default=256, help="samples in the device's buffer")
    s.add_argument("--batch", type=_positive, default=32, help="mini-batch per generation (from the buffer)")
    s.add_argument("--epochs", type=_positive, default=30, help="float pre-training epochs")
    s.add_argument("--finetune-epochs", type=_positive, default=7,
                   help="epochs of the backprop reference (over three noisy copies of the training split)")
    s.add_argument("--device", default="ku115", help="FPGA profile for the training unit's size")
    s.add_argument("--out", default="runs/es-demo", help="directory for es_demo.json, CSV and PNG")
    s.add_argument("--no-progress", action="store_true")

    lr = sub.add_parser("lrt-demo", help="online low-rank training with rare NVM weight writes (Gural et al. 2020)")
    _common(lr, device=False)
    _data(lr)
    lr.add_argument("--dataset", default="digits")
    lr.add_argument("--arch", default="cnn", help="architecture (cnn or mlp)")
    lr.add_argument("--format", dest="fmt", default="int8", help="deployed format (8-bit weights: int8)")
    lr.add_argument("--samples", type=_positive, default=2000, help="samples in the online stream (N)")
    lr.add_argument("--scenarios", default="all",
                    help="comma-separated: control, distribution, analog-drift, digital-drift (default: all)")
    lr.add_argument("--methods", default="all", help="comma-separated methods (default: all)")
    lr.add_argument("--analog", default="analog:4@10", help="analog drift: sigma in LSBs @ every k samples")
    lr.add_argument("--digital", default="digital:1e-3@10", help="digital drift: bit-flip probability @ every k")
    lr.add_argument("--rank", type=_positive, default=4, help="rank r of the Kronecker-sum accumulators")
    lr.add_argument("--nvm", default="rram", help="non-volatile memory profile for write energy and lifetime")
    lr.add_argument("--epochs", type=_positive, default=15, help="float pre-training epochs")
    lr.add_argument("--out", default="runs/lrt-demo", help="directory for lrt_demo.json, CSV and PNG")
    lr.add_argument("--no-progress", action="store_true")

    fq = sub.add_parser("fqt-demo", help="fully quantized training with dynamic partial updates (Deutel et al. 2024)")
    fq.add_argument("--seed", type=int, default=None, help="run this one seed (default: --seeds)")
    fq.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; accuracies are means over them")
    fq.add_argument("--json", dest="json_path", metavar="PATH", help="write the result records as JSON")
    fq.add_argument("--data-dir", help="directory with the .ts files (else $EDGETRAIN_DATA, ../shared/data)")
    fq.add_argument("--tasks", default="all",
                    help="comma-separated: digits-transfer, digits-scratch, ts:<Name> (default: all four)")
    fq.add_argument("--precisions", default="float32,mixed,uint8", help="comma-separated precision modes")
    fq.add_argument("--rates", default="1,0.5,0.1", help="update rates (1 = full; below 1: dynamic, at most)")
    fq.add_argument("--no-static", action="store_true", help="skip uint8's fixed-rate, last-layer and bias-only runs")
    fq.add_argument("--optimizer", default="sgd", help="sgd, standardize or qas")
    fq.add_argument("--lr", type=float, default=0.1, help="learning rate")
    fq.add_argument("--batch", type=_positive, default=8, help="mini-batch (gradient accumulation) size")
    fq.add_argument("--epochs", type=_positive, default=None, help="on-device epochs for every task")
    fq.add_argument("--shift", default="contrast:0.5+offset:0.5+noise:0.3", help="time-series tasks' sensor shift")
    fq.add_argument("--devices", default="cortex-m0+,cortex-m4,cortex-m7", help="MCU profiles to cost")
    fq.add_argument("--quick", action="store_true", help="one seed, one epoch per task: a smoke test")
    fq.add_argument("--out", default="runs/fqt-demo", help="directory for fqt_demo.json, CSV and PNG")
    fq.add_argument("--no-progress", action="store_true")

    ec = sub.add_parser("export-c", help="generate C that runs and trains a saved uint8 model on a Cortex-M")
    ec.add_argument("model", help="a model file saved by 'edgetrain pretrain --format uint8'")
    ec.add_argument("--train", choices=("fqt", "es"), default="fqt",
                    help="on-device training method compiled in: fqt (fully quantized training, SGD) or es "
                    "(forward-only evolution strategies)")
    ec.add_argument("--layers", default="last:2", help="trained parameters: last:K, bias:last:K, all, or indices")
    ec.add_argument("--update-rate", type=float, default=None,
                    help="fqt: dynamic partial updates, at most this fraction of rows/filters per sample "
                    "(1 = all; default 0.1)")
    ec.add_argument("--lr", type=float, default=None, help="learning rate (fqt: SGD, default 0.1; es: in LSBs, "
                    "default 8)")
    ec.add_argument("--batch", type=_positive, default=None,
                    help="samples per update (fqt: gradient accumulation, default 8; es: mini-batch = ring buffer, "
                    "default 16)")
    ec.add_argument("--estimator", choices=("spsa", "one-plus-one", "antithetic"), default=None,
                    help="es: the estimator (default spsa)")
    ec.add_argument("--sigma", type=float, default=None, help="es: perturbation scale in LSBs (default 8)")
    ec.add_argument("--population", type=_positive, default=None,
                    help="es antithetic: members per generation (2 or 4; default 4)")
    ec.add_argument("--directions", type=_positive, default=None, help="es spsa: perturbation pairs (default 1)")
    ec.add_argument("--distribution", choices=("rademacher", "uniform", "gaussian"), default=None,
                    help="es: noise distribution (default rademacher)")
    ec.add_argument("--rounding", choices=("stochastic", "floor", "nearest"), default=None,
                    help="es: rounding of the update (default stochastic)")
    ec.add_argument("--fitness", choices=("accuracy", "ce"), default=None,
                    help="es: member fitness (default accuracy; ce is Python-only)")
    ec.add_argument("--source", choices=("lfsr", "torch"), default=None,
                    help="es: random source (default lfsr; torch is Python-only)")
    ec.add_argument("--buffer", type=_positive, default=None,
                    help="es: samples in the ring buffer (must equal --batch for the C export)")
    ec.add_argument("--device", default="cortex-m4", help="device profile: its SRAM bounds the arena; "
                    "cortex-m0+/m4/m7 pick the emulated CPU")
    ec.add_argument("--check", default="host", choices=("none", "host", "target", "both"),
                    help="run the C on the host (gcc) and/or the emulated Cortex-M (QEMU) against Python")
    ec.add_argument("--steps", type=_positive, default=50, help="training steps of the check")
    ec.add_argument("--data-dir", help="directory with the model's dataset files, for the check samples")
    ec.add_argument("--out", default="runs/export-c", help="directory for the generated C files")
    _common(ec, device=False)

    r = sub.add_parser("run", help="run an experiment config (TOML): trials, progress, resumable results")
    r.add_argument("config", help="a config file, or the name of a shipped one: compare, es, lowrank, fqt "
                   "(edgetrain/configs/<name>.toml)")
    r.add_argument("--out", help="run directory (default: runs/<config name>, -quick appended with --quick)")
    r.add_argument("--quick", action="store_true", help="shrink every trial (one seed, short training): a smoke test")
    r.add_argument("--workers", type=_positive, default=1, help="local worker processes running trials in parallel")
    r.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run trials as Ray tasks (a local Ray instance, or the cluster at ADDRESS); needs .[ray]")
    r.add_argument("--force", action="store_true",
                   help="reuse a directory holding another config's results (they move to superseded-<k>/)")
    r.add_argument("--no-progress", action="store_true")
    _data(r)

    rp = sub.add_parser("report", help="Markdown + HTML report with tables and plots of a run directory")
    rp.add_argument("run_dir", help="a directory written by 'edgetrain run'")

    v = sub.add_parser("devices", help="list device profiles with their numbers")
    _common(v, device=False)
    for command in sub.choices.values():
        command.add_argument("--threads", type=_positive, default=DEFAULT_THREADS,
                             help=f"torch threads (default {DEFAULT_THREADS} on every machine: float training "
                                  "depends on the thread count, so a fixed one gives a seed the same result "
                                  "everywhere; 'run' trials use one each)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with torch_threads(args.threads):
            return _dispatch(args)
    except (ValueError, TypeError, OSError, KeyError, ArithmeticError, RuntimeError) as e:
        print(f"edgetrain {args.command}: error: {e}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from .experiments.demo import DemoConfig, run_demo
        from .report import write_json

        rec = run_demo(DemoConfig(dataset=args.dataset, arch=args.arch, fmt=args.fmt, shift=args.shift,
                                  device=args.device, epochs=args.epochs, seed=args.seed,
                                  data_dir=args.data_dir, download=args.download, out=args.out,
                                  progress=not args.no_progress))
        if args.json_path:
            write_json(args.json_path, rec)
    elif args.command == "pretrain":
        from .experiments.commands import pretrain

        pretrain(args.dataset, args.arch, args.fmt, args.out, args.epochs, args.seed, args.device,
                 args.data_dir, args.download, args.json_path, not args.no_progress)
    elif args.command == "evaluate":
        from .experiments.commands import evaluate

        evaluate(args.model, args.dataset, args.shift, args.seed, args.device, args.data_dir,
                 args.download, args.json_path)
    elif args.command == "es-demo":
        from .experiments.es_demo import VARIANTS, ESDemoConfig, run_es_demo
        from .report import write_json

        variants = tuple(VARIANTS) if args.variants == "all" else _items(args.variants)
        recs = run_es_demo(ESDemoConfig(
            dataset=args.dataset, archs=_items(args.arch), fmt=args.fmt,
            sigmas=tuple(_number(v, "--sigmas") for v in _items(args.sigmas)), params=args.params,
            variants=variants, budget=args.budget, buffer=args.buffer, batch=args.batch,
            finetune_epochs=args.finetune_epochs, epochs=args.epochs, device=args.device, seed=args.seed,
            data_dir=args.data_dir, download=args.download, out=args.out, progress=not args.no_progress))
        if args.json_path:
            write_json(args.json_path, recs)
    elif args.command == "lrt-demo":
        from .experiments.lrt_demo import METHODS, SCENARIOS, LRTDemoConfig, run_lrt_demo
        from .report import write_json

        recs = run_lrt_demo(LRTDemoConfig(
            dataset=args.dataset, arch=args.arch, fmt=args.fmt, samples=args.samples,
            scenarios=SCENARIOS if args.scenarios == "all" else _items(args.scenarios),
            methods=tuple(METHODS) if args.methods == "all" else _items(args.methods),
            analog=args.analog, digital=args.digital, rank=args.rank, nvm=args.nvm, epochs=args.epochs,
            seed=args.seed, data_dir=args.data_dir, download=args.download, out=args.out,
            progress=not args.no_progress))
        if args.json_path:
            write_json(args.json_path, recs)
    elif args.command == "fqt-demo":
        from .experiments.fqt_demo import TASKS, FQTDemoConfig, run_fqt_demo
        from .report import write_json

        cfg = FQTDemoConfig(
            tasks=TASKS if args.tasks == "all" else _items(args.tasks), precisions=_items(args.precisions),
            rates=tuple(_number(v, "--rates") for v in _items(args.rates)), static=not args.no_static,
            optimizer=args.optimizer, lr=args.lr, batch=args.batch, shift=args.shift, devices=_items(args.devices),
            seeds=(args.seed,) if args.seed is not None else tuple(int(v) for v in _items(args.seeds)),
            data_dir=args.data_dir, out=args.out, progress=not args.no_progress)
        if args.epochs is not None:
            cfg.epochs = {k: args.epochs for k in ("digits-transfer", "digits-scratch", "ts")}
        if args.quick:
            cfg.epochs = {k: 1 for k in ("digits-transfer", "digits-scratch", "ts")}
            cfg.seeds = cfg.seeds[:1]
            cfg.pretrain_epochs = 5
        recs = run_fqt_demo(cfg)
        if args.json_path:
            write_json(args.json_path, recs)
    elif args.command == "export-c":
        from .experiments.export_c import export_c

        es_keys = ("estimator", "sigma", "population", "directions", "distribution", "rounding", "fitness", "source",
                   "buffer")
        common = {k: v for k, v in (("lr", args.lr), ("batch", args.batch)) if v is not None}
        es_given = {k: getattr(args, k) for k in es_keys if getattr(args, k) is not None}
        run = dict(device=args.device, check_mode=args.check, steps=args.steps, seed=args.seed,
                   data_dir=args.data_dir, json_path=args.json_path)
        if args.train == "es":
            if args.update_rate is not None:
                raise ValueError("--update-rate applies to --train fqt only")
            from .experiments.export_c import export_c_es

            export_c_es(args.model, args.out, layers=args.layers, **common, **es_given, **run)
        else:
            if es_given:
                raise ValueError(f"{', '.join('--' + k for k in es_given)} appl{'ies' if len(es_given) == 1 else 'y'} "
                                 "to --train es only")
            rate = {} if args.update_rate is None else {"update_rate": args.update_rate}
            export_c(args.model, args.out, layers=args.layers, **rate, **common, **run)
    elif args.command == "run":
        from .experiments.config import load_config
        from .experiments.runner import run_config

        cfg = load_config(args.config, quick=args.quick, data_dir=args.data_dir)
        out = args.out or f"runs/{cfg.name}{'-quick' if args.quick else ''}"
        try:
            summary = run_config(cfg, out, workers=args.workers, use_ray=args.ray is not None,
                                 ray_address=args.ray or None, force=args.force, data_dir=args.data_dir,
                                 download=args.download, show_progress=not args.no_progress)
        except KeyboardInterrupt as e:
            print(f"edgetrain run: {e}", file=sys.stderr)
            return 130
        print(f"{summary.trials} trials: {summary.skipped} already done, {summary.ran} run now "
              f"({summary.failed} failed) in {summary.wall_s:.1f} s; results in {summary.out}/results.jsonl; "
              f"next: edgetrain report {summary.out}")
        return 1 if summary.failed else 0
    elif args.command == "report":
        from .report.run_report import write_report

        res = write_report(args.run_dir)
        print(f"wrote {res['markdown']}, {res['html']} and {len(res['plots'])} plots")
    elif args.command == "devices":
        from .device import device_table
        from .report import print_table, write_json

        rows = device_table()
        for kind, cols in DEVICE_COLUMNS.items():
            print_table([r for r in rows if r["kind"] == kind], cols, title=f"{kind} profiles")
        print("Numbers marked 'estimated' are model parameters or estimates; each profile lists its sources "
              "and the basis of every number (edgetrain/device/profiles.py; full rows with --json).")
        if args.json_path:
            write_json(args.json_path, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

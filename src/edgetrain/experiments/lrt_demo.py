"""``edgetrain lrt-demo``: online training with rare weight writes (Gural et al., arXiv 2009.03887).

A CNN is pretrained on clean data and deployed with 8-bit weights (``int8``: symmetric per output
channel, the format of a weight held in a non-volatile cell). It then meets a stream of ``samples``
labelled samples, one at a time, predicting each before it learns from it, under four scenarios:

* ``control``: nothing changes;
* ``distribution``: the stream is class-clustered (runs of ``run_length`` samples of one class) and the
  input shift switches every ``samples / 10`` samples through rotation, translation, scaling,
  contrast/offset, white noise and combinations of them (``DISTRIBUTION_SHIFTS``);
* ``analog-drift``: every 10 samples the stored weights take Gaussian noise (``analog``, sigma in LSBs)
  and are rounded and clipped, as analog levels in a resistive cell wander;
* ``digital-drift``: every 10 samples each stored weight bit flips with probability ``digital``.

Every method of ``train.lowrank.NVMTrainer`` runs on the same stream and the same drift draws. Per
scenario x method the demo reports online accuracy (mean over the stream, and its moving average
for the plot), the busiest cell's writes, mean writes per cell per sample, auxiliary memory, the
energy of the weight writes and the RRAM lifetime in samples (``device.RRAM``: 10.9 pJ/bit writes,
1e6 writes endurance).

The stream draws from the held-out test split (the pretraining never saw it), reshuffled on each
pass when ``samples`` is larger; later passes repeat samples the learner has met, so each record also
gives the online accuracy of the first pass alone. Stated assumptions (the paper's exact settings are not all public):
the learning rates in ``METHODS`` and the drift amounts in :class:`LRTDemoConfig`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..cost import Ledger, flash_bytes
from ..cost.writes import lifetime_steps, max_writes_per_cell, write_energy_j, writes_ledger
from ..data import Dataset, load_dataset
from ..device import get_device
from ..model import DeployedModel
from ..model.forward import accuracy, quantize_input
from ..report import make_record, print_table, progress, write_experiment
from ..shift import class_clustered_order, parse_drift, parse_shift
from ..shift.weights import WeightDrift
from ..train.es.perturb import derive_seed
from ..train.lowrank.trainer import NVMTrainer
from ..train.protocol import Batch
from .deploy import pretrain_and_deploy

SCENARIOS = ("control", "distribution", "analog-drift", "digital-drift")

METHODS: dict[str, dict] = {
    "inference-only": {"method": "inference-only"},
    "bias-only": {"method": "bias-only", "lr": 0.01},
    "sgd": {"method": "sgd", "maxnorm": False, "lr": 0.01},
    "sgd-accumulate": {"method": "sgd-accumulate", "maxnorm": False, "lr": 0.01},
    "lrt-biased-maxnorm": {"method": "lrt-biased", "maxnorm": True, "lr": 0.01, "lr_bias": 0.01},
    "lrt-unbiased-maxnorm": {"method": "lrt-unbiased", "maxnorm": True, "lr": 0.01, "lr_bias": 0.01},
}
"""Method label (the trainer's ``name``) -> ``NVMTrainer`` settings (on top of the config's rank). Every
method's biases learn at 0.01; ``lr`` is the weight step."""

DISTRIBUTION_SHIFTS = (
    "none", "rotate:25", "translate:1", "scale:0.75", "contrast:0.5+offset:0.25", "white:0.3",
    "rotate:25+white:0.2", "translate:1+contrast:0.6", "scale:0.75+offset:0.2", "rotate:15+scale:0.85",
)
"""The distribution scenario's segments, in order (each lasts ``samples / 10`` samples)."""


@dataclass
class LRTDemoConfig:
    dataset: str = "digits"
    arch: str = "cnn"
    fmt: str = "int8"
    samples: int = 2000
    scenarios: tuple[str, ...] = SCENARIOS
    methods: tuple[str, ...] = tuple(METHODS)
    analog: str = "analog:4@10"
    """Analog drift: sigma in LSBs, every 10 samples (``shift.parse_drift`` spec)."""
    digital: str = "digital:1e-3@10"
    """Digital drift: bit-flip probability per stored bit, every 10 samples."""
    run_length: int = 10
    """Class-clustered runs in the distribution scenario."""
    rank: int = 4
    window: int = 100
    """Moving-average window of the online-accuracy curve."""
    nvm: str = "rram"
    epochs: int = 15
    seed: int = 0
    data_dir: str | None = None
    download: bool = False
    out: str | None = "runs/lrt-demo"
    progress: bool = True
    overrides: dict = field(default_factory=dict)
    """Per-method setting overrides, ``{label: {key: value}}``."""


def make_trainers(cfg: LRTDemoConfig) -> dict[str, NVMTrainer]:
    """The configured methods as trainers; refuses unknown labels and bad settings up front."""
    out = {}
    for label in cfg.methods:
        if label not in METHODS:
            raise ValueError(f"unknown lrt-demo method {label!r}; known: {list(METHODS)}")
        settings = {**METHODS[label], **cfg.overrides.get(label, {})}
        if settings["method"].startswith("lrt-"):
            settings.setdefault("rank", cfg.rank)
        trainer = NVMTrainer(**settings)
        if trainer.name != label:
            raise ValueError(f"method {label!r}: its settings describe {trainer.name!r}")
        out[label] = trainer
    return out


def scenario_stream(ds: Dataset, model: DeployedModel, scenario: str, cfg: LRTDemoConfig
                    ) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """Raw-integer inputs ``[samples, ...]``, labels, and the stream's segments (start, what)."""
    n, x_all, y_all = cfg.samples, ds.test.x, ds.test.y
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, SCENARIOS.index(scenario), 41))
    passes = math.ceil(n / y_all.shape[0])
    if scenario == "distribution":
        order = torch.cat([class_clustered_order(y_all, cfg.run_length, g) for _ in range(passes)])[:n]
    else:
        order = torch.cat([torch.randperm(y_all.shape[0], generator=g) for _ in range(passes)])[:n]
    x, y = x_all[order].clone(), y_all[order]
    segments = [{"start": 0, "what": scenario if scenario != "distribution" else DISTRIBUTION_SHIFTS[0]}]
    if scenario == "distribution":
        bounds = [round(n * k / len(DISTRIBUTION_SHIFTS)) for k in range(len(DISTRIBUTION_SHIFTS) + 1)]
        segments = []
        for spec, start, end in zip(DISTRIBUTION_SHIFTS, bounds, bounds[1:], strict=False):
            x[start:end] = parse_shift(spec).apply(x[start:end], g)
            segments.append({"start": start, "what": spec})
    return quantize_input(model, x), y, segments


def scenario_drift(scenario: str, cfg: LRTDemoConfig) -> WeightDrift:
    if scenario == "analog-drift":
        return parse_drift(cfg.analog)
    if scenario == "digital-drift":
        return parse_drift(cfg.digital)
    return parse_drift("none")


def run_online(trainer: NVMTrainer, model: DeployedModel, q: torch.Tensor, y: torch.Tensor, drift: WeightDrift,
               drift_seed: int, seed: int, bar=None, task=None) -> dict:
    """Predict-then-learn over the stream; the weights drift (same draws for every method) before
    the samples where ``drift`` is due. Returns per-sample correctness, the run ledger, the state."""
    state = trainer.init(model, seed)
    weights = {f"{i}.weight" for i, layer in enumerate(model.layers) if layer.params}
    gd = torch.Generator().manual_seed(drift_seed)
    correct = torch.zeros(q.shape[0])
    ledger = Ledger()
    t0 = time.perf_counter()
    for t in range(q.shape[0]):
        if drift.due(t):
            state = replace(state, model=drift.apply(state.model, gd, weights))
        state, info = trainer.step(state, Batch(q[t:t + 1], y[t:t + 1]))
        correct[t] = info.metrics["correct"]
        ledger = ledger + info.ledger
        if bar is not None and (t % 50 == 0 or t == q.shape[0] - 1):
            bar.update(task, completed=t + 1)
    wall = time.perf_counter() - t0
    return {"correct": correct, "ledger": ledger.replace(wall_s=wall), "state": state, "wall": wall}


def moving_average(correct: torch.Tensor, window: int, points: int = 200) -> list[dict]:
    """Trailing moving average of per-sample correctness, sampled at about ``points`` positions."""
    n = correct.shape[0]
    csum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(correct.double(), 0)])
    stride = max(1, n // points)
    out = []
    for t in list(range(stride - 1, n, stride)) + ([n - 1] if (n - 1) % stride != stride - 1 else []):
        lo = max(0, t + 1 - window)
        out.append({"sample": t + 1, "accuracy": round(float((csum[t + 1] - csum[lo]) / (t + 1 - lo)), 4)})
    return out


def run_lrt_demo(cfg: LRTDemoConfig) -> list[dict]:
    """Run every scenario x method; print tables; write JSON, CSV, PNG under ``cfg.out``; return records."""
    trainers = make_trainers(cfg)
    nvm = get_device(cfg.nvm)
    if getattr(nvm, "kind", None) != "nvm":
        raise ValueError(f"lrt-demo costs weight writes on a non-volatile memory profile (rram, pcm, stt-mram, "
                         f"nor-flash); {cfg.nvm!r} is a {getattr(nvm, 'kind', '?')} profile")
    unknown = sorted(set(cfg.scenarios) - set(SCENARIOS))
    if unknown or not cfg.scenarios:
        raise ValueError(f"unknown scenario(s) {unknown}; expected some of {SCENARIOS}")
    if not (isinstance(cfg.samples, int) and cfg.samples >= 10):
        raise ValueError(f"samples must be an integer >= 10, got {cfg.samples!r}")
    if cfg.window < 1 or cfg.run_length < 1:
        raise ValueError("window and run_length must be >= 1")
    for spec in (cfg.analog, cfg.digital):
        parse_drift(spec)
    ds = load_dataset(cfg.dataset, data_dir=cfg.data_dir, download=cfg.download, seed=cfg.seed)
    dep = pretrain_and_deploy(ds, cfg.arch, cfg.fmt, epochs=cfg.epochs, seed=cfg.seed, show_progress=cfg.progress)
    model = dep.model
    clean = accuracy(model, ds.test.x, ds.test.y)
    common = {"dataset": ds.name, "model": cfg.arch, "fmt": cfg.fmt, "device": nvm.name, "seed": cfg.seed}
    records, rows = [], []
    baseline_trainer = NVMTrainer(method="inference-only")
    for scenario in cfg.scenarios:
        q, y, segments = scenario_stream(ds, model, scenario, cfg)
        drift = scenario_drift(scenario, cfg)
        drift_seed = derive_seed(cfg.seed, SCENARIOS.index(scenario), 43)
        base = run_online(baseline_trainer, model, q, y, drift, drift_seed, cfg.seed)
        shifted = float(base["correct"].mean())
        for label, trainer in trainers.items():
            if label == "inference-only":
                res = base
            else:
                with progress(disable=not cfg.progress) as bar:
                    task = bar.add_task(f"{scenario} {label}", total=cfg.samples)
                    res = run_online(trainer, model, q, y, drift, drift_seed, cfg.seed, bar, task)
            rec = _record(trainer, label, scenario, model, res, shifted, clean, segments, drift, nvm, cfg, common,
                          int(ds.test.y.shape[0]))
            records.append(rec)
            rows.append(_row(rec))
    columns = {"method": "method", "online": "online acc", "last_half": "2nd half", "max_writes": "max wr/cell",
               "density": "wr/cell/sample", "aux_bytes": "aux B", "write_uj": "write uJ",
               "lifetime": "lifetime (samples)", "rate": "samples/s"}
    for scenario in cfg.scenarios:
        panel = [{short: r[key] for key, short in columns.items()} for r in rows if r["scenario"] == scenario]
        print_table(panel, title=f"{cfg.arch} ({cfg.fmt}) on {ds.name}, {scenario}: {cfg.samples} samples online, "
                    f"writes on {nvm.name}")
    targets = check_targets(records)
    print_table(targets["scenarios"], title="target: on drift, LRT (max-norm) online accuracy >= SGD's with "
                ">= 100x fewer max writes per cell")
    if cfg.out:
        out = write_experiment(cfg.out, "lrt_demo", rows, records, targets, asdict(cfg))
        plot_lrt(records, out / "lrt_demo.png")
    return records


def _record(trainer: NVMTrainer, label: str, scenario: str, model: DeployedModel, res: dict, shifted: float,
            clean: float, segments: list[dict], drift: WeightDrift, nvm, cfg: LRTDemoConfig, common: dict,
            pool: int) -> dict:
    state, correct = res["state"], res["correct"]
    n = correct.shape[0]
    counter = state.writes
    has_cells = bool(counter.counts)
    energy = write_energy_j(counter, model, nvm) if has_cells else 0.0
    life = lifetime_steps(counter, nvm) if has_cells else math.inf
    ledger = res["ledger"].replace(flash_bytes=flash_bytes(model), energy_j=energy)
    if has_cells:
        ledger = ledger + writes_ledger(counter)
    else:
        ledger = ledger.replace(weight_writes=0, max_writes_per_cell=0)
    online = float(correct.mean())
    first_pass = min(n, pool)
    return make_record(
        method=label, shift=scenario, **common,
        accuracy={"clean": clean, "shifted": shifted, "final": online, "reference": None},
        ledger=ledger.to_dict(extra=False),
        online_accuracy=online, online_accuracy_second_half=float(correct[n // 2:].mean()),
        online_accuracy_first_pass=float(correct[:first_pass].mean()), first_pass_samples=first_pass,
        online_curve=moving_average(correct, cfg.window), window=cfg.window,
        max_writes_per_cell=max_writes_per_cell(counter) if has_cells else 0,
        writes_per_cell_per_sample=ledger.mean_write_density if has_cells else 0.0,
        aux_memory_bytes=trainer.aux_bytes(model), write_energy_j=energy,
        energy_note="ledger energy_j = energy of the NVM weight writes only (biases live in SRAM; reads and "
                    "arithmetic are not costed here)",
        lifetime_samples=None if math.isinf(life) else life, nvm=nvm.name,
        write_events=state.write_events, skipped_write_checks=state.skipped_writes,
        samples=n, samples_per_s=n / res["wall"] if res["wall"] > 0 else None,
        segments=segments, drift=drift.name, settings=asdict(trainer), trained=list(trainer.writes(model)))


def _row(rec: dict) -> dict:
    life = rec["lifetime_samples"]
    aux = sum(rec["aux_memory_bytes"].values())
    return {"scenario": rec["shift"], "method": rec["method"], "online": round(rec["online_accuracy"], 4),
            "last_half": round(rec["online_accuracy_second_half"], 4), "max_writes": rec["max_writes_per_cell"],
            "density": f"{rec['writes_per_cell_per_sample']:.2e}", "aux_bytes": aux,
            "write_uj": round(rec["write_energy_j"] * 1e6, 4), "lifetime": "never" if life is None else f"{life:.3g}",
            "rate": None if rec["samples_per_s"] is None else round(rec["samples_per_s"])}


def check_targets(records: list[dict], min_ratio: float = 100.0) -> dict:
    """On each drift scenario: an LRT max-norm method's online accuracy against SGD's, and the ratio
    of SGD's max writes per cell to that method's. The method shown is the most accurate one that
    meets both halves of the target, else the most accurate one (so a scenario is met when any LRT
    max-norm method meets it)."""
    out = []
    for scenario in ("analog-drift", "digital-drift"):
        group = {r["method"]: r for r in records if r["shift"] == scenario}
        lrt = [r for m, r in group.items() if m.startswith("lrt-") and m.endswith("-maxnorm")]
        sgd = group.get("sgd")
        if not lrt or sgd is None:
            continue

        def ratio(r: dict, sgd: dict = sgd) -> float:
            return sgd["max_writes_per_cell"] / r["max_writes_per_cell"] if r["max_writes_per_cell"] else math.inf

        def meets(r: dict, sgd: dict = sgd) -> bool:
            return r["online_accuracy"] >= sgd["online_accuracy"] and ratio(r) >= min_ratio

        best = max([r for r in lrt if meets(r)] or lrt, key=lambda r: r["online_accuracy"])
        out.append({"scenario": scenario, "lrt": best["method"], "lrt_online": round(best["online_accuracy"], 4),
                    "sgd_online": round(sgd["online_accuracy"], 4), "lrt_max_writes": best["max_writes_per_cell"],
                    "sgd_max_writes": sgd["max_writes_per_cell"],
                    "write_ratio": None if math.isinf(ratio(best)) else round(ratio(best), 1),
                    "met": meets(best)})
    return {"scenarios": out, "min_ratio": min_ratio, "met": bool(out) and all(s["met"] for s in out)}


def plot_lrt(records: list[dict], path: Path) -> Path:
    """Top: moving-average online accuracy over the stream per scenario (shift switches dotted).
    Bottom: max writes per cell per method (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(r["shift"] for r in records))
    fig, axes = plt.subplots(2, len(scenarios), figsize=(4.6 * len(scenarios), 7.2), dpi=110, squeeze=False)
    for col, scenario in enumerate(scenarios):
        group = [r for r in records if r["shift"] == scenario]
        ax = axes[0][col]
        for r in group:
            pts = r["online_curve"]
            ax.plot([p["sample"] for p in pts], [p["accuracy"] for p in pts], lw=1.3, label=r["method"])
        for seg in group[0]["segments"][1:]:
            ax.axvline(seg["start"], color="grey", lw=0.6, ls=":")
        ax.set_title(f"{scenario} ({group[0]['drift']})" if group[0]["drift"] != "none" else scenario, fontsize=9)
        ax.set_xlabel("stream sample")
        ax.set_ylabel(f"online accuracy (moving avg, {group[0]['window']})")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        bx = axes[1][col]
        names = [r["method"] for r in group]
        vals = [max(r["max_writes_per_cell"], 0.8) for r in group]
        bx.bar(range(len(names)), vals, color=[f"C{i}" for i in range(len(names))])
        bx.set_yscale("log")
        bx.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=7)
        bx.set_ylabel("max writes to any cell")
        bx.grid(alpha=0.3, axis="y")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = ["DISTRIBUTION_SHIFTS", "LRTDemoConfig", "METHODS", "SCENARIOS", "check_targets", "make_trainers",
           "moving_average", "plot_lrt", "run_lrt_demo", "run_online", "scenario_drift", "scenario_stream"]

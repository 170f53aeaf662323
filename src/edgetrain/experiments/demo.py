"""``edgetrain demo``: the foundation end to end on built-in defaults.

Train a small float CNN on ``digits``, deploy it in ``ap_fixed<16,6>``, evaluate it in integer-exact
arithmetic, shift the input with Gaussian noise, and cost the deployment on a Cortex-M4 profile.
Writes a result record (method ``none``: no on-device learning yet), a CSV of the noise sweep and a
PNG of accuracy against noise level.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import load_dataset
from ..model.forward import accuracy
from ..model.scheme import parse_scheme
from ..report import make_record, print_table, write_csv, write_json
from ..shift import parse_shift
from .deploy import deployment_costs, deployment_ledger, mcu_profile, pretrain_and_deploy, shifted_accuracy

SWEEP_SIGMAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


@dataclass
class DemoConfig:
    dataset: str = "digits"
    arch: str = "cnn"
    fmt: str = "fixed16_6"
    shift: str = "noise:0.3"
    device: str = "cortex-m4"
    epochs: int = 30
    seed: int = 0
    data_dir: str | None = None
    download: bool = False
    out: str | None = "runs/demo"
    progress: bool = True


def noise_sweep(dep, ds, seed: int) -> list[dict]:
    """Float and deployed accuracy under Gaussian input noise of each sigma in ``SWEEP_SIGMAS``."""
    rows = []
    for sigma in SWEEP_SIGMAS:
        shift = parse_shift(f"noise:{sigma}")
        g = torch.Generator().manual_seed(seed)
        xs = shift.apply(ds.test.x, g)
        with torch.no_grad():
            f_acc = float((dep.net(xs.float()).argmax(1) == ds.test.y).double().mean())
        rows.append({"sigma": sigma, "float_accuracy": f_acc,
                     "deployed_accuracy": accuracy(dep.model, xs, ds.test.y)})
    return rows


def plot_sweep(rows: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    s = [r["sigma"] for r in rows]
    ax.plot(s, [r["float_accuracy"] for r in rows], "o-", label="float (torch)")
    ax.plot(s, [r["deployed_accuracy"] for r in rows], "s--", label="deployed (integer-exact)")
    ax.set_xlabel("input noise sigma (input units)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def run_demo(cfg: DemoConfig) -> dict:
    """Run the demo; print the table; write files under ``cfg.out``; return the result record."""
    t0 = time.perf_counter()
    parse_scheme(cfg.fmt), mcu_profile(cfg.device)  # refuse bad arguments before any training
    shift = parse_shift(cfg.shift)
    ds = load_dataset(cfg.dataset, data_dir=cfg.data_dir, download=cfg.download, seed=cfg.seed)
    dep = pretrain_and_deploy(ds, cfg.arch, cfg.fmt, cfg.epochs, cfg.seed, cfg.progress)
    clean = accuracy(dep.model, ds.test.x, ds.test.y)
    shifted = None if shift.name == "none" else shifted_accuracy(dep.model, ds.test.x, ds.test.y, shift, cfg.seed)
    cost = deployment_costs(dep.model, cfg.device)
    dev = cost["device"]
    fmt = dep.model.meta["format"]
    fit = "yes" if cost["fit"].ok else str(cost["fit"])
    table = [{"quantity": q, "value": v} for q, v in (
        ("float accuracy (test)", f"{dep.float_accuracy:.4f}"),
        (f"deployed accuracy ({fmt}, integer-exact)", f"{clean:.4f}"),
        (f"deployed accuracy under {shift.name}", "-" if shifted is None else f"{shifted:.4f}"),
        ("model bytes (flash)", f"{cost['flash_bytes']:,}"),
        ("MACs per inference", f"{cost['macs']:,}"),
        (f"inference RAM on {dev.name} (peak activations)", f"{cost['ram_bytes']:,}"),
        (f"fits {dev.name} ({dev.sram_bytes // 1024} KB SRAM)", fit),
        (f"latency per inference on {dev.name} (cost model)", f"{cost['latency_s'] * 1e3:.3f} ms"),
        (f"energy per inference on {dev.name} (cost model)", f"{cost['energy_j'] * 1e6:.2f} uJ"),
    )]
    print_table(table, title=f"edgetrain demo: {cfg.arch} on {ds.name}, seed {cfg.seed}")
    wall = time.perf_counter() - t0
    record = make_record(
        method="none", dataset=ds.name, model=cfg.arch, fmt=fmt, shift=shift.name,
        device=dev.name, seed=cfg.seed,
        accuracy={"clean": clean, "shifted": shifted, "final": clean if shifted is None else shifted,
                  "reference": dep.float_accuracy},
        ledger=deployment_ledger(cost, wall),
        ledger_scope="one inference: method 'none' adapts nothing, so no training cost is incurred",
        deployment={"device_requested": cfg.device, "device_part": dev.part, "inference_ram_bytes": cost["ram_bytes"],
                    "fits": cost["fit"].ok, "fit_report": str(cost["fit"]),
                    "pretrain_seconds": dep.train_seconds, "epochs": cfg.epochs},
        conversion=dep.conversion.rows,
    )
    if cfg.out:
        out = Path(cfg.out)
        rows = noise_sweep(dep, ds, cfg.seed)
        print_table(rows, title="accuracy under input noise (noise sweep)")
        record["noise_sweep"] = rows
        write_csv(out / "noise_sweep.csv", rows)
        plot_sweep(rows, out / "noise_sweep.png",
                   f"{cfg.arch} on {ds.name}: float vs deployed {fmt}")
        write_json(out / "result.json", record)
    return record

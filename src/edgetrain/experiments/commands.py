"""What ``edgetrain pretrain`` and ``edgetrain evaluate`` do, as functions of plain arguments."""

from __future__ import annotations

import time
from pathlib import Path

from ..data import load_dataset
from ..model.forward import accuracy
from ..model.io import load_model, save_model
from ..model.scheme import parse_scheme
from ..report import make_record, print_table, write_json
from ..shift import parse_shift
from .deploy import (
    check_compatible,
    deployment_costs,
    deployment_ledger,
    mcu_profile,
    pretrain_and_deploy,
    shifted_accuracy,
)


def pretrain(dataset: str, arch: str, fmt: str, out: str, epochs: int, seed: int, device: str,
             data_dir: str | None = None, download: bool = False, json_path: str | None = None,
             show_progress: bool = True) -> dict:
    """Train, deploy and save a model; print its summary; return its result record."""
    t0 = time.perf_counter()
    parse_scheme(fmt), mcu_profile(device)  # refuse bad arguments before any training
    ds = load_dataset(dataset, data_dir=data_dir, download=download, seed=seed)
    dep = pretrain_and_deploy(ds, arch, fmt, epochs, seed, show_progress)
    path = save_model(dep.model, out)
    clean = accuracy(dep.model, ds.test.x, ds.test.y)
    cost = deployment_costs(dep.model, device)
    print_table(dep.model.describe(), title=f"deployed {arch} ({dep.model.meta['format']})")
    worst = dep.conversion.worst_out_of_range()
    print_table([{"float accuracy": dep.float_accuracy, "deployed accuracy": clean,
                  "flash bytes": cost["flash_bytes"], "MACs": cost["macs"],
                  "worst out-of-range fraction": worst, "saved to": str(path)}], title="summary")
    rec = make_record(method="none", dataset=ds.name, model=arch, fmt=dep.model.meta["format"], shift="none",
                      device=mcu_profile(device).name, seed=seed,
                      accuracy={"clean": clean, "shifted": None, "final": clean,
                                "reference": dep.float_accuracy},
                      ledger=deployment_ledger(cost, time.perf_counter() - t0), model_path=str(path),
                      conversion=dep.conversion.rows)
    if json_path:
        write_json(json_path, rec)
    return rec


def evaluate(model_path: str, dataset: str | None, shift_spec: str, seed: int, device: str,
             data_dir: str | None = None, download: bool = False, json_path: str | None = None) -> dict:
    """Evaluate a saved model (integer-exact) on the test split it was measured on, optionally
    under a shift; print and return the result record."""
    t0 = time.perf_counter()
    dev = mcu_profile(device)
    shift = parse_shift(shift_spec)
    model = load_model(model_path)
    name = dataset or model.meta.get("dataset")
    if not name:
        raise ValueError(f"{model_path} does not record its dataset; pass --dataset")
    split_seed = int(model.meta.get("split_seed", seed))
    ds = load_dataset(name, data_dir=data_dir, download=download, seed=split_seed)
    check_compatible(model, ds)
    clean = accuracy(model, ds.test.x, ds.test.y)
    shifted = None if shift.name == "none" else shifted_accuracy(model, ds.test.x, ds.test.y, shift, seed)
    cost = deployment_costs(model, device)
    fmt = model.meta.get("format", model.input_fmt.name)
    print_table([{"model": Path(model_path).name, "dataset": ds.name, "format": fmt,
                  "accuracy": clean, f"accuracy ({shift.name})": shifted, "MACs": cost["macs"],
                  "flash bytes": cost["flash_bytes"], f"RAM on {device}": cost["ram_bytes"],
                  "fits": cost["fit"].ok}], title="evaluation (integer-exact)")
    final = shifted if shifted is not None else clean
    rec = make_record(method="none", dataset=ds.name, model=model.meta.get("arch"), fmt=fmt,
                      shift=shift.name, device=dev.name, seed=seed,
                      accuracy={"clean": clean, "shifted": shifted, "final": final,
                                "reference": model.meta.get("float_accuracy")},
                      ledger=deployment_ledger(cost, time.perf_counter() - t0), model_path=str(model_path),
                      split_seed=split_seed)
    if json_path:
        write_json(json_path, rec)
    return rec

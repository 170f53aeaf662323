"""The steps every experiment starts with: pre-train a float network, deploy it, evaluate it.

A deployed model remembers where it came from (dataset, split seed, architecture, float accuracy)
in its metadata, so ``evaluate`` on a saved file uses the same test split it was measured on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from ..cost import Ledger, fits, flash_bytes, inference_macs, inference_plan
from ..cost.energy import energy_j, latency_s
from ..data import Dataset
from ..device import DEVICES, get_device
from ..model import DeployedModel
from ..model.arch import build_float_net
from ..model.convert import ConversionReport, convert
from ..model.forward import accuracy
from ..model.pretrain import float_accuracy, train_float
from ..report import progress

CALIBRATION_SAMPLES = 256


@dataclass
class Deployment:
    """A float network, the deployed model made from it, and how conversion went."""

    net: nn.Sequential
    model: DeployedModel
    conversion: ConversionReport
    float_accuracy: float
    train_seconds: float


def pretrain_and_deploy(
    ds: Dataset, arch: str = "cnn", fmt: str = "fixed16_6", epochs: int = 30, seed: int = 0,
    show_progress: bool = True,
) -> Deployment:
    """Train ``arch`` in float on ``ds.train``, convert it to ``fmt`` with calibration on training
    samples, and return both with the float test accuracy."""
    net = build_float_net(arch, ds.input_shape, ds.n_classes, seed=seed)
    t0 = time.perf_counter()
    with progress(disable=not show_progress) as bar:
        task = bar.add_task(f"pre-train {arch} on {ds.name}", total=epochs)
        train_float(net, ds.train.x, ds.train.y, epochs=epochs, seed=seed,
                    on_epoch=lambda e, loss: bar.update(task, advance=1))
    train_s = time.perf_counter() - t0
    g = torch.Generator().manual_seed(seed)
    calib_idx = torch.randperm(ds.train.x.shape[0], generator=g)[:CALIBRATION_SAMPLES]
    f_acc = float_accuracy(net, ds.test.x, ds.test.y)
    meta = {"arch": arch, "dataset": ds.name, "classes": list(ds.classes),
            "split_seed": seed, "seed": seed, "float_accuracy": f_acc,
            "pretrain_epochs": epochs, "calibration_samples": int(calib_idx.numel())}
    model, report = convert(net, ds.train.x[calib_idx], fmt, meta=meta)
    return Deployment(net, model, report, f_acc, train_s)


def deployment_costs(model, device_name: str) -> dict:
    """MACs, flash, inference RAM and whether it fits ``device_name``, plus per-inference latency
    and energy from the profile."""
    dev = mcu_profile(device_name)
    macs = inference_macs(model)
    flash = flash_bytes(model)
    ram = inference_plan(model).peak_bytes()
    fit = fits(dev, ram_bytes=ram, flash_bytes=flash)
    return {"device": dev, "macs": macs, "flash_bytes": flash, "ram_bytes": ram, "fit": fit,
            "latency_s": latency_s(macs, dev), "energy_j": energy_j(macs, dev)}


def deployment_ledger(cost: dict, wall_s: float) -> dict:
    """Result-record ledger of a deployed model that learns nothing (method ``none``), for one
    inference: one forward pass, its MACs, latency and energy, the flash the model takes; no
    backward work, extra memory or weight writes (counted zeros); no training RAM and no write
    density (null: nothing is trained, so they do not apply)."""
    return Ledger(forward_passes=1, macs_forward=cost["macs"], macs_backward=0, extra_memory_bytes=0,
                  flash_bytes=cost["flash_bytes"], weight_writes=0, max_writes_per_cell=0,
                  energy_j=cost["energy_j"], latency_s=cost["latency_s"], wall_s=wall_s).to_dict()


def mcu_profile(name: str):
    """The MCU profile called ``name`` (or alias); an FPGA or NVM profile cannot run the model."""
    dev = get_device(name)
    if getattr(dev, "kind", None) != "mcu":
        mcus = sorted(n for n, p in DEVICES.items() if getattr(p, "kind", None) == "mcu")
        raise ValueError(f"device {name!r} is a {dev.kind} profile; costing a deployed model needs a "
                         f"microcontroller: one of {mcus}")
    return dev


def check_compatible(model: DeployedModel, ds: Dataset) -> None:
    """Refuse to evaluate a model on data of another shape or class count, naming both."""
    if tuple(ds.input_shape) != tuple(model.input_shape):
        raise ValueError(f"dataset {ds.name} has input shape {ds.input_shape} but the model expects "
                         f"{model.input_shape} (it was trained on {model.meta.get('dataset', '?')})")
    n_out = model.output_shape[0]
    if ds.n_classes != n_out:
        raise ValueError(f"dataset {ds.name} has {ds.n_classes} classes but the model outputs {n_out}")


def shifted_accuracy(model: DeployedModel, x: torch.Tensor, y: torch.Tensor, shift, seed: int) -> float:
    """Integer-exact accuracy on ``shift.apply(x)`` with a generator seeded by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return accuracy(model, shift.apply(x, g), y)

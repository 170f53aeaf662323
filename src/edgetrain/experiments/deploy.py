"""The steps every experiment starts with: pre-train a float network, deploy it, evaluate it.

A deployed model remembers where it came from (dataset, split seed, architecture, float accuracy)
in its metadata, so ``evaluate`` on a saved file uses the same test split it was measured on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from ..data import Dataset
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
            "split_seed": ds.meta.get("split_seed", seed), "seed": seed, "float_accuracy": f_acc,
            "pretrain_epochs": epochs, "calibration_samples": int(calib_idx.numel())}
    model, report = convert(net, ds.train.x[calib_idx], fmt, meta=meta)
    return Deployment(net, model, report, f_acc, train_s)


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

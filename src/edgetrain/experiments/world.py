"""What a trial's method meets: the deployed model, the data it adapts on, the shifted test split.

Tasks (a panel's ``task``):

* ``shift``: the network is pretrained on the clean training split and deployed; the device then
  meets the panel's shift on the training split (fresh draws on every pass) and is tested on the
  shifted test split (drawn once).
* ``transfer``: pretrained on the source classes only (default: the first half), deployed, then it
  adapts to the other classes; tested on their test samples (Deutel et al.'s transfer setting).
* ``scratch``: a freshly initialised network, deployed as it is (activation ranges calibrated on
  training samples), trains on device.

The pretrained, deployed model is a pure function of (dataset, task, source classes, architecture,
format, pretraining epochs, seed), so it is cached in the run directory as an ``.etm`` file and shared
by every method of that seed; a cache file that fails its checksum is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import Dataset, load_dataset
from ..model import DeployedModel
from ..model.arch import build_float_net
from ..model.convert import convert
from ..model.forward import forward_int, quantize_input
from ..model.io import load_model, model_to_bytes, save_model
from ..model.pretrain import float_accuracy, train_float
from ..quant.requant import dequantize
from ..shift import parse_shift
from ..threads import TRIAL_THREADS, torch_threads
from ..train.es.perturb import derive_seed
from ..train.protocol import Batch
from .deploy import CALIBRATION_SAMPLES


@dataclass
class World:
    """A trial's model and data. ``x``/``y``: the clean adaptation split (the shift is drawn as
    samples arrive); ``q_test``: the shifted test split (drawn once) as raw model inputs, ``xs_test``
    the real values they stand for (what a float reference sees: the same clipping and rounding);
    ``clean`` / ``shifted``: the deployed model's accuracy on the test split without and with the
    shift."""

    dataset: Dataset
    model: DeployedModel
    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    xs_test: torch.Tensor
    q_test: torch.Tensor
    shift: object
    clean: float
    shifted: float


def _split_classes(ds: Dataset, source: tuple[int, ...] | None) -> tuple[torch.Tensor, ...]:
    n = len(ds.classes)
    src = tuple(range(n // 2)) if source is None else source
    if not src or any(not 0 <= c < n for c in src) or len(src) >= n:
        raise ValueError(f"source_classes must name some but not all of the {n} classes 0..{n - 1}, got {list(src)}")
    src_t = torch.tensor(src)
    return (torch.isin(ds.train.y, src_t), torch.isin(ds.test.y, src_t))


def _model_key(spec: dict) -> str:
    panel = spec["panel"]
    body = {"dataset": panel["dataset"], "task": panel["task"], "source": panel["source_classes"],
            "arch": spec["arch"], "format": spec["format"], "epochs": spec["pretrain_epochs"], "seed": spec["seed"]}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def deployed_model(spec: dict, ds: Dataset, cache_dir: Path | None) -> DeployedModel:
    """The trial's deployed model, from ``cache_dir`` when it is there and intact, else trained,
    converted and cached."""
    path = None if cache_dir is None else Path(cache_dir) / f"model-{_model_key(spec)}.etm"
    if path is not None and path.is_file():
        try:
            return load_model(path)
        except ValueError as e:  # altered or truncated: rebuilt below (the run never trusts a bad file)
            warnings.warn(f"{path}: {e}; rebuilding it", stacklevel=2)
    with torch_threads(TRIAL_THREADS):  # the same model whether trials run in one process, in workers or on Ray
        return _pretrain_and_convert(spec, ds, path)


def _pretrain_and_convert(spec: dict, ds: Dataset, path: Path | None) -> DeployedModel:
    panel, seed = spec["panel"], spec["seed"]
    net = build_float_net(spec["arch"], ds.input_shape, len(ds.classes), seed=seed)
    x, y = ds.train.x, ds.train.y
    if panel["task"] == "transfer":
        src_train, _ = _split_classes(ds, _tuple(panel["source_classes"]))
        x, y = x[src_train], y[src_train]
    if panel["task"] != "scratch" and spec["pretrain_epochs"] > 0:
        train_float(net, x, y, epochs=spec["pretrain_epochs"], seed=seed)
    g = torch.Generator().manual_seed(seed)
    calib = x[torch.randperm(x.shape[0], generator=g)[:CALIBRATION_SAMPLES]]
    meta = {"arch": spec["arch"], "dataset": ds.name, "classes": list(ds.classes), "split_seed": seed, "seed": seed,
            "task": panel["task"], "float_accuracy": float_accuracy(net, ds.test.x, ds.test.y),
            "pretrain_epochs": spec["pretrain_epochs"]}
    model, _ = convert(net, calib, spec["format"], meta=meta)
    if path is not None:
        save_model(model, path)
    return model


def _tuple(v) -> tuple[int, ...] | None:
    return None if v is None else tuple(v)


def build_world(spec: dict, cache_dir: Path | None = None, data_dir: str | None = None,
                download: bool = False) -> World:
    """Load the data, get the deployed model, and draw the shifted test split for ``spec``."""
    panel, seed = spec["panel"], spec["seed"]
    ds = load_dataset(panel["dataset"], data_dir=data_dir, download=download, seed=seed, ts_pad="edge")
    model = deployed_model(spec, ds, cache_dir)
    x, y, x_test, y_test = ds.train.x, ds.train.y, ds.test.x, ds.test.y
    if panel["task"] == "transfer":
        src_train, src_test = _split_classes(ds, _tuple(panel["source_classes"]))
        x, y, x_test, y_test = x[~src_train], y[~src_train], x_test[~src_test], y_test[~src_test]
    online = spec["training"]["protocol"] == "online"
    shift = parse_shift("none" if online else spec["shift"])
    q_clean = quantize_input(model, x_test)
    q_test = quantize_input(model, shift.apply(x_test, torch.Generator().manual_seed(derive_seed(seed, 7))))
    xs_test = dequantize(q_test, model.input_fmt).float()
    return World(ds, model, x, y, x_test, y_test, xs_test, q_test, shift, accuracy_q(model, q_clean, y_test),
                 accuracy_q(model, q_test, y_test))


def accuracy_q(model: DeployedModel, q: torch.Tensor, y: torch.Tensor) -> float:
    """Integer-exact accuracy on raw inputs (accumulator wrap emulated, as on the device)."""
    return float((forward_int(model, q, overflow="wrap").argmax(dim=1) == y).double().mean())


def arrivals(x: torch.Tensor, y: torch.Tensor, shift, seed: int, size: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """Endless stream of ``size``-sample float batches: each pass over ``(x, y)`` is reshuffled and
    the shift drawn afresh, both from seeds derived from ``seed`` (the tail of a pass that does not
    fill a batch is dropped)."""
    n = x.shape[0]
    if n < size:
        raise ValueError(f"the adaptation split has {n} samples, fewer than one batch of {size}")
    for k in range(1 << 30):
        g = torch.Generator().manual_seed(derive_seed(seed, k, 11))
        order = torch.randperm(n, generator=g)
        xs, ys = shift.apply(x[order], g), y[order]
        for start in range(0, n - size + 1, size):
            yield xs[start:start + size], ys[start:start + size]


def quantized(model: DeployedModel, stream: Iterator[tuple[torch.Tensor, ...]], real: bool = False
              ) -> Iterator[Batch]:
    """``stream`` as raw-integer batches for the deployed model (``real``: the real values those raw
    inputs stand for, for a float reference that must see what the device sees)."""
    for xb, yb in stream:
        q = quantize_input(model, xb)
        yield Batch(dequantize(q, model.input_fmt).float() if real else q, yb)


def model_digest(model: DeployedModel) -> str:
    """SHA-256 of the model file's bytes: which deployed model a result was measured on."""
    return hashlib.sha256(model_to_bytes(model)).hexdigest()


__all__ = ["World", "accuracy_q", "arrivals", "build_world", "deployed_model", "model_digest", "quantized"]

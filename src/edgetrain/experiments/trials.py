"""A config expanded into trials: one per panel x shift x architecture x method x seed.

A trial is plain JSON-able data with every setting resolved (defaults filled in), so it can be sent
to a worker process or a Ray task, and its id (a hash of that data) names it across runs: a rerun
skips the ids it already has results for.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from .config import RunConfig


@dataclass(frozen=True)
class Trial:
    """One question: this method, on this model, data, shift and seed."""

    id: str
    name: str
    spec: dict[str, Any]

    @property
    def method(self) -> str:
        return self.spec["method"]["label"]


def trial_id(spec: dict[str, Any]) -> str:
    """The first 16 hex digits of the SHA-256 of ``spec`` as canonical JSON."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def expand(cfg: RunConfig) -> list[Trial]:
    """Every trial of ``cfg``, in the order they are run: panel, shift, architecture, seed, then method
    (so one seed's methods share a pretrained model and finish together)."""
    out = []
    for panel in cfg.panels:
        training = dict(cfg.training)
        if panel.epochs is not None:
            training["epochs"] = panel.epochs
        params = panel.params or training["params"]
        training["params"] = params
        for shift in panel.shifts:
            for arch in cfg.model["archs"]:
                for seed in cfg.seeds:
                    for m in cfg.methods:
                        spec = {
                            "panel": {"name": panel.name, "dataset": panel.dataset, "task": panel.task,
                                      "source_classes": None if panel.source_classes is None
                                      else list(panel.source_classes)},
                            "arch": arch, "format": cfg.model["format"],
                            "pretrain_epochs": cfg.model["pretrain_epochs"], "shift": shift, "seed": seed,
                            "method": {"label": m.label, "kind": m.kind, "settings": dict(m.settings)},
                            "training": training, "devices": dict(cfg.devices),
                        }
                        name = f"{panel.name} / {arch} / {shift} / {m.label} / seed {seed}"
                        out.append(Trial(trial_id(spec), name, spec))
    return out

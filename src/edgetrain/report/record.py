"""The result record shared by every experiment (DESIGN.md, "The result record"), written atomically.

One record per trial: what was asked (method, dataset, model, format, shift, device, seed), what
came back (accuracy) and what it cost (ledger), plus the versions and commit that produced it.
"""

from __future__ import annotations

import json
import math
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..files import atomic_write

ACCURACY_KEYS = ("clean", "shifted", "final", "reference")


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout edgetrain runs from (suffixed ``-dirty`` when the tree has
    uncommitted changes), or None outside a git checkout."""
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=40"], cwd=here,
                             capture_output=True, text=True, timeout=5, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    """Versions of what produced a result: edgetrain, the git commit, torch, numpy and Python, and the
    torch thread count (float training depends on it: ``edgetrain.threads``)."""
    import platform

    import numpy

    return {"edgetrain": __version__, "torch": torch.__version__, "git": git_commit(), "numpy": numpy.__version__,
            "python": platform.python_version(), "torch_threads": torch.get_num_threads()}


def make_record(
    *, method: str, dataset: str, model: str, fmt: str, shift: str, device: str, seed: int,
    accuracy: dict[str, float | None], ledger: dict[str, Any], **extra: Any,
) -> dict[str, Any]:
    """A result record with every required key; unknown accuracy keys are refused, missing ones are
    null (never a made-up number)."""
    unknown = set(accuracy) - set(ACCURACY_KEYS)
    if unknown:
        raise ValueError(f"unknown accuracy keys {sorted(unknown)}; expected {ACCURACY_KEYS}")
    rec = {"method": method, "dataset": dataset, "model": model, "format": fmt, "shift": shift,
           "device": device, "seed": seed,
           "accuracy": {k: accuracy.get(k) for k in ACCURACY_KEYS},
           "ledger": dict(ledger), "versions": versions()}
    clash = set(extra) & set(rec)
    if clash:
        raise ValueError(f"extra record fields {sorted(clash)} would overwrite required keys")
    rec.update(extra)
    return rec


def _clean(obj: Any) -> Any:
    """JSON-safe copy: tuples to lists, non-finite floats to null (JSON has no inf/NaN)."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, torch.Tensor):
        return _clean(obj.tolist())
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically (temp file + rename)."""
    return atomic_write(path, json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n")

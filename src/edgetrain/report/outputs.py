"""The files every demo leaves in its output directory, written the same way for every experiment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .console import write_csv
from .record import write_json


def write_experiment(out: str | Path, name: str, rows: list[dict], records: list[dict], targets: dict,
                     config: dict[str, Any]) -> Path:
    """Write ``<name>.csv`` (the table rows), ``<name>.json`` (the result records), ``targets.json``
    and ``config.json`` under ``out``; returns the directory (plots are the caller's)."""
    out = Path(out)
    write_csv(out / f"{name}.csv", rows)
    write_json(out / f"{name}.json", records)
    write_json(out / "targets.json", targets)
    write_json(out / "config.json", config)
    return out

"""Terminal output: tables and progress bars (rich), and CSV for the same rows."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ..files import atomic_write

console = Console(stderr=False)


def progress(disable: bool = False) -> Progress:
    """A progress display with bar, count, elapsed and ETA; use as a context manager."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=disable,
                    transient=False)


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def print_table(rows: Sequence[dict], columns: Sequence[str] | None = None, title: str | None = None) -> None:
    """Print dict rows as a table (columns default to the first row's keys)."""
    if not rows:
        console.print(f"{title or 'table'}: (no rows)")
        return
    columns = list(columns or rows[0].keys())
    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="right" if isinstance(rows[0].get(c), (int, float)) else "left")
    for r in rows:
        table.add_row(*(_fmt(r.get(c)) for c in columns))
    console.print(table)


def write_csv(path: str | Path, rows: Iterable[dict], columns: Sequence[str] | None = None) -> Path:
    """Write dict rows as CSV, atomically."""
    rows = list(rows)
    columns = list(columns or (rows[0].keys() if rows else []))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return atomic_write(path, buf.getvalue())

"""The report for one run directory (``edgetrain report DIR``): tables, plots, Markdown, HTML and CSV.

A run directory holds ``results.jsonl`` (one JSON record per finished trial, appended as trials finish, so a
crash can leave a truncated last line: such lines are skipped, counted and mentioned) and optionally
``run.json`` (name, description, config file, wall time). :func:`write_report` writes into the same directory:

- ``report.md`` and ``report.html`` (the same content; the HTML page is standalone apart from the PNGs next to
  it): the run's name and description, how many trials were ok / did not fit / failed (each failure listed),
  the wall time, then for every group of trials sharing (panel, model, shift), in first-appearance order:

  - a table with one row per method, averaged over seeds: final accuracy (mean ± sample std over seeds),
    the shifted accuracy before any adaptation, the recovered fraction, the extra memory and training RAM,
    the weight writes (total and the most on one cell), energy and MACs per training sample on the budget
    device, wall time, and whether the method fits the budget device;
  - ``curves_<k>.png``: accuracy against samples seen for every method, the no-adaptation accuracy dotted;
  - ``tradeoffs_<k>.png``: recovered fraction (or final accuracy when the group has no reference) against
    extra memory, weight writes and energy per sample, one point per method, the Pareto front as a step line,
    and the front's members listed under the figure;
  - a fits table: methods against every device the records were checked against, with the training RAM.

- ``summary.csv``: the table rows of all groups, with the group's columns.

**Recovered fraction** of a method is ``(final - shifted) / (ref_final - shifted)``, from the means over its
seeds, where ``ref_final`` is the mean final accuracy of the group's backprop method (the first method of kind
``"backprop"``): 0 means no better than not adapting, 1 means as good as backprop. It is ``None`` when the group
has no backprop method or backprop did not beat the shifted accuracy (the ratio would mean nothing).

**Pareto front**: a method is on the front of a panel when no other method costs at most as much and
recovers at least as much, with one of the two strictly; identical points are all kept. The front says which
methods are worth considering at some budget; everything off it is beaten on both axes by something on it.

For the online protocol the "final" accuracy is the online (prequential) accuracy when the record gives one as
``accuracy["online"]``, else ``accuracy["final"]``; the curves use ``online_curve``.
"""

from __future__ import annotations

import html
import io
import json
import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..files import atomic_write
from .console import write_csv

GROUP_KEYS = ("panel", "model", "shift")
"""A group is the trials sharing these fields: the same problem, so their methods can be compared."""

ROW_COLUMNS = ("panel", "model", "shift", "dataset", "format", "device", "protocol", "method", "kind", "status",
               "seeds", "final_mean", "final_std", "shifted_mean", "recovered", "extra_memory_bytes",
               "train_ram_bytes", "weight_writes", "max_writes_per_cell", "energy_uj_per_sample",
               "macs_per_sample", "wall_s", "fits")
"""The keys of every :func:`summarize` row, in the order of ``summary.csv``."""

_INT_COLUMNS = ("extra_memory_bytes", "train_ram_bytes", "weight_writes", "max_writes_per_cell")

_Block = tuple  # ("h1"|"h2"|"h3"|"p"|"list"|"table"|"img", ...): the report's content before rendering


# --------------------------------------------------------------------------------------------------- loading


def load_results(run_dir: str | Path) -> tuple[list[dict], int]:
    """Read ``run_dir/results.jsonl``: the records (JSON objects, in file order, the last per trial id) and how
    many non-blank lines
    were skipped because they did not parse as a JSON object (a crash can truncate the last line).

    Raises ``FileNotFoundError`` when the file is missing and ``ValueError`` when it holds no valid record."""
    run_dir = Path(run_dir)
    path = run_dir / "results.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no results.jsonl in run directory {run_dir} (is it a run directory?)")
    records: list[dict] = []
    skipped = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if isinstance(rec, dict):
                records.append(rec)
            else:
                skipped += 1
    # one record per trial: a rerun appends a new record for a trial that failed before, and the last one wins
    by_id: dict[object, dict] = {}
    for i, rec in enumerate(records):
        by_id[rec.get("trial", ("line", i))] = rec
    records = list(by_id.values())
    if not records:
        raise ValueError(f"{path} holds no valid result record ({skipped} unparseable line(s))")
    return records, skipped


def _load_run_info(run_dir: Path) -> tuple[dict, str | None]:
    """``run.json`` as a dict ({} when absent) and a note when it exists but could not be read."""
    path = run_dir / "run.json"
    if not path.is_file():
        return {}, None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return {}, f"run.json could not be read ({e}); name and description are missing."
    if not isinstance(info, dict):
        return {}, "run.json is not a JSON object; name and description are missing."
    return info, None


# ------------------------------------------------------------------------------------------------- numbers


def _d(rec: dict | None, key: str) -> dict:
    """``rec[key]`` when it is a dict, else {} (any key of a record may be null or absent)."""
    v = rec.get(key) if isinstance(rec, dict) else None
    return v if isinstance(v, dict) else {}


def _num(v: Any) -> float | None:
    """A finite number as float, else None (bools are not numbers here)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _mean(values: Sequence[Any]) -> float | None:
    xs = [x for x in (_num(v) for v in values) if x is not None]
    return statistics.fmean(xs) if xs else None


def _std(values: Sequence[Any]) -> float | None:
    """Sample standard deviation (n - 1); None with fewer than two values."""
    xs = [x for x in (_num(v) for v in values) if x is not None]
    return statistics.stdev(xs) if len(xs) > 1 else None


def _as_int(v: float | None) -> int | float | None:
    """Byte and write counts stay ints when the mean over seeds is a whole number."""
    return int(v) if v is not None and float(v).is_integer() else v


def _final_accuracy(rec: dict) -> float | None:
    acc = _d(rec, "accuracy")
    if rec.get("protocol") == "online" and _num(acc.get("online")) is not None:
        return _num(acc.get("online"))
    return _num(acc.get("final"))


def _wall(rec: dict) -> float | None:
    w = _num(rec.get("wall_s"))
    return w if w is not None else _num(_d(rec, "ledger").get("wall_s"))


def _budget_fits(rec: dict) -> bool | None:
    """Whether the trial fits its budget device: its ``devices`` entry, else its status."""
    for d in rec.get("devices") or []:
        if isinstance(d, dict) and d.get("device") == rec.get("device"):
            return d.get("fits") if isinstance(d.get("fits"), bool) else None  # None: not costed there
    if rec.get("status") == "does-not-fit":
        return False
    if rec.get("status") == "ok":
        return True
    return None


def _seed_key(rec: dict) -> tuple:
    s = rec.get("seed")
    return (0, s) if isinstance(s, (int, float)) and not isinstance(s, bool) else (1, 0)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated when cost (first) is minimised and value (second) maximised.

    A point is dominated when another has cost <= and value >= with at least one strict; identical points are
    all kept. The result is ordered by cost ascending (then by index), which is the order of the step line."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front: list[int] = []
    best: tuple[float, float] | None = None  # the front point with the highest value so far
    for i in order:
        c, v = points[i]
        if best is None or v > best[1] or (c, v) == best:
            front.append(i)
            best = (c, v)
    return front


# -------------------------------------------------------------------------------------------------- tables


def _group_key(rec: dict) -> tuple:
    return tuple(rec.get(k) for k in GROUP_KEYS)


def _groups(records: list[dict]) -> dict[tuple, dict[str, list[dict]]]:
    """Non-error records by group, then by method, both in first-appearance order."""
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in records:
        if r.get("status") == "error":
            continue
        groups.setdefault(_group_key(r), {}).setdefault(str(r.get("method")), []).append(r)
    return groups


def _method_row(group: tuple, method: str, recs: list[dict]) -> dict:
    first = min(recs, key=_seed_key)
    statuses = {r.get("status") for r in recs}
    finals = [_final_accuracy(r) for r in recs]
    ledgers = [_d(r, "ledger") for r in recs]
    per_sample = [_d(r, "per_sample") for r in recs]
    energy = _mean([p.get("energy_j") for p in per_sample])
    fits = [_budget_fits(r) for r in recs]
    known = [f for f in fits if f is not None]
    row: dict[str, Any] = dict(zip(GROUP_KEYS, group, strict=True))
    row.update({
        "dataset": first.get("dataset"), "format": first.get("format"), "device": first.get("device"),
        "protocol": first.get("protocol"), "method": method, "kind": first.get("kind"),
        "status": statuses.pop() if len(statuses) == 1 else "mixed",
        "seeds": len(recs),
        "final_mean": _mean(finals), "final_std": _std(finals),
        "shifted_mean": _mean([_d(r, "accuracy").get("shifted") for r in recs]),
        "recovered": None,
    })
    for k in _INT_COLUMNS:
        row[k] = _as_int(_mean([lg.get(k) for lg in ledgers]))
    row.update({
        "energy_uj_per_sample": energy * 1e6 if energy is not None else None,
        "macs_per_sample": _mean([p.get("macs") for p in per_sample]),
        "wall_s": _mean([_wall(r) for r in recs]),
        "fits": all(known) if known else None,
    })
    return row


def _recovered(final: float | None, shifted: float | None, ref_final: float | None) -> float | None:
    if final is None or shifted is None or ref_final is None or ref_final <= shifted:
        return None
    return (final - shifted) / (ref_final - shifted)


def summarize(records: list[dict]) -> list[dict]:
    """One row per (group, method), groups and methods in first-appearance order, keys :data:`ROW_COLUMNS`.

    Numbers are means over the method's non-error records (seeds); ``final_std`` is the sample std over seeds
    (None for one seed); ``recovered`` is the recovered fraction against the group's backprop method (see the
    module docstring); ``energy_uj_per_sample`` is in microjoules; ``fits`` is True when every seed fits its
    budget device. Missing values are None; error records are left out."""
    rows: list[dict] = []
    for group, methods in _groups(records).items():
        g_rows = [_method_row(group, m, recs) for m, recs in methods.items()]
        ref = next((r for r in g_rows if r["kind"] == "backprop" and r["final_mean"] is not None), None)
        for r in g_rows:
            r["recovered"] = _recovered(r["final_mean"], r["shifted_mean"], ref["final_mean"] if ref else None)
        rows.extend(g_rows)
    return rows


def _fmt_acc(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.3f} ± {std:.3f}" if std is not None else f"{mean:.3f}"


def _fmt_int(v: Any) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _fmt_g(v: Any, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def _fmt_fits(v: bool | None) -> str:
    return "-" if v is None else ("yes" if v else "no")


_TABLE: list[tuple[str, Callable[[dict], str]]] = [
    ("method", lambda r: str(r["method"])),
    ("kind", lambda r: str(r["kind"] or "-")),
    ("seeds", lambda r: str(r["seeds"])),
    ("final acc", lambda r: _fmt_acc(r["final_mean"], r["final_std"])),
    ("shifted acc", lambda r: _fmt_acc(r["shifted_mean"], None)),
    ("recovered", lambda r: _fmt_g(r["recovered"], ".2f")),
    ("extra mem (B)", lambda r: _fmt_int(r["extra_memory_bytes"])),
    ("train RAM (B)", lambda r: _fmt_int(r["train_ram_bytes"])),
    ("weight writes", lambda r: _fmt_int(r["weight_writes"])),
    ("max writes/cell", lambda r: _fmt_int(r["max_writes_per_cell"])),
    ("energy/sample (µJ)", lambda r: _fmt_g(r["energy_uj_per_sample"])),
    ("MACs/sample", lambda r: _fmt_int(r["macs_per_sample"])),
    ("wall (s)", lambda r: _fmt_g(r["wall_s"], ".1f")),
    ("fits", lambda r: _fmt_fits(r["fits"])),
]


def _fits_table(methods: dict[str, list[dict]]) -> tuple[list[str], list[list[str]]]:
    """Methods against every device in the group's ``devices`` lists (first seed's record per method)."""
    devices: list[str] = []
    for recs in methods.values():
        for r in recs:
            for d in r.get("devices") or []:
                if isinstance(d, dict) and d.get("device") is not None and str(d["device"]) not in devices:
                    devices.append(str(d["device"]))
    rows = []
    for method, recs in methods.items():
        first = min(recs, key=_seed_key)
        by_dev = {str(d.get("device")): d for d in first.get("devices") or [] if isinstance(d, dict)}
        cells = [method]
        for dev in devices:
            d = by_dev.get(dev)
            if d is None or not isinstance(d.get("fits"), bool):
                cells.append("-")
                continue
            if _num(d.get("fpga_fraction")) is not None:  # an FPGA: the training unit's share of the part
                need = f" ({100 * _num(d['fpga_fraction']):.2g}% of the part)"
            elif _num(d.get("ram_bytes")) is not None:
                need = f" ({_fmt_int(_num(d.get('ram_bytes')))} B)"
            else:
                need = ""
            cells.append(("fits" if d["fits"] else "does not fit") + need)
        rows.append(cells)
    return ["method", *devices], rows


# --------------------------------------------------------------------------------------------------- plots


def _png(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write(path, buf.getvalue())


def _method_curve(recs: list[dict]) -> tuple[list[float], list[float]] | None:
    """Accuracy over samples seen: the mean over seeds when every seed has the same x grid, else the first
    seed's curve; None when no seed has a curve."""
    curves = []
    for r in sorted(recs, key=_seed_key):
        online = r.get("protocol") == "online" and r.get("online_curve")
        pts_in = r.get("online_curve") if online else r.get("curve")
        xkey = "sample" if online else "samples"
        pts = [(_num(p.get(xkey)), _num(p.get("accuracy"))) for p in pts_in or [] if isinstance(p, dict)]
        pts = [(x, y) for x, y in pts if x is not None and y is not None]
        if pts:
            curves.append(pts)
    if not curves:
        return None
    xs = [x for x, _ in curves[0]]
    if all([x for x, _ in c] == xs for c in curves):
        return xs, [statistics.fmean(ys) for ys in zip(*([y for _, y in c] for c in curves), strict=True)]
    return xs, [y for _, y in curves[0]]


def plot_curves(methods: dict[str, list[dict]], shifted: float | None, title: str, path: Path) -> Path | None:
    """Accuracy against samples seen for every method of one group; None (and no file) when no method has a
    curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = {m: c for m, recs in methods.items() if (c := _method_curve(recs)) is not None}
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    kinds = {m: recs[0].get("kind") for m, recs in methods.items()}
    for m, (xs, ys) in lines.items():
        style = "k--" if kinds.get(m) == "backprop" else "-"
        ax.plot(xs, ys, style, label=m, lw=1.4, marker="." if len(xs) < 30 else None)
    if shifted is not None:
        ax.axhline(shifted, color="grey", lw=0.9, ls=":", label="no adaptation")
    ax.set_xlabel("training samples seen")
    ax.set_ylabel("accuracy, shifted test data")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _png(fig, path)


_PANELS = (("extra_memory_bytes", "extra memory (B)", False, "memory"),
           ("weight_writes", "weight writes", True, "weight writes"),
           ("energy_uj_per_sample", "energy per training sample (µJ)", True, "energy"))


def tradeoff_panels(rows: list[dict]) -> tuple[str, str, list[dict]]:
    """The data of the trade-off figure of one group: the y key (``recovered``, or ``final_mean`` when no row
    has a recovered fraction), its axis label, and per panel the plotted methods, x and y values, the Pareto
    front (method names, by cost) and the methods left out (no value)."""
    use_rec = any(r["recovered"] is not None for r in rows)
    ykey, ylabel = ("recovered", "recovered fraction (vs backprop)") if use_rec else \
        ("final_mean", "final accuracy (no backprop reference)")
    panels = []
    for xkey, xlabel, log, short in _PANELS:
        pts = [(r["method"], _num(r[xkey]), _num(r[ykey])) for r in rows]
        kept = [(m, x, y) for m, x, y in pts if x is not None and y is not None]
        left_out = [m for m, x, y in pts if x is None or y is None]
        front = [kept[i][0] for i in pareto_front([(x, y) for _, x, y in kept])]
        panels.append({"x": xkey, "xlabel": xlabel, "log": log, "name": short, "points": kept,
                       "front": front, "left_out": left_out})
    return ykey, ylabel, panels


def plot_tradeoffs(rows: list[dict], title: str, path: Path) -> Path | None:
    """Three panels (value against extra memory, weight writes and energy per sample), one labelled point per
    method and the Pareto front as a step line; None (and no file) when no panel has a point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, ylabel, panels = tradeoff_panels(rows)
    if not any(p["points"] for p in panels):
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.0), dpi=110)
    for ax, p in zip(axes, panels, strict=True):
        pts = p["points"]
        floor = None
        if p["log"] and pts:
            positive = [x for _, x, _ in pts if x > 0]
            floor = min(positive) / 10 if positive else 1.0
        xs = {m: (x if floor is None or x > 0 else floor) for m, x, _ in pts}
        for m, x, y in pts:
            ax.scatter([xs[m]], [y], s=22, zorder=3)
            label = f"{m} (0)" if xs[m] != x else m
            ax.annotate(label, (xs[m], y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        front = {m: (xs[m], y) for m, _x, y in pts if m in p["front"]}
        if front:
            fx, fy = zip(*(front[m] for m in p["front"]), strict=True)
            ax.step(fx, fy, where="post", color="tab:red", lw=1.0, alpha=0.7, label="Pareto front")
            ax.legend(fontsize=7, loc="lower right")
        if p["log"] and pts:
            ax.set_xscale("log")
            if any(x <= 0 for _, x, _ in pts):
                ax.axvline(floor, color="grey", lw=0.6, ls=":")
                ax.annotate("zero, plotted here", (floor, 0.98), xycoords=("data", "axes fraction"), fontsize=6,
                            rotation=90, va="top", xytext=(2, 0), textcoords="offset points")
        ax.set_xlabel(p["xlabel"] + (" (log)" if p["log"] else ""))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _png(fig, path)


# -------------------------------------------------------------------------------------------------- report


def _group_title(group: tuple) -> str:
    return ", ".join(f"{k} {v}" for k, v in zip(GROUP_KEYS, group, strict=True) if v is not None) or "(ungrouped)"


def _build(run_dir: Path, records: list[dict], skipped: int, rows: list[dict]) -> tuple[list[_Block], list[Path]]:
    """The report as blocks (rendered to Markdown and HTML alike) and the plots written on the way."""
    info, info_note = _load_run_info(run_dir)
    blocks: list[_Block] = [("h1", str(info.get("name") or run_dir.name))]
    if info.get("description"):
        blocks.append(("p", str(info["description"])))
    if info_note:
        blocks.append(("p", info_note))
    counts = {s: sum(r.get("status") == s for r in records) for s in ("ok", "does-not-fit", "error")}
    other = len(records) - sum(counts.values())
    summary = (f"{len(records)} trials: {counts['ok']} ok, {counts['does-not-fit']} do not fit, "
               f"{counts['error']} failed" + (f", {other} with an unknown status" if other else "") + ".")
    wall = _num(info.get("wall_s"))
    if wall is not None:
        summary += f" Wall time {wall:,.1f} s."
    else:
        total = sum(w for r in records if (w := _wall(r)) is not None)
        summary += f" Wall time of the run unknown; the trials took {total:,.1f} s in all."
    if info.get("config_file"):
        summary += f" Config: {info['config_file']}" + (" (quick)." if info.get("quick") else ".")
    blocks.append(("p", summary))
    if skipped:
        blocks.append(("p", f"{skipped} line(s) of results.jsonl did not parse and were skipped "
                            "(a truncated last line is what a crash mid-write leaves)."))
    errors = [r for r in records if r.get("status") == "error"]
    if errors:
        blocks.append(("h2", "Failed trials"))
        blocks.append(("table", ["method", "shift", "seed", "error"],
                       [["-" if r.get(k) is None else str(r[k]) for k in ("method", "shift", "seed", "error")]
                        for r in errors]))

    plots: list[Path] = []
    groups = _groups(records)
    for k, (group, methods) in enumerate(groups.items(), start=1):
        title = _group_title(group)
        g_rows = [r for r in rows if tuple(r[g] for g in GROUP_KEYS) == group]
        blocks.append(("h2", f"{k}. {title}"))
        protocols = {r["protocol"] for r in g_rows if r["protocol"]}
        if "online" in protocols:
            blocks.append(("p", "Online protocol: final accuracy is the online accuracy."))
        devices = sorted({str(r["device"]) for r in g_rows if r["device"]})
        header = [name if name != "fits" else f"fits {'/'.join(devices) or 'budget device'}" for name, _ in _TABLE]
        blocks.append(("table", header, [[f(r) for _, f in _TABLE] for r in g_rows]))
        ref = next((r["method"] for r in g_rows if r["kind"] == "backprop" and r["final_mean"] is not None), None)
        blocks.append(("p", f"Recovered fraction against {ref}." if ref else
                            "No backprop method in this group: no recovered fraction."))

        shifted = _mean([_d(r, "accuracy").get("shifted") for recs in methods.values() for r in recs
                         if r.get("status") == "ok"])
        curves = plot_curves(methods, shifted, title, run_dir / f"curves_{k}.png")
        if curves:
            plots.append(curves)
            blocks.append(("img", curves.name, f"accuracy over training, {title}"))
        else:
            blocks.append(("p", "No accuracy curves recorded."))

        _, ylabel, panels = tradeoff_panels(g_rows)
        trade = plot_tradeoffs(g_rows, title, run_dir / f"tradeoffs_{k}.png")
        if trade:
            plots.append(trade)
            blocks.append(("img", trade.name, f"trade-offs, {title}"))
        items = []
        for p in panels:
            line = f"Pareto front, {ylabel} vs {p['name']}: " + (", ".join(p["front"]) or "(no points)")
            if p["left_out"]:
                line += f"; left out (no value): {', '.join(p['left_out'])}"
            items.append(line)
        blocks.append(("list", items))

        blocks.append(("h3", "Fits"))
        blocks.append(("table", *_fits_table(methods)))
    return blocks, plots


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[_Block]) -> str:
    """The blocks as Markdown (GitHub tables)."""
    out: list[str] = []
    for b in blocks:
        if b[0] in ("h1", "h2", "h3"):
            out.append("#" * int(b[0][1]) + " " + b[1])
        elif b[0] == "p":
            out.append(b[1])
        elif b[0] == "list":
            out.append("\n".join(f"- {item}" for item in b[1]))
        elif b[0] == "img":
            out.append(f"![{b[2]}]({b[1]})")
        elif b[0] == "table":
            header, rows = b[1], b[2]
            lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |",
                     "|" + "|".join("---" for _ in header) + "|"]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


_CSS = ("body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
        "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}")


def render_html(blocks: list[_Block]) -> str:
    """The blocks as one standalone HTML page, every string escaped."""
    e = html.escape
    title = next((b[1] for b in blocks if b[0] == "h1"), "report")
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
           f"<style>{_CSS}</style></head><body>"]
    for b in blocks:
        if b[0] in ("h1", "h2", "h3"):
            out.append(f"<{b[0]}>{e(b[1])}</{b[0]}>")
        elif b[0] == "p":
            out.append(f"<p>{e(b[1])}</p>")
        elif b[0] == "list":
            out.append("<ul>" + "".join(f"<li>{e(item)}</li>" for item in b[1]) + "</ul>")
        elif b[0] == "img":
            out.append(f'<p><img src="{e(b[1])}" alt="{e(b[2])}"></p>')
        elif b[0] == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in b[1])
            body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in b[2])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(run_dir: str | Path) -> dict:
    """Write ``report.md``, ``report.html``, ``summary.csv`` and the group plots into ``run_dir`` (atomically,
    so a report being rewritten is never seen half-written).

    Returns ``{"markdown": Path, "html": Path, "plots": [Path, ...], "rows": summarize(records),
    "skipped_lines": int}``. Raises as :func:`load_results` does."""
    run_dir = Path(run_dir)
    records, skipped = load_results(run_dir)
    rows = summarize(records)
    blocks, plots = _build(run_dir, records, skipped, rows)
    md = atomic_write(run_dir / "report.md", render_markdown(blocks))
    page = atomic_write(run_dir / "report.html", render_html(blocks))
    write_csv(run_dir / "summary.csv", rows, ROW_COLUMNS)
    return {"markdown": md, "html": page, "plots": plots, "rows": rows, "skipped_lines": skipped}

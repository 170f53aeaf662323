"""The run report (``edgetrain report DIR``): loading, the table numbers, the Pareto front and the written files,
on synthetic run directories whose numbers are worked out by hand."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgetrain.report.run_report import _method_curve, load_results, pareto_front, summarize, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GROUP = {"panel": "digits noise", "dataset": "digits", "model": "cnn", "format": "uint8", "shift": "noise:0.3",
         "device": "nrf52840"}
ESCAPED = "lowrank<r4>"  # a method name that must be escaped in HTML

# method, kind, final (seed 0, seed 1), extra memory B, train RAM B, weight writes, energy J per sample
METHODS = [
    ("none", "none", (0.60, 0.62), 0, 10_000, 0, 0.0),
    ("backprop", "backprop", (0.90, 0.94), 50_000, 60_000, 2_000_000, 4e-4),
    ("es-antithetic", "es", (0.80, 0.84), 1_000, 11_000, 10_000, 2e-4),
    ("fqt", "fqt", (0.86, 0.88), 20_000, 30_000, 500_000, 1e-4),
    (ESCAPED, "lowrank", (0.84, 0.86), 8_000, 18_000, 40_000, 1.5e-4),
]
SHIFTED = (0.60, 0.62)  # the no-adaptation accuracy of seed 0 and seed 1


def _devices(ram: int, fits_budget: bool = True) -> list[dict]:
    return [{"device": "nrf52840", "core": "cortex-m4", "fits": fits_budget, "ram_bytes": ram,
             "sram_bytes": 262_144, "why": None if fits_budget else f"needs {ram:,} B of SRAM, has 262,144",
             "energy_per_sample_j": 1e-4},
            {"device": "stm32h7", "core": "cortex-m7", "fits": True, "ram_bytes": ram, "sram_bytes": 1_048_576,
             "why": None, "energy_per_sample_j": 5e-5}]


def _record(method: str, kind: str, seed: int, final: float, extra: int, ram: int, writes: int, energy: float,
            **over) -> dict:
    grid = [0, 100, 200] if method != "fqt" or seed == 0 else [0, 150, 300]  # fqt's seeds disagree on the grid
    rec = {"trial": f"{method}-{seed}", "status": "ok", "error": None, "method": method, "kind": kind, **GROUP,
           "seed": seed, "protocol": "offline",
           "accuracy": {"clean": 0.97, "shifted": SHIFTED[seed], "final": final, "reference": None},
           "ledger": {"forward_passes": 1000, "macs": 10**6, "extra_memory_bytes": extra, "train_ram_bytes": ram,
                      "flash_bytes": 40_000, "weight_writes": writes, "max_writes_per_cell": writes // 100,
                      "mean_write_density": 0.5, "energy_j": energy * 300, "latency_s": 1.0, "wall_s": 2.0},
           "per_sample": {"macs": 5000.0 + seed, "energy_j": energy, "latency_s": 0.01},
           "devices": _devices(ram),
           "curve": [{"samples": x, "forward_passes": x * 2, "accuracy": SHIFTED[seed] + (final - SHIFTED[seed])
                      * i / 2} for i, x in enumerate(grid)],
           "wall_s": 10.0 + seed}
    rec.update(over)
    return rec


def _records() -> list[dict]:
    recs = [_record(m, k, seed, finals[seed], extra, ram, writes, energy)
            for seed in (0, 1) for m, k, finals, extra, ram, writes, energy in METHODS]
    recs.append({"trial": "big-0", "status": "does-not-fit", "error": None, "method": "backprop-fp32",
                 "kind": "backprop", **GROUP, "seed": 0, "protocol": "offline",
                 "accuracy": {"clean": 0.97, "shifted": 0.60, "final": None, "reference": None},
                 "ledger": {"forward_passes": 0, "macs": 0, "extra_memory_bytes": 290_000,
                            "train_ram_bytes": 300_000, "flash_bytes": None, "weight_writes": None,
                            "max_writes_per_cell": None, "mean_write_density": None, "energy_j": None,
                            "latency_s": None, "wall_s": 0.1},
                 "per_sample": {"macs": None, "energy_j": None, "latency_s": None},
                 "devices": _devices(300_000, fits_budget=False), "curve": [], "wall_s": 0.1})
    recs.append({"trial": "es-2", "status": "error", "method": "es-antithetic", "shift": "noise:0.3", "seed": 2,
                 "error": "RuntimeError: boom"})
    return recs


def _write_run(run_dir: Path, records: list[dict], truncated: bool = True, run_info: dict | None = None) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in records]
    text = "\n".join(lines) + "\n"
    if truncated:
        text += lines[0][: len(lines[0]) // 2]  # a crash mid-write
    (run_dir / "results.jsonl").write_text(text)
    if run_info is not None:
        (run_dir / "run.json").write_text(json.dumps(run_info))
    return run_dir


def _row(rows: list[dict], method: str) -> dict:
    (row,) = [r for r in rows if r["method"] == method]
    return row


# ---------------------------------------------------------------------------------------------------- loading


def test_load_results_counts_truncated_line(tmp_path):
    recs = _records()
    records, skipped = load_results(_write_run(tmp_path / "run", recs))
    assert skipped == 1
    assert len(records) == len(recs)
    assert records[0]["trial"] == recs[0]["trial"]


def test_missing_results_names_dir(tmp_path):
    run_dir = tmp_path / "no-such-run"
    run_dir.mkdir()
    with pytest.raises(FileNotFoundError, match="no-such-run"):
        load_results(run_dir)
    with pytest.raises(FileNotFoundError, match="no-such-run"):
        write_report(run_dir)


@pytest.mark.parametrize("text", ["", "\n\n", "{not json\n[1, 2]\n", '{"trial": "a", "sta'])
def test_no_valid_record_names_file(tmp_path, text):
    (tmp_path / "results.jsonl").write_text(text)
    with pytest.raises(ValueError, match="results.jsonl"):
        load_results(tmp_path)


# ------------------------------------------------------------------------------------------------- the numbers


def test_summarize_means_std_and_recovered_fraction():
    rows = summarize(_records())
    assert [r["method"] for r in rows] == [m for m, *_ in METHODS] + ["backprop-fp32"]  # error left out
    es = _row(rows, "es-antithetic")
    assert es["seeds"] == 2
    assert es["final_mean"] == pytest.approx(0.82)
    assert es["final_std"] == pytest.approx(math.sqrt(2 * 0.02**2))  # sample std of 0.80, 0.84
    assert es["shifted_mean"] == pytest.approx(0.61)
    # (0.82 - 0.61) / (0.92 - 0.61): backprop's mean final is 0.92
    assert es["recovered"] == pytest.approx(0.21 / 0.31)
    assert _row(rows, "backprop")["recovered"] == pytest.approx(1.0)
    assert _row(rows, "none")["recovered"] == pytest.approx(0.0)
    assert es["extra_memory_bytes"] == 1_000 and isinstance(es["extra_memory_bytes"], int)
    assert es["max_writes_per_cell"] == 100
    assert es["energy_uj_per_sample"] == pytest.approx(200.0)
    assert es["macs_per_sample"] == pytest.approx(5000.5)
    assert es["wall_s"] == pytest.approx(10.5)
    assert es["fits"] is True and es["status"] == "ok"
    big = _row(rows, "backprop-fp32")
    assert big["status"] == "does-not-fit" and big["fits"] is False
    assert big["final_mean"] is None and big["final_std"] is None and big["recovered"] is None
    assert big["train_ram_bytes"] == 300_000 and big["energy_uj_per_sample"] is None


def test_one_seed_has_no_std():
    rows = summarize([r for r in _records() if r.get("seed") == 0])
    assert _row(rows, "fqt")["final_std"] is None
    assert _row(rows, "fqt")["final_mean"] == pytest.approx(0.86)


def test_recovered_fraction_needs_a_reference_that_beats_shifted():
    no_ref = [r for r in _records() if r.get("kind") != "backprop"]
    assert all(r["recovered"] is None for r in summarize(no_ref))
    weak = [_record("backprop", "backprop", 0, 0.59, 0, 0, 0, 0.0), _record("es", "es", 0, 0.7, 0, 0, 0, 0.0)]
    assert all(r["recovered"] is None for r in summarize(weak))  # backprop below shifted (0.60)


def test_groups_in_first_appearance_order_and_online_accuracy():
    online = _record("es", "es", 0, 0.7, 0, 0, 0, 0.0, shift="rotate:30", protocol="online",
                     accuracy={"clean": 0.9, "shifted": 0.5, "final": 0.7, "online": 0.65, "reference": None},
                     online_curve=[{"sample": 100, "accuracy": 0.55}, {"sample": 200, "accuracy": 0.6}])
    rows = summarize([online, *_records()])
    assert rows[0]["shift"] == "rotate:30" and rows[0]["final_mean"] == pytest.approx(0.65)
    assert rows[1]["shift"] == "noise:0.3"
    assert _method_curve([online]) == ([100.0, 200.0], [0.55, 0.6])


def test_curve_is_mean_over_seeds_only_when_grids_match():
    recs = _records()
    xs, ys = _method_curve([r for r in recs if r["method"] == "backprop"])
    assert xs == [0, 100, 200]
    assert ys == pytest.approx([0.61, (0.75 + 0.78) / 2, 0.92])
    xs, ys = _method_curve([r for r in recs if r["method"] == "fqt"])  # grids differ: seed 0's curve
    assert xs == [0, 100, 200]
    assert ys == pytest.approx([0.60, 0.73, 0.86])


# ----------------------------------------------------------------------------------------------- Pareto front


def test_pareto_front_hand_case():
    #         0            1           2            3           4           5 (== 1)
    pts = [(1.0, 0.5), (2.0, 0.8), (3.0, 0.7), (0.5, 0.2), (2.0, 0.6), (2.0, 0.8), (5.0, 0.9)]
    # 2 is beaten by 1 (cheaper, better); 4 by 1 (same cost, worse); 1 and 5 are identical: both kept
    assert pareto_front(pts) == [3, 0, 1, 5, 6]
    assert pareto_front([]) == []


def _brute_front(points: list[tuple[float, float]]) -> set[int]:
    def dominated(i: int) -> bool:
        ci, vi = points[i]
        return any(cj <= ci and vj >= vi and (cj < ci or vj > vi) for cj, vj in points)

    return {i for i in range(len(points)) if not dominated(i)}


_small = st.floats(min_value=-4, max_value=4, allow_nan=False, allow_infinity=False).map(lambda x: round(x, 1))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_small, _small), max_size=12))
def test_pareto_front_matches_brute_force(points):
    front = pareto_front(points)
    assert set(front) == _brute_front(points)
    assert len(front) == len(set(front))
    costs = [points[i][0] for i in front]
    assert costs == sorted(costs)


# --------------------------------------------------------------------------------------------- written report


def test_write_report(tmp_path):
    run_dir = _write_run(tmp_path / "run", _records(),
                         run_info={"name": "noise sweep", "description": "ES vs backprop under noise",
                                   "config_file": "sweep.toml", "quick": True, "started": "2025-01-01T00:00:00",
                                   "wall_s": 123.4})
    out = write_report(run_dir)
    assert out["skipped_lines"] == 1
    assert out["markdown"] == run_dir / "report.md" and out["html"] == run_dir / "report.html"
    assert {p.name for p in out["plots"]} == {"curves_1.png", "tradeoffs_1.png"}
    for p in out["plots"]:
        assert p.read_bytes()[:8] == PNG_MAGIC

    md = out["markdown"].read_text()
    assert md.startswith("# noise sweep")
    assert "ES vs backprop under noise" in md
    assert "12 trials: 10 ok, 1 do not fit, 1 failed" in md
    assert "RuntimeError: boom" in md and "1 line(s) of results.jsonl did not parse" in md
    assert "123.4 s" in md
    for m, *_ in METHODS:
        assert f"| {m} |" in md
    assert "| backprop-fp32 |" in md
    assert "0.820 ± 0.028" in md  # es final accuracy
    assert "| nrf52840 | stm32h7 |" in md  # the fits table's devices
    assert "| fits (11,000 B) | fits (11,000 B) |" in md
    assert "| does not fit (300,000 B) | fits (300,000 B) |" in md
    assert "![" in md and "(curves_1.png)" in md and "(tradeoffs_1.png)" in md
    # none (0 writes, 0 memory) and the cheapest-with-more-accuracy methods are on the memory front
    assert "vs memory: none, es-antithetic, lowrank<r4>, fqt, backprop" in md
    assert "left out (no value): backprop-fp32" in md

    page = out["html"].read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "lowrank&lt;r4&gt;" in page and ESCAPED not in page
    assert '<img src="curves_1.png"' in page and "<table>" in page

    with open(run_dir / "summary.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(out["rows"]) == len(METHODS) + 1
    assert csv_rows[0]["panel"] == "digits noise" and csv_rows[0]["method"] == "none"
    assert float(_row(csv_rows, "es-antithetic")["recovered"]) == pytest.approx(0.21 / 0.31)


def test_write_report_without_run_json_or_backprop(tmp_path):
    recs = [r for r in _records() if r.get("kind") not in ("backprop",) and r.get("status") == "ok"]
    for r in recs:
        r["curve"] = []
    out = write_report(_write_run(tmp_path / "bare-run", recs, truncated=False))
    md = out["markdown"].read_text()
    assert md.startswith("# bare-run") and out["skipped_lines"] == 0
    assert "No backprop method" in md and "final accuracy (no backprop reference)" in md
    assert "No accuracy curves recorded." in md
    assert [p.name for p in out["plots"]] == ["tradeoffs_1.png"]

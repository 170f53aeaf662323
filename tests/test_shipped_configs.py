"""The shipped experiment configs load, expand as documented, and compare.toml --quick runs and
reports end to end through the command line (the issue's CI check)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgetrain.cli import main
from edgetrain.experiments.config import SHIPPED, load_config
from edgetrain.experiments.trials import expand

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@pytest.mark.parametrize(("name", "trials"), [("compare", 39), ("es", 32), ("lowrank", 24), ("fqt", 144)])
def test_shipped_config_expands(name: str, trials: int) -> None:
    cfg = load_config(SHIPPED / f"{name}.toml")
    assert len(expand(cfg)) == trials
    quick = load_config(name, quick=True)  # found by name
    assert quick.seeds == cfg.seeds[:1]
    assert len(expand(quick)) == trials // len(cfg.seeds)
    assert quick.training["max_samples"] <= 256 and quick.training["es_budget"] <= 4000
    assert quick.fingerprint() != cfg.fingerprint()


def test_compare_methods_cover_every_kind() -> None:
    cfg = load_config("compare")
    assert {m.kind for m in cfg.methods} == {"none", "backprop", "es", "lowrank", "fqt"}
    assert cfg.devices["profiles"][0] == "cortex-m4"


@pytest.mark.slow
def test_compare_quick_runs_and_reports(tmp_path: Path, capsys, one_torch_thread) -> None:
    out = tmp_path / "compare"
    assert main(["run", "compare", "--quick", "--out", str(out), "--no-progress"]) == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 13 and all(r["status"] == "ok" for r in records)
    by = {r["method"]: r for r in records}
    # one world: every method saw the same deployed model and shifted test split
    assert len({(r["accuracy"]["clean"], r["accuracy"]["shifted"]) for r in records}) == 1
    assert by["none"]["accuracy"]["final"] == by["none"]["accuracy"]["shifted"]
    assert by["none"]["ledger"]["weight_writes"] == 0
    assert by["es-antithetic"]["ledger"]["forward_passes"] >= 4000
    assert by["fqt-uint8-dyn10"]["per_sample"]["macs"] < by["fqt-uint8-full"]["per_sample"]["macs"]
    assert all(len(r["devices"]) == 3 and r["devices"][0]["fits"] for r in records)
    assert main(["report", str(out)]) == 0
    md = (out / "report.md").read_text()
    for label in by:
        assert label in md
    assert (out / "report.html").stat().st_size > 0
    assert (out / "tradeoffs_1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # rerun: nothing left to do
    capsys.readouterr()
    assert main(["run", "compare", "--quick", "--out", str(out), "--no-progress"]) == 0
    assert "13 already done, 0 run now" in capsys.readouterr().out
    assert (out / "results.jsonl").read_text().splitlines() == lines


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "BasicMotions").exists(), reason="../shared/data/BasicMotions not present")
def test_fqt_time_series_panel_quick(tmp_path: Path, one_torch_thread) -> None:
    from edgetrain.experiments.runner import run_config

    cfg = load_config("fqt", quick=True)
    summary = run_config(cfg, tmp_path / "fqt", show_progress=False,
                         only=lambda t: t.spec["panel"]["dataset"] == "BasicMotions"
                         and t.method in ("fqt-uint8-full", "fqt-uint8-dyn10"))
    assert summary.ran == 2 and summary.failed == 0
    recs = {r["method"]: r for r in summary.records}
    assert recs["fqt-uint8-dyn10"]["ledger"]["macs_backward"] < recs["fqt-uint8-full"]["ledger"]["macs_backward"]
    assert recs["fqt-uint8-full"]["dataset"] == "BasicMotions"


def test_shipped_configs_are_package_data() -> None:
    """``edgetrain run compare`` must find the configs in an installed wheel, not only in a checkout: they
    live inside the package and pyproject declares them as package data."""
    import fnmatch
    import tomllib

    import edgetrain

    package = Path(edgetrain.__file__).resolve().parent
    assert SHIPPED.is_relative_to(package)
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["edgetrain"]
    shipped = sorted(p.relative_to(package).as_posix() for p in SHIPPED.glob("*.toml"))
    assert shipped == ["configs/compare.toml", "configs/es.toml", "configs/fqt.toml", "configs/lowrank.toml"]
    for name in shipped:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in declared), f"{name} is not declared package data"


def test_wheel_carries_the_shipped_configs(tmp_path: Path) -> None:
    """Build a wheel from a copy of the source (no network: no build isolation, no dependencies) and look
    for the configs in it."""
    pytest.importorskip("setuptools")
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src-copy"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-w", str(tmp_path / "dist"), str(src)], check=True,
                   capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("edgetrain-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"edgetrain/configs/{n}.toml" for n in ("compare", "es", "fqt", "lowrank")} <= names
    assert "edgetrain/export/c/et_es.c" in names  # the C runtime travels the same way

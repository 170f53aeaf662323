"""``edgetrain fqt-demo`` end to end, shrunk: files, records, targets, refusals."""

from __future__ import annotations

import json

import pytest
import torch
from test_cli import LEDGER_KEYS, RECORD_KEYS

from edgetrain.cli import main
from edgetrain.cost.training_memory import training_memory
from edgetrain.experiments.fqt_demo import FQTDemoConfig, check_targets, make_task, make_trainers
from edgetrain.threads import torch_threads

pytestmark = pytest.mark.usefixtures("one_torch_thread")

METHODS = ["fqt-float32-full", "fqt-float32-dyn10", "fqt-mixed-full", "fqt-mixed-dyn10", "fqt-uint8-full",
           "fqt-uint8-dyn10", "fqt-uint8-fix10", "fqt-uint8-last1", "fqt-uint8-bias", "fqt-uint8-full-int16"]


@pytest.fixture(scope="module")
def fqt_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fqt")
    argv = ["fqt-demo", "--quick", "--tasks", "digits-transfer", "--rates", "1,0.1", "--devices",
            "cortex-m0+,cortex-m4", "--no-progress", "--out", str(out), "--json", str(out / "records.json")]
    with torch_threads(1):
        assert main(argv) == 0
    return out, json.loads((out / "records.json").read_text())


def test_records_line_up(fqt_run):
    out, recs = fqt_run
    assert [(r["method"], r["device"]) for r in recs] == [(m, d) for m in METHODS for d in ("rp2040", "nrf52840")]
    for r in recs:
        assert RECORD_KEYS <= r.keys() and LEDGER_KEYS <= set(r["ledger"])
        assert r["task"] == "digits-transfer" and r["dataset"] == "digits" and r["format"] == "uint8"
        led = r["ledger"]
        assert led["forward_passes"] == 1 and led["macs"] == led["macs_forward"] + led["macs_backward"]
        # accuracy before training is on digits the model never learned: no better than chance
        assert r["accuracy"]["shifted"] < 0.2
        assert 0 <= r["accuracy"]["final"] <= 1
        assert sum(r["ram_by_kind"].values()) == led["train_ram_bytes"]
        assert r["train_ram_bytes_batch1"] <= led["train_ram_bytes"]
        if r["precision"] == "uint8":  # latency/energy from the profile's int8 cycles per MAC
            assert led["latency_s"] > 0 and led["energy_j"] > 0
        else:
            assert led["latency_s"] is None and led["energy_j"] is None
    by = {(r["method"], r["device"]): r for r in recs}
    full, dyn = by[("fqt-uint8-full", "nrf52840")], by[("fqt-uint8-dyn10", "nrf52840")]
    assert full["backward_mac_ratio"] == 1.0 and dyn["backward_mac_ratio"] <= 0.2
    assert dyn["update_rate"] <= 0.1
    # the same run costed on two cores: same accuracy and work, the M0+ slower per MAC
    m0 = by[("fqt-uint8-full", "rp2040")]
    assert m0["accuracy"] == full["accuracy"] and m0["ledger"]["macs"] == full["ledger"]["macs"]
    assert m0["ledger"]["latency_s"] > full["ledger"]["latency_s"]
    # bias-only moves no stored weight; uint8 needs far less RAM than float32 for the same layers
    assert by[("fqt-uint8-bias", "nrf52840")]["ledger"]["weight_writes"] == 0
    assert full["ledger"]["train_ram_bytes"] < by[("fqt-float32-full", "nrf52840")]["ledger"]["train_ram_bytes"]
    for name in ("fqt_demo.json", "fqt_demo.csv", "fqt_demo.png", "targets.json", "config.json"):
        assert (out / name).stat().st_size > 0


def test_targets_are_computed_from_the_records(fqt_run):
    _, recs = fqt_run
    t = check_targets(recs)
    names = [c["target"] for c in t["checks"]]
    assert len(names) == 7 and t["task"] == "digits-transfer"
    ram = next(c for c in t["checks"] if "per-sample" in c["target"])
    u = next(r for r in recs if r["method"] == "fqt-uint8-full")
    f = next(r for r in recs if r["method"] == "fqt-float32-full")
    h = next(r for r in recs if r["method"] == "fqt-uint8-full-int16")
    assert ram["measured"] == round(u["train_ram_bytes_batch1"] / f["train_ram_bytes_batch1"], 3)
    ram16 = next(c for c in t["checks"] if "int16-buffer / float32" in c["target"])
    assert ram16["measured"] == round(h["ledger"]["train_ram_bytes"] / f["ledger"]["train_ram_bytes"], 3)
    # the int16 buffer: 2 B per trained value + 1 B per row exponent instead of 4 B per value
    assert h["ledger"]["train_ram_bytes"] < u["ledger"]["train_ram_bytes"]
    assert ram16["measured"] <= 0.45 and ram16["met"]
    assert t["met"] == all(c["met"] for c in t["checks"])


def test_trainers_and_memory_of_a_task():
    torch.manual_seed(0)
    cfg = FQTDemoConfig(pretrain_epochs=1, rates=(1.0, 0.5), precisions=("uint8",))
    task = make_task("digits-transfer", cfg, 0)
    trainers = make_trainers(task, cfg)
    assert list(trainers) == ["fqt-uint8-full", "fqt-uint8-dyn50", "fqt-uint8-fix10", "fqt-uint8-last1",
                              "fqt-uint8-bias", "fqt-uint8-full-int16"]
    assert trainers["fqt-uint8-full-int16"].grad_buffer == "int16"
    assert "fqt-uint8-full-int16" not in make_trainers(task, FQTDemoConfig(rates=(1.0,), precisions=("uint8",),
                                                                          batch=1))
    assert trainers["fqt-uint8-dyn50"].lam_min == 0.0 and trainers["fqt-uint8-dyn50"].lam_max == 0.5
    assert trainers["fqt-uint8-full"].writes(task.model) == ("3.weight", "3.bias", "7.weight", "7.bias")
    assert trainers["fqt-uint8-bias"].writes(task.model) == ("3.bias", "7.bias")
    # the trained digits are 5-9 only, the test set likewise
    assert set(task.y.tolist()) == {5, 6, 7, 8, 9} and set(task.y_test.tolist()) == {5, 6, 7, 8, 9}
    mem = training_memory(task.model, ("3.weight", "3.bias", "7.weight", "7.bias"), "uint8", accumulate=8,
                          optimizer="sgd")
    # hand count of the int32 accumulation buffer: conv 3 (16 x 8 x 3 x 3 + 16) and dense 7 (10 x 64 + 10)
    assert mem["by_kind"]["gradient"] == 4 * (16 * 72 + 16 + 10 * 64 + 10)


@pytest.mark.parametrize(("argv", "match"), [
    (["--tasks", "cifar"], "unknown fqt-demo task"),
    (["--precisions", "int4"], "unknown precision"),
    (["--rates", "0"], "update rates"),
    (["--devices", "nosuch"], "unknown device"),
    (["--optimizer", "adam"], "optimizer"),
])
def test_bad_options_fail_clearly(argv, match, capsys, tmp_path):
    assert main(["fqt-demo", "--quick", "--no-progress", "--out", str(tmp_path), *argv]) == 2
    assert match in capsys.readouterr().err

"""``edgetrain lrt-demo`` end to end on digits and on MNIST-format files with a short stream: files, records,
refusals."""

from __future__ import annotations

import json
import math

import pytest
import torch
from mnist_files import check_missing_mnist_refused, listing, run_on_digits_as_mnist
from test_cli import LEDGER_KEYS, RECORD_KEYS

from edgetrain.cli import main
from edgetrain.experiments.lrt_demo import DISTRIBUTION_SHIFTS, check_targets, moving_average
from edgetrain.threads import torch_threads

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["--epochs", "2", "--samples", "60", "--no-progress"]
METHODS = "inference-only,bias-only,sgd,sgd-accumulate,lrt-biased-maxnorm,lrt-unbiased-maxnorm"


@pytest.fixture(scope="module")
def lrt_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lrt")
    argv = ["lrt-demo", *TINY, "--methods", METHODS, "--out", str(out), "--json", str(out / "records.json")]
    with torch_threads(1):  # as in the tests that rerun it (float pretraining depends on the thread count)
        assert main(argv) == 0
    return out, json.loads((out / "records.json").read_text())


def test_records_line_up(lrt_run):
    out, recs = lrt_run
    scenarios = ["control", "distribution", "analog-drift", "digital-drift"]
    assert [(r["shift"], r["method"]) for r in recs] == [(s, m) for s in scenarios for m in METHODS.split(",")]
    for r in recs:
        assert RECORD_KEYS <= r.keys() and LEDGER_KEYS <= set(r["ledger"])
        assert r["dataset"] == "digits" and r["model"] == "cnn" and r["format"] == "int8"
        assert r["device"] == "rram" and r["seed"] == 0 and r["samples"] == 60
        assert r["accuracy"]["final"] == r["online_accuracy"] and r["accuracy"]["reference"] is None
        led = r["ledger"]
        assert led["forward_passes"] == 60
        assert led["extra_memory_bytes"] == sum(r["aux_memory_bytes"].values())
        assert led["max_writes_per_cell"] == r["max_writes_per_cell"] <= led["weight_writes"]
        assert r["online_curve"][-1]["sample"] == 60
    by = {(r["shift"], r["method"]): r for r in recs}
    for s in scenarios:
        base = by[(s, "inference-only")]
        # every record of a scenario shares the same no-adaptation baseline
        assert all(by[(s, m)]["accuracy"]["shifted"] == base["online_accuracy"] for m in METHODS.split(","))
        assert base["ledger"]["weight_writes"] == 0 and base["write_energy_j"] == 0
        assert base["lifetime_samples"] is None and base["ledger"]["macs_backward"] == 0
        assert by[(s, "bias-only")]["ledger"]["weight_writes"] == 0
        assert by[(s, "sgd-accumulate")]["aux_memory_bytes"]["7.accumulator"] == 10 * 64 * 4
        assert by[(s, "lrt-unbiased-maxnorm")]["trained"] == ["0.weight", "0.bias", "3.weight", "3.bias",
                                                               "7.weight", "7.bias"]
    # SGD writes a changed cell of conv layers once per pixel term: its busiest cell beats one per sample
    assert by[("analog-drift", "sgd")]["ledger"]["weight_writes"] > 0
    assert [s["what"] for s in by[("distribution", "sgd")]["segments"]] == list(DISTRIBUTION_SHIFTS)
    assert by[("analog-drift", "sgd")]["drift"] == "analog:4@10"
    assert (out / "lrt_demo.png").stat().st_size > 1000
    assert (out / "lrt_demo.csv").read_text().startswith("scenario,method,")
    assert json.loads((out / "lrt_demo.json").read_text()) == recs
    targets = json.loads((out / "targets.json").read_text())
    assert [t["scenario"] for t in targets["scenarios"]] == ["analog-drift", "digital-drift"]


def test_same_seed_same_results(lrt_run, tmp_path):
    _, recs = lrt_run
    argv = ["lrt-demo", *TINY, "--scenarios", "analog-drift", "--methods", "lrt-unbiased-maxnorm,sgd",
            "--out", str(tmp_path), "--json", str(tmp_path / "r.json")]
    assert main(argv) == 0
    again = {r["method"]: r for r in json.loads((tmp_path / "r.json").read_text())}
    first = {r["method"]: r for r in recs if r["shift"] == "analog-drift"}
    for m in ("lrt-unbiased-maxnorm", "sgd"):
        assert again[m]["online_curve"] == first[m]["online_curve"]
        assert again[m]["ledger"]["weight_writes"] == first[m]["ledger"]["weight_writes"]


def test_moving_average_hand_counted():
    c = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    pts = moving_average(c, window=2, points=6)
    assert [p["sample"] for p in pts] == [1, 2, 3, 4, 5, 6]
    assert [p["accuracy"] for p in pts] == [1.0, 0.5, 0.5, 1.0, 0.5, 0.0]


def test_check_targets_ratio_and_accuracy():
    def rec(shift, method, acc, maxw):
        return {"shift": shift, "method": method, "online_accuracy": acc, "max_writes_per_cell": maxw}

    recs = [rec("analog-drift", "sgd", 0.9, 1000), rec("analog-drift", "lrt-biased-maxnorm", 0.91, 10),
            rec("analog-drift", "lrt-unbiased-maxnorm", 0.5, 1),
            rec("digital-drift", "sgd", 0.9, 1000), rec("digital-drift", "lrt-biased-maxnorm", 0.95, 11)]
    t = check_targets(recs)
    assert [s["lrt"] for s in t["scenarios"]] == ["lrt-biased-maxnorm", "lrt-biased-maxnorm"]
    assert t["scenarios"][0]["write_ratio"] == 100.0 and t["scenarios"][0]["met"]
    assert not t["scenarios"][1]["met"] and not t["met"]  # 1000 / 11 < 100
    # the most accurate LRT method misses the write ratio, the other one meets both halves: met, and shown
    recs[-1:] = [rec("digital-drift", "lrt-biased-maxnorm", 0.95, 11), rec("digital-drift", "lrt-unbiased-maxnorm",
                                                                            0.92, 10)]
    t = check_targets(recs)
    assert t["scenarios"][1]["lrt"] == "lrt-unbiased-maxnorm" and t["scenarios"][1]["met"] and t["met"]
    assert t["scenarios"][1]["write_ratio"] == 100.0 and t["scenarios"][1]["lrt_online"] == 0.92


@pytest.mark.parametrize(("argv", "message"), [
    (["--methods", "lrt-magic"], "unknown lrt-demo method 'lrt-magic'"),
    (["--scenarios", "earthquake"], "unknown scenario"),
    (["--nvm", "cortex-m4"], "non-volatile memory profile"),
    (["--samples", "5"], "samples must be an integer >= 10"),
    (["--analog", "analog:-1@10"], "drift"),
])
def test_bad_input_is_refused_before_training(argv, message, tmp_path, capsys):
    assert main(["lrt-demo", *TINY, *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not (tmp_path / "lrt_demo.json").exists()


# ------------------------------------------------------------------------------------------ MNIST
# MNIST-format IDX files made from real digits (tests/mnist_files.py), checksums trusted, no network.

MNIST_TINY = ["--dataset", "mnist", "--epochs", "2", "--samples", "60", "--no-progress"]
MNIST_METHODS = "inference-only,sgd-accumulate,lrt-unbiased-maxnorm"
CNN_MACS_28 = 28 * 28 * 8 * 9 + 14 * 14 * 16 * 8 * 9 + 16 * 7 * 7 * 10  # one cnn inference on 1x28x28
CNN_MACS_8 = 8 * 8 * 8 * 9 + 4 * 4 * 16 * 8 * 9 + 16 * 2 * 2 * 10  # ... and on digits' 1x8x8


def in_unit_interval(v) -> bool:
    return isinstance(v, float) and math.isfinite(v) and 0.0 <= v <= 1.0


@pytest.fixture(scope="module")
def lrt_mnist_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lrt-mnist")
    out, recs = run_on_digits_as_mnist("lrt-demo", root, [*MNIST_TINY, "--methods", MNIST_METHODS], 400, 100)
    return root, out, recs


def test_mnist_records_carry_dataset_input_size_and_accuracies(lrt_mnist_run):
    root, out, recs = lrt_mnist_run
    scenarios = ["control", "distribution", "analog-drift", "digital-drift"]
    methods = MNIST_METHODS.split(",")
    assert [(r["shift"], r["method"]) for r in recs] == [(s, m) for s in scenarios for m in methods]
    for r in recs:
        assert RECORD_KEYS <= r.keys() and LEDGER_KEYS <= set(r["ledger"])
        assert r["dataset"] == "mnist" and r["model"] == "cnn" and r["format"] == "int8" and r["samples"] == 60
        acc = r["accuracy"]
        assert all(in_unit_interval(acc[k]) for k in ("clean", "shifted", "final"))
        for k in ("online_accuracy", "online_accuracy_second_half", "online_accuracy_first_pass"):
            assert in_unit_interval(r[k])
        assert all(in_unit_interval(p["accuracy"]) for p in r["online_curve"])
        assert r["online_curve"][-1]["sample"] == 60
        # every sample costs one cnn inference on a 1x28x28 image, not on digits' 1x8x8
        led = r["ledger"]
        assert led["forward_passes"] == 60
        assert led["macs_forward"] == 60 * CNN_MACS_28 > 60 * CNN_MACS_8
    # real digits with their real labels: the pretrained network is far above chance (0.1)
    assert recs[0]["accuracy"]["clean"] >= 0.3
    by = {(r["shift"], r["method"]): r for r in recs}
    # the dense layer's gradient accumulator: 10 outputs x 16 channels x 7 x 7 (28 / 4) inputs, float32
    assert by[("control", "sgd-accumulate")]["aux_memory_bytes"]["7.accumulator"] == 10 * 16 * 7 * 7 * 4
    assert [s["what"] for s in by[("distribution", "sgd-accumulate")]["segments"]] == list(DISTRIBUTION_SHIFTS)
    assert by[("analog-drift", "lrt-unbiased-maxnorm")]["ledger"]["weight_writes"] > 0
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == "mnist" and config["data_dir"] == str(root / "data") and config["download"] is False
    assert (out / "lrt_demo.png").stat().st_size > 1000
    csv = (out / "lrt_demo.csv").read_text().splitlines()
    assert csv[0].startswith("scenario,method,") and len(csv) == 1 + len(recs)
    assert json.loads((out / "lrt_demo.json").read_text()) == recs
    assert listing(root / "cache" / "edgetrain") == []  # read in place: nothing downloaded or copied to the cache


def test_mnist_without_files_fails_naming_them_and_writes_nothing(tmp_path, monkeypatch, capsys):
    check_missing_mnist_refused("lrt-demo", MNIST_TINY, tmp_path, monkeypatch, capsys)

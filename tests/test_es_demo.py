"""``edgetrain es-demo`` end to end on digits and on MNIST-format files with a tiny budget: files, records,
refusals."""

from __future__ import annotations

import json
import math

import pytest
import torch
from mnist_files import (
    TRAIN_IMAGES,
    check_missing_mnist_refused,
    forbid_network,
    isolate_data_dirs,
    listing,
    run_on_digits_as_mnist,
    trust,
    write_digits_as_mnist,
)
from sklearn.datasets import load_digits
from test_cli import LEDGER_KEYS, RECORD_KEYS

from edgetrain.cli import main
from edgetrain.data import load_dataset
from edgetrain.experiments.es_demo import check_targets

TINY = ["--arch", "mlp", "--sigmas", "0.4", "--epochs", "3", "--finetune-epochs", "1", "--budget", "6000",
        "--no-progress"]


@pytest.fixture(scope="module")
def es_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("es")
    argv = ["es-demo", *TINY, "--variants", "es-antithetic,es-spsa,es-one-plus-one", "--out", str(out),
            "--json", str(out / "records.json")]
    assert main(argv) == 0
    return out, json.loads((out / "records.json").read_text())


def test_records_line_up(es_run):
    out, recs = es_run
    assert [r["method"] for r in recs] == ["backprop-same-layers", "es-antithetic", "es-spsa", "es-one-plus-one"]
    bp = recs[0]
    for r in recs:
        assert RECORD_KEYS <= r.keys() and LEDGER_KEYS <= set(r["ledger"])
        assert r["dataset"] == "digits" and r["model"] == "mlp" and r["format"] == "fixed16_6"
        assert r["shift"] == "noise:0.4" and r["device"] == "ku115" and r["seed"] == 0
        assert r["accuracy"]["clean"] == bp["accuracy"]["clean"]
        assert r["accuracy"]["shifted"] == bp["accuracy"]["shifted"]
    # the reference: forward + backward MACs of every fine-tuning sample (last layer: 32 * 10 per backward)
    assert bp["ledger"]["macs_forward"] == bp["ledger"]["forward_passes"] * (64 * 64 + 64 * 32 + 32 * 10)
    assert bp["ledger"]["macs_backward"] == bp["ledger"]["forward_passes"] * 32 * 10
    for r in recs[1:]:
        led = r["ledger"]
        assert r["accuracy"]["reference"] == bp["accuracy"]["final"]
        assert led["forward_passes"] >= 6000 and led["macs"] > 0
        # every forward pass is a full mlp inference: 64*64 + 64*32 + 32*10 MACs
        assert led["macs"] == led["forward_passes"] * (64 * 64 + 64 * 32 + 32 * 10)
        assert led["extra_memory_bytes"] == r["extra_memory"]["total"] > 0
        assert led["weight_writes"] >= led["max_writes_per_cell"] >= 0
        assert r["trained"] == ["5.weight", "5.bias"]
        assert r["curve"][0]["forward_passes"] == 0 and r["curve"][-1]["accuracy"] == r["accuracy"]["final"]
        assert r["hardware"]["device"] == "ku115" and r["hardware"]["total"]["luts"] > 0
    assert (out / "es_demo.png").stat().st_size > 1000
    assert (out / "es_demo.csv").read_text().startswith("model,shift,method,")
    assert json.loads((out / "targets.json").read_text())["panels"][0]["model"] == "mlp"
    assert json.loads((out / "es_demo.json").read_text()) == recs


def test_same_seed_same_records(es_run, tmp_path):
    _, recs = es_run
    argv = ["es-demo", *TINY, "--variants", "es-antithetic", "--out", str(tmp_path), "--json", str(tmp_path / "r.json")]
    assert main(argv) == 0
    again = json.loads((tmp_path / "r.json").read_text())
    assert again[1]["accuracy"] == recs[1]["accuracy"] and again[1]["curve"] == recs[1]["curve"]
    assert again[1]["ledger"]["weight_writes"] == recs[1]["ledger"]["weight_writes"]


@pytest.mark.parametrize(("args", "message"), [
    (["--arch", "resnet"], "unknown architecture"),
    (["--variants", "es-nope"], "unknown ES variant"),
    (["--device", "cortex-m4"], "FPGA profile"),
    (["--sigmas", "abc"], "--sigmas"),
    (["--sigmas", "inf"], "--sigmas"),
    (["--params", "last:9"], "K must be in"),
    (["--format", "fixed8"], "fixed8"),
])
def test_bad_arguments_are_refused(args, message, capsys, tmp_path):
    assert main(["es-demo", *TINY, *args, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_check_targets_judges_only_large_drops():
    def rec(method, final, shifted=0.6, clean=0.95, rec_frac=None):
        return {"model": "cnn", "shift": "noise:0.3", "method": method,
                "accuracy": {"clean": clean, "shifted": shifted, "final": final},
                "recovered_fraction": rec_frac, "ledger": {"extra_memory_bytes": 100},
                "trained_weight_bytes": 60, "extra_memory": {"sample_buffer": 50}}
    good = check_targets([rec("backprop-same-layers", 0.8), rec("es-a", 0.76, rec_frac=0.8), rec("es-b", 0.7)])
    assert good["met"] and good["panels"][0]["best"] == "es-a"
    bad = check_targets([rec("es-a", 0.7, rec_frac=0.5)])
    assert not bad["met"]
    small = check_targets([rec("es-a", 0.9, shifted=0.9, rec_frac=0.1)])
    assert small["panels"][0]["judged"] is False and not small["met"]


def test_check_targets_counts_only_variants_within_memory():
    def rec(method, final, rec_frac, extra):
        return {"model": "cnn", "shift": "noise:0.3", "method": method,
                "accuracy": {"clean": 0.95, "shifted": 0.6, "final": final},
                "recovered_fraction": rec_frac, "ledger": {"extra_memory_bytes": extra},
                "trained_weight_bytes": 60, "extra_memory": {"sample_buffer": 50}}  # allowance 110 B

    # the most accurate variant needs 111 B; the best one that fits still recovers 85%
    out = check_targets([rec("es-shadow", 0.79, 0.95, 111), rec("es-a", 0.77, 0.85, 110), rec("es-b", 0.78, 0.9, 200)])
    panel = out["panels"][0]
    assert panel["best"] == "es-a" and panel["best_overall"] == "es-shadow"
    assert panel["recovered"] == 0.85 and panel["memory_ok"] and out["met"]
    short = check_targets([rec("es-shadow", 0.79, 0.95, 111), rec("es-a", 0.7, 0.5, 100)])
    assert short["panels"][0]["best"] == "es-a" and not short["met"]
    none_fit = check_targets([rec("es-shadow", 0.79, 0.95, 111), rec("es-b", 0.78, 0.9, 200)])
    assert none_fit["panels"][0]["best"] == "es-shadow" and not none_fit["panels"][0]["memory_ok"]
    assert not none_fit["met"]


# ------------------------------------------------------------------------------------------ MNIST
# MNIST-format IDX files made from real digits (tests/mnist_files.py), checksums trusted, no network.

MNIST_TINY = ["--dataset", "mnist", "--arch", "mlp,cnn", "--sigmas", "0.4", "--epochs", "3", "--finetune-epochs", "1",
              "--budget", "1000", "--no-progress"]
MNIST_TRAIN, MNIST_TEST = 400, 100
# MACs of one inference on a 1x28x28 image and on digits' 1x8x8 (cnn: 8 and 16 channels, 3x3, two 2x2 pools)
MACS_28 = {"mlp": 28 * 28 * 64 + 64 * 32 + 32 * 10,
           "cnn": 28 * 28 * 8 * 9 + 14 * 14 * 16 * 8 * 9 + 16 * 7 * 7 * 10}
MACS_8 = {"mlp": 8 * 8 * 64 + 64 * 32 + 32 * 10, "cnn": 8 * 8 * 8 * 9 + 4 * 4 * 16 * 8 * 9 + 16 * 2 * 2 * 10}
LAST_LAYER = {"mlp": ["5.weight", "5.bias"], "cnn": ["7.weight", "7.bias"]}


def in_unit_interval(v) -> bool:
    return isinstance(v, float) and math.isfinite(v) and 0.0 <= v <= 1.0


def test_mnist_files_from_digits_load_as_mnist(tmp_path, monkeypatch):
    isolate_data_dirs(monkeypatch, tmp_path / "cache")
    forbid_network(monkeypatch)
    files = write_digits_as_mnist(tmp_path / "mnist", n_train=30, n_test=10)
    trust(monkeypatch, files)
    ds = load_dataset("mnist", data_dir=tmp_path, download=False)
    assert ds.name == "mnist" and ds.input_shape == (1, 28, 28) and ds.n_classes == 10
    assert ds.train.x.shape == (30, 1, 28, 28) and ds.test.x.shape == (10, 1, 28, 28)
    digits = load_digits()
    assert ds.train.y.tolist() == digits.target[:30].tolist() and ds.test.y.tolist() == digits.target[30:40].tolist()
    assert torch.equal(ds.train.x[:, 0], torch.from_numpy(files[TRAIN_IMAGES][1]).float() / 255)
    # the digit fills the centred 20x20 box; the 4-pixel frame is empty, as in MNIST
    assert float(ds.train.x[..., 4:24, 4:24].amax()) == 1.0
    frame = ds.train.x.clone()
    frame[..., 4:24, 4:24] = 0
    assert float(frame.abs().sum()) == 0.0


@pytest.fixture(scope="module")
def es_mnist_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("es-mnist")
    args = [*MNIST_TINY, "--variants", "es-antithetic,es-spsa"]
    out, recs = run_on_digits_as_mnist("es-demo", root, args, MNIST_TRAIN, MNIST_TEST)
    return root, out, recs


def test_mnist_records_carry_dataset_input_size_and_accuracies(es_mnist_run):
    root, out, recs = es_mnist_run
    methods = ["backprop-same-layers", "es-antithetic", "es-spsa"]
    assert [(r["model"], r["method"]) for r in recs] == [(a, m) for a in ("mlp", "cnn") for m in methods]
    for arch in ("mlp", "cnn"):
        bp, *es = [r for r in recs if r["model"] == arch]
        for r in (bp, *es):
            assert RECORD_KEYS <= r.keys() and LEDGER_KEYS <= set(r["ledger"])
            assert r["dataset"] == "mnist" and r["format"] == "fixed16_6" and r["shift"] == "noise:0.4"
            acc = r["accuracy"]
            assert all(in_unit_interval(acc[k]) for k in ("clean", "shifted", "final"))
            assert acc["clean"] == bp["accuracy"]["clean"] and acc["shifted"] == bp["accuracy"]["shifted"]
            assert all(in_unit_interval(c["accuracy"]) for c in r["curve"] if c["accuracy"] is not None)
            assert r["trained"] == LAST_LAYER[arch]
        # real digits with their real labels: the pretrained network is far above chance (0.1)
        assert bp["accuracy"]["clean"] >= 0.4
        # every forward pass is an inference on a 1x28x28 image, not on digits' 1x8x8
        assert bp["ledger"]["forward_passes"] == 3 * MNIST_TRAIN  # three noisy copies, one epoch
        assert bp["ledger"]["macs_forward"] == bp["ledger"]["forward_passes"] * MACS_28[arch]
        for r in es:
            led = r["ledger"]
            assert r["accuracy"]["reference"] == bp["accuracy"]["final"]
            assert led["forward_passes"] >= 1000
            assert led["macs"] == led["forward_passes"] * MACS_28[arch] > led["forward_passes"] * MACS_8[arch]
            # the device's sample buffer holds 256 whole 784-pixel inputs (16-bit)
            assert r["extra_memory"]["sample_buffer"] >= 256 * 28 * 28 * 2
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == "mnist" and config["data_dir"] == str(root / "data") and config["download"] is False
    assert (out / "es_demo.png").stat().st_size > 1000
    csv = (out / "es_demo.csv").read_text().splitlines()
    assert csv[0].startswith("model,shift,method,") and len(csv) == 1 + 2 * 4  # + a "none" row per panel
    assert json.loads((out / "es_demo.json").read_text()) == recs
    assert [p["model"] for p in json.loads((out / "targets.json").read_text())["panels"]] == ["cnn", "mlp"]
    assert listing(root / "cache" / "edgetrain") == []  # read in place: nothing downloaded or copied to the cache


def test_mnist_without_files_fails_naming_them_and_writes_nothing(tmp_path, monkeypatch, capsys):
    check_missing_mnist_refused("es-demo", MNIST_TINY, tmp_path, monkeypatch, capsys)

"""``edgetrain es-demo`` end to end on digits with a tiny budget: files, records, refusals."""

from __future__ import annotations

import json

import pytest
from test_cli import LEDGER_KEYS, RECORD_KEYS

from edgetrain.cli import main
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

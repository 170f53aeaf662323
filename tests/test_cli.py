"""End-to-end tests of the command line on the built-in digits data (small epoch counts)."""

from __future__ import annotations

import json

import pytest
import torch

from edgetrain.cli import main
from edgetrain.threads import DEFAULT_THREADS, torch_threads

RECORD_KEYS = {"method", "dataset", "model", "format", "shift", "device", "seed", "accuracy", "ledger", "versions"}
LEDGER_KEYS = {"forward_passes", "macs", "extra_memory_bytes", "train_ram_bytes", "flash_bytes", "weight_writes",
               "max_writes_per_cell", "mean_write_density", "energy_j", "latency_s", "wall_s"}


@pytest.fixture(scope="module")
def demo_record(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--epochs", "4", "--out", str(out), "--json", str(out / "rec.json"), "--no-progress"]) == 0
    return out, json.loads((out / "rec.json").read_text())


def test_demo_writes_result_record(demo_record):
    out, rec = demo_record
    assert RECORD_KEYS <= rec.keys() and LEDGER_KEYS <= rec["ledger"].keys()
    assert rec["method"] == "none" and rec["format"] == "fixed16_6" and rec["shift"] == "noise:0.3"
    acc = rec["accuracy"]
    assert 0.5 < acc["clean"] <= 1 and 0 <= acc["shifted"] <= 1 and 0.5 < acc["reference"] <= 1
    assert acc["shifted"] < acc["clean"]  # sigma 0.3 noise hurts
    led = rec["ledger"]
    # hand count for the digits cnn (8 and 16 channels, 3x3, 8x8 input, two 2x2 pools, 10 classes)
    assert led["macs"] == 8 * 1 * 9 * 64 + 16 * 8 * 9 * 16 + 64 * 10
    assert led["train_ram_bytes"] is None and led["weight_writes"] == 0 and led["flash_bytes"] > 0
    assert rec["versions"]["torch"] and rec["versions"]["edgetrain"]
    assert (out / "noise_sweep.png").stat().st_size > 1000
    assert (out / "noise_sweep.csv").read_text().startswith("sigma,")
    assert json.loads((out / "result.json").read_text())["accuracy"] == acc


def test_pretrain_then_evaluate_round_trip(tmp_path):
    model = tmp_path / "m.etm"
    assert main(["pretrain", "--dataset", "digits", "--arch", "mlp", "--format", "fixed16_6", "--epochs", "3",
                 "--out", str(model), "--json", str(tmp_path / "p.json"), "--no-progress"]) == 0
    pre = json.loads((tmp_path / "p.json").read_text())
    assert main(["evaluate", str(model), "--json", str(tmp_path / "e.json")]) == 0
    ev = json.loads((tmp_path / "e.json").read_text())
    assert ev["accuracy"]["clean"] == pre["accuracy"]["clean"]  # same split, same integer forward
    assert main(["evaluate", str(model), "--shift", "noise:0.3", "--seed", "1",
                 "--json", str(tmp_path / "s.json")]) == 0
    sh = json.loads((tmp_path / "s.json").read_text())
    assert sh["shift"] == "noise:0.3" and sh["accuracy"]["shifted"] is not None


def test_evaluate_refuses_altered_model(tmp_path, capsys):
    model = tmp_path / "m.etm"
    assert main(["pretrain", "--arch", "mlp", "--epochs", "1", "--out", str(model), "--no-progress"]) == 0
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x10
    model.write_bytes(bytes(data))
    assert main(["evaluate", str(model)]) == 2
    assert "checksum mismatch" in capsys.readouterr().err


def test_evaluate_missing_model_and_bad_shift(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope.etm")]) == 2
    assert "does not exist" in capsys.readouterr().err
    model = tmp_path / "m.etm"
    assert main(["pretrain", "--arch", "mlp", "--epochs", "1", "--out", str(model), "--no-progress"]) == 0
    assert main(["evaluate", str(model), "--shift", "blur:3"]) == 2
    assert "blur" in capsys.readouterr().err


def test_devices_json(tmp_path):
    assert main(["devices", "--json", str(tmp_path / "d.json")]) == 0
    rows = json.loads((tmp_path / "d.json").read_text())
    names = {r["name"] for r in rows}
    assert {"rp2040", "nrf52840", "stm32l4r5", "stm32f746", "stm32h743", "imxrt1062", "ku115", "rram"} <= names


@pytest.mark.parametrize("cmd", ["demo", "pretrain", "evaluate", "devices"])
def test_every_command_has_help_seed_json(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--seed" in text and "--json" in text


@pytest.mark.parametrize("args, expected", [
    (["demo", "--format", "fixed24_8", "--epochs", "1"], "accumulator"),
    (["demo", "--format", "fixed16_6:stochastic"], "stochastic"),
    (["demo", "--format", "fixed99_1"], "fixed99_1"),
    (["demo", "--device", "ku115"], "microcontroller"),
    (["demo", "--shift", "noise:-1"], "noise"),
    (["pretrain", "--out", "OUT", "--device", "nope"], "unknown device"),
    (["demo", "--dataset", "mnist"], "md5"),
])
def test_bad_arguments_exit_2_with_a_clear_message(args, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("EDGETRAIN_DATA", raising=False)
    args = [str(tmp_path / "m.etm") if a == "OUT" else a for a in args]
    assert main([*args, "--no-progress", "--out", str(tmp_path / "o")] if args[0] == "demo" else args) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "m.etm").exists()  # refused before anything was trained or written


def test_negative_epochs_refused(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--epochs", "-1"])
    assert e.value.code == 2 and "at least 1" in capsys.readouterr().err


def test_thread_count_is_fixed_so_a_seed_gives_one_model_whatever_the_machine(tmp_path, capsys):
    """Float pre-training depends on the torch thread count (not on the cores), so the command line fixes it
    (``--threads``, default ``DEFAULT_THREADS``) instead of inheriting the process's count."""
    def pretrain(name: str, process_threads: int, *extra: str) -> bytes:
        with torch_threads(process_threads):
            assert main(["pretrain", "--epochs", "3", "--out", str(tmp_path / name), "--no-progress", *extra]) == 0
            assert torch.get_num_threads() == process_threads  # restored afterwards
        return (tmp_path / name).read_bytes()

    default = pretrain("a.etm", 1)
    assert pretrain("b.etm", 3) == default  # a 3-core default does not change the model
    assert pretrain("c.etm", 1, "--threads", "1") != default  # the count matters: this is what is fixed
    assert DEFAULT_THREADS == 2  # the count the README's figures were measured at


def test_torch_threads_restores_and_refuses_bad_counts():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), torch_threads(3):
        assert torch.get_num_threads() == 3
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="thread count"), torch_threads(bad):
            pass

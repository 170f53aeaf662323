"""``edgetrain run``: TOML configs (checked, errors located), trial expansion and ids, the runner (results written
as trials finish, resumed after a crash, guarded against another config's directory), the costs it records, and
the ``run`` / ``report`` commands. Trials run on a tiny config: digits mlp, 2 pretraining epochs, 64 samples."""

from __future__ import annotations

import copy
import csv
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from edgetrain.cli import main
from edgetrain.cost import inference_plan
from edgetrain.device import get_device
from edgetrain.experiments.config import QUICK, ConfigError, load_config
from edgetrain.experiments.methods import make_trainer, ram_need
from edgetrain.experiments.runner import RESULTS, RunDirError, prepare_dir, read_results, run_config
from edgetrain.experiments.trials import expand
from edgetrain.experiments.world import build_world
from edgetrain.threads import torch_threads

RECORD_KEYS = {"method", "dataset", "model", "format", "shift", "device", "seed", "accuracy", "ledger", "versions"}
ACCURACY_KEYS = {"clean", "shifted", "final", "reference"}
LEDGER_KEYS = {"forward_passes", "macs", "macs_forward", "macs_backward", "extra_memory_bytes", "train_ram_bytes",
               "flash_bytes", "weight_writes", "max_writes_per_cell", "mean_write_density", "energy_j", "latency_s",
               "wall_s"}
MLP_MACS = 64 * 64 + 64 * 32 + 32 * 10  # digits mlp: 64 inputs -> Dense(64) -> Dense(32) -> Dense(10)
M4_SRAM = 256 * 1024  # cortex-m4 = nrf52840

# Line numbers below are those of this text as written: line 1 is the comment.
HEAD = """\
# a tiny run: digits mlp under input noise, short training
[experiment]
name = "tiny"
seeds = {seeds}

[model]
archs = ["mlp"]
format = "uint8"
pretrain_epochs = 2

[training]
epochs = 1
max_samples = 64
es_budget = 2000
eval_points = 2

[[panels]]
name = "digits noise"
dataset = "digits"
shifts = ["noise:0.3"]
"""
METHODS = {
    "none": 'kind = "none"',
    "backprop": 'kind = "backprop"\nepochs = 1',
    "es": 'kind = "es"\nestimator = "antithetic"\npopulation = 4\nsigma = 2.0\nlr = 2.0\nbatch = 16',
    "fqt": 'kind = "fqt"\nrate = 0.1',
    "sgd": 'kind = "lowrank"\nmethod = "sgd"\nlr = 0.01',
}
PANEL2 = '\n[[panels]]\nname = "digits rotate"\ndataset = "digits"\nshifts = ["rotate:15"]\n'


def config_text(seeds=(0, 1), methods=None, head: str = HEAD, extra: str = "") -> str:
    """The tiny config: ``methods`` maps label -> table body (default: all of :data:`METHODS`)."""
    methods = METHODS if methods is None else methods
    body = "".join(f"\n[methods.{label}]\n{text}\n" for label, text in methods.items())
    return head.format(seeds=list(seeds)) + body + extra


def write(tmp_path: Path, text: str | bytes, name: str = "cfg.toml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def line_of(text: str, needle: str) -> int:
    """1-based number of the only line holding ``needle``."""
    hits = [n for n, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(hits) == 1, (needle, hits)
    return hits[0]


def comparable(rec: dict) -> dict:
    """A record without what legitimately differs between runs (host wall time)."""
    rec = copy.deepcopy(rec)
    rec["ledger"].pop("wall_s")
    return rec


def records(out: Path) -> dict[str, dict]:
    recs, bad = read_results(out / RESULTS)
    assert bad == 0
    return recs


@pytest.fixture(scope="module")
def ref_run(tmp_path_factory):
    """The tiny config (2 seeds x 5 methods) run once, serially and uninterrupted: (config path, run dir,
    summary). Tests copy the directory before changing anything in it."""
    d = tmp_path_factory.mktemp("ref")
    path = write(d, config_text())
    with torch_threads(1):  # as the one_torch_thread fixture (function-scoped) does
        summary = run_config(load_config(path), d / "run", show_progress=False)
    return path, d / "run", summary


def copy_run(ref_dir: Path, dest: Path) -> Path:
    shutil.copytree(ref_dir, dest)
    return dest


# -- config errors --------------------------------------------------------------------------------------------


def test_unknown_training_key_names_file_line_and_key(tmp_path):
    text = config_text().replace("eval_points = 2\n", "eval_points = 2\nestimate_fast = true\n")
    path = write(tmp_path, text)
    assert text.splitlines()[15] == "estimate_fast = true"  # line 16
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:16: ")
    assert "'estimate_fast'" in msg and "[training]" in msg and "es_budget" in msg  # lists what is allowed
    assert isinstance(e.value, ValueError)


def _replace(old: str, new: str, methods=None):
    def make() -> str:
        text = config_text(methods=methods)
        assert old in text
        return text.replace(old, new, 1)
    return make


ONLINE_HEAD = HEAD.replace("[training]\n", '[training]\nprotocol = "online"\n').replace('"noise:0.3"', '"control"')

ERRORS = {
    "method key for its kind": (_replace('estimator = "antithetic"', 'estimatr = "antithetic"'),
                                'estimatr = "antithetic"', ["[methods.es]", "'estimatr'", "'estimator'"]),
    "wrong type": (_replace("epochs = 1\nmax", 'epochs = "three"\nmax'), 'epochs = "three"',
                   ["[training] epochs must be an integer", "'three'"]),
    "second panel key": (lambda: config_text(extra=PANEL2.replace("dataset", "datset")), 'datset = "digits"',
                         ["[[panels]] #2", "'datset'"]),
    "second panel shift": (lambda: config_text(extra=PANEL2.replace("rotate:15", "nois:0.3")), "nois:0.3",
                           ["[[panels]] #2 shifts", "'nois'"]),
    "unknown section": (lambda: config_text(extra="\n[extras]\nx = 1\n"), "[extras]", ["'extras'"]),
    "bad kind": (_replace('kind = "none"', 'kind = "magic"'), 'kind = "magic"',
                 ["[methods.none] kind must be one of", "'magic'"]),
    "fqt needs uint8": (lambda: config_text(methods={"none": METHODS["none"], "fqt": METHODS["fqt"]}).replace(
        'format = "uint8"', 'format = "fixed16_6"'), "[methods.fqt]", ["fqt trains uint8", "'fixed16_6'"]),
    "online refuses es": (lambda: config_text(methods={"none": METHODS["none"], "es": METHODS["es"]},
                                              head=ONLINE_HEAD), "[methods.es]", ["online protocol", "'es'"]),
    "bad shift": (_replace("noise:0.3", "noise:abc"), "noise:abc", ["[[panels]] #1 shifts", "noise:abc"]),
    "unknown device": (_replace("[training]", '[devices]\nprofiles = ["cortex-m4", "cortex-m99"]\n\n[training]'),
                       "cortex-m99", ["[devices] profiles", "unknown device 'cortex-m99'"]),
    "bad es setting": (_replace("population = 4", "population = 3"), "[methods.es]",
                       ["population must be an even integer"]),
    "bad fqt rate": (_replace("rate = 0.1", "rate = 1.5"), "[methods.fqt]", ["rate must lie in (0, 1]"]),
    "duplicate seeds": (lambda: config_text(seeds=(0, 0)), "seeds = [0, 0]", ["seeds must be distinct"]),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_config_errors_point_at_the_line(tmp_path, case):
    make, needle, fragments = ERRORS[case]
    text = make()
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:{line_of(text, needle)}: "), msg
    for f in fragments:
        assert f in msg


def test_second_panel_error_is_not_blamed_on_the_first(tmp_path):
    text = config_text(extra=PANEL2.replace("rotate:15", "nois:0.3"))
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    first, second = line_of(text, '"noise:0.3"'), line_of(text, '"nois:0.3"')
    assert second > first + 3 and str(e.value).startswith(f"{path}:{second}:")
    assert load_config(write(tmp_path, config_text(extra=PANEL2), "ok.toml")).panels[1].shifts == ("rotate:15",)


@pytest.mark.parametrize("what, text, fragment", [
    ("no panels", config_text().replace('[[panels]]\nname = "digits noise"\ndataset = "digits"\n'
                                        'shifts = ["noise:0.3"]\n', ""), "at least one [[panels]]"),
    ("no methods", config_text(methods={}), "at least one [methods.<label>]"),
    ("not UTF-8", config_text().encode() + b"\n# caf\xe9\n", "not a UTF-8 text file"),
    ("invalid TOML", config_text().replace("epochs = 1\n", "epochs = 1 1\n", 1), "not valid TOML"),
])
def test_whole_file_errors(tmp_path, what, text, fragment):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="^" + re.escape(f"{path}:")) as e:
        load_config(path)
    assert fragment in str(e.value)
    if what == "invalid TOML":
        assert "line 12" in str(e.value)  # tomllib's own position of the bad line


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not a shipped config"):
        load_config(tmp_path / "nope")


def test_unknown_top_level_key_has_a_line(tmp_path):
    text = "speed = 3\n" + config_text()
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}:1:")


def test_sample_config_loads():
    cfg = load_config(Path(__file__).parent.parent / "src" / "edgetrain" / "configs" / "compare.toml")
    assert load_config("compare").fingerprint() == cfg.fingerprint()  # a shipped config by name
    assert cfg.name == "compare" and len(expand(cfg)) == 3 * len(cfg.methods)
    quick = load_config(cfg.path, quick=True)
    assert quick.seeds == (0,) and quick.training["es_budget"] == 4000 and len(expand(quick)) == len(cfg.methods)


# -- --quick --------------------------------------------------------------------------------------------------


def test_quick_shrinks_every_trial(tmp_path):
    text = config_text(seeds=(0, 1, 2)).replace("epochs = 1\nmax_samples = 64\n", "epochs = 5\n").replace(
        "es_budget = 2000", "es_budget = 1_000_000").replace("pretrain_epochs = 2", "pretrain_epochs = 30").replace(
        "eval_points = 2", "eval_points = 8")
    path = write(tmp_path, text)
    full, quick = load_config(path), load_config(path, quick=True)
    assert full.seeds == (0, 1, 2) and full.training["epochs"] == 5 and full.training["max_samples"] == 0
    assert quick.quick and quick.seeds == (0,)
    assert quick.training["epochs"] == 1 and quick.training["es_budget"] <= 4000
    assert quick.training["max_samples"] == QUICK["max_samples"] and quick.training["eval_points"] == 3
    assert quick.model["pretrain_epochs"] == 5
    assert len(expand(quick)) == len(METHODS) and quick.fingerprint() != full.fingerprint()
    small = load_config(write(tmp_path, config_text(), "small.toml"), quick=True)  # already small: never grown
    assert small.training["es_budget"] == 2000 and small.training["max_samples"] == 64
    assert small.model["pretrain_epochs"] == 2 and small.training["eval_points"] == 2


def test_quick_table_wins(tmp_path):
    path = write(tmp_path, config_text(extra="\n[quick]\nes_budget = 6000\nepochs = 2\npretrain_epochs = 1\n"))
    quick = load_config(path, quick=True)
    assert quick.training["es_budget"] == 6000 and quick.training["epochs"] == 2
    assert quick.model["pretrain_epochs"] == 1 and quick.seeds == (0,)
    full = load_config(path)  # [quick] only applies with --quick
    assert full.training["es_budget"] == 2000 and full.training["epochs"] == 1 and full.seeds == (0, 1)
    bad = write(tmp_path, config_text(extra="\n[quick]\nepocs = 2\n"), "bad.toml")
    with pytest.raises(ConfigError, match="unknown key 'epocs'"):
        load_config(bad)


def test_quick_keeps_zero_pretraining(tmp_path):
    path = write(tmp_path, config_text().replace("pretrain_epochs = 2", "pretrain_epochs = 0"))
    assert load_config(path).model["pretrain_epochs"] == 0
    assert load_config(path, quick=True).model["pretrain_epochs"] == 0


def test_bad_quick_value_points_at_the_quick_table(tmp_path):
    text = config_text(extra="\n[quick]\nepochs = 0\n")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path, quick=True)
    assert str(e.value).startswith(f"{path}:{line_of(text, 'epochs = 0')}:")


# -- trials ---------------------------------------------------------------------------------------------------


def test_expand_counts_and_orders_trials(tmp_path):
    head = HEAD.replace('["mlp"]', '["mlp", "cnn"]').replace('["noise:0.3"]', '["noise:0.3", "contrast:0.5"]')
    extra = PANEL2.replace('["rotate:15"]', '["rotate:15", "none"]').replace("shifts", "epochs = 4\nshifts")
    cfg = load_config(write(tmp_path, config_text(seeds=(0, 1, 2), head=head, extra=extra)))
    trials = expand(cfg)
    assert len(trials) == 2 * 2 * 2 * 3 * 5  # panels x shifts x archs x seeds x methods
    assert len({t.id for t in trials}) == len(trials)
    assert [t.method for t in trials[:5]] == list(METHODS)  # methods innermost: one seed's finish together
    assert {(t.spec["arch"], t.spec["seed"], t.spec["shift"]) for t in trials[:5]} == {("mlp", 0, "noise:0.3")}
    assert trials[0].name == "digits noise / mlp / noise:0.3 / none / seed 0"
    rot = [t for t in trials if t.spec["panel"]["name"] == "digits rotate"]
    assert len(rot) == 60 and {t.spec["training"]["epochs"] for t in rot} == {4}  # the panel's override
    assert {t.spec["training"]["epochs"] for t in trials if t not in rot} == {1}
    json.dumps([t.spec for t in trials])  # plain data, for workers and Ray


def test_trial_ids_are_stable_and_local(tmp_path):
    text = config_text()
    a, b = load_config(write(tmp_path, text, "a.toml")), load_config(write(tmp_path, text, "a.toml"))
    ids = {t.name: t.id for t in expand(a)}
    assert ids == {t.name: t.id for t in expand(b)} and a.fingerprint() == b.fingerprint()
    # comments, blank lines and the file's place do not matter
    commented = text.replace("[training]", "# the trial budget\n\n[training]   # comment").replace(
        "lr = 0.01", "lr = 0.01  # a step")
    (tmp_path / "sub").mkdir()
    c = load_config(write(tmp_path / "sub", commented, "elsewhere.toml"))
    assert {t.name: t.id for t in expand(c)} == ids and c.fingerprint() == a.fingerprint()
    # an integer where a float is expected is the same setting
    d = load_config(write(tmp_path, text.replace("sigma = 2.0", "sigma = 2"), "d.toml"))
    assert {t.name: t.id for t in expand(d)} == ids and d.fingerprint() == a.fingerprint()
    # one method's setting changes only that method's trials
    e = load_config(write(tmp_path, text.replace("sigma = 2.0", "sigma = 3.0"), "e.toml"))
    changed = {name for name, tid in ((t.name, t.id) for t in expand(e)) if ids[name] != tid}
    assert changed == {n for n in ids if " / es / " in n} and len(changed) == 2
    assert e.fingerprint() != a.fingerprint()
    # a training setting changes every trial
    f = load_config(write(tmp_path, text.replace("es_budget = 2000", "es_budget = 3000"), "f.toml"))
    assert not set(ids.values()) & {t.id for t in expand(f)} and f.fingerprint() != a.fingerprint()


# -- the runner -----------------------------------------------------------------------------------------------


def test_run_writes_one_valid_record_per_trial(ref_run):
    path, out, summary = ref_run
    cfg = load_config(path)
    trials = expand(cfg)
    assert summary.trials == 10 and summary.ran == 10 and summary.skipped == 0 and summary.failed == 0
    lines = (out / RESULTS).read_text().splitlines()
    assert len(lines) == 10
    recs = [json.loads(line) for line in lines]
    assert [r["trial"] for r in recs] == [t.id for t in trials]  # serial: in expansion order
    for r, t in zip(recs, trials, strict=True):
        assert RECORD_KEYS <= r.keys() and set(r["accuracy"]) == ACCURACY_KEYS and set(r["ledger"]) == LEDGER_KEYS
        assert {"edgetrain", "torch", "git"} <= r["versions"].keys() and r["versions"]["torch"] == torch.__version__
        assert r["status"] == "ok" and r["error"] is None and r["name"] == t.name
        assert (r["method"], r["seed"], r["model"], r["format"], r["dataset"], r["shift"]) == (
            t.method, t.spec["seed"], "mlp", "uint8", "digits", "noise:0.3")
        assert r["device"] == "nrf52840" and r["config"] == t.spec and r["kind"] == t.spec["method"]["kind"]
        assert [d["device"] for d in r["devices"]] == ["nrf52840"] and r["devices"][0]["fits"] is True
        assert r["devices"][0]["sram_bytes"] == M4_SRAM
        acc = r["accuracy"]
        assert 0.5 < acc["clean"] <= 1 and 0 <= acc["shifted"] < acc["clean"] and 0 <= acc["final"] <= 1
        assert acc["reference"] is None
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(row["trial"] for row in rows) == sorted(t.id for t in trials)
    assert {row["status"] for row in rows} == {"ok"}
    meta = json.loads((out / "run.json").read_text())
    assert meta["fingerprint"] == cfg.fingerprint() and meta["trials"] == 10 and meta["finished"] is True
    assert (out / "config.toml").read_text() == path.read_text()
    assert len(list((out / "cache").glob("model-*.etm"))) == 2  # one deployed model per seed, shared by methods


def test_rerun_runs_nothing_and_changes_nothing(tmp_path, ref_run, one_torch_thread):
    path, ref_dir, _ = ref_run
    out = copy_run(ref_dir, tmp_path / "run")
    before = (out / RESULTS).read_bytes()
    summary = run_config(load_config(path), out, show_progress=False)
    assert summary.skipped == 10 and summary.ran == 0 and summary.failed == 0 and len(summary.records) == 10
    assert (out / RESULTS).read_bytes() == before


def test_resume_after_a_crash_reproduces_the_uninterrupted_run(tmp_path, ref_run, one_torch_thread):
    path, ref_dir, _ = ref_run
    cfg = load_config(path)
    out = tmp_path / "run"
    first = run_config(cfg, out, show_progress=False, only=lambda t: t.spec["seed"] == 0)
    assert first.ran == 5 and len(records(out)) == 5
    assert json.loads((out / "run.json").read_text())["finished"] is False
    ref_lines = (ref_dir / RESULTS).read_text().splitlines()
    with open(out / RESULTS, "a") as f:  # the crash: half of a seed-1 record, no newline
        f.write(ref_lines[7][: len(ref_lines[7]) // 2])
    assert read_results(out / RESULTS)[1] == 1
    second = run_config(cfg, out, show_progress=False)
    assert second.ran == 5 and second.skipped == 5 and second.failed == 0
    lines = (out / RESULTS).read_text().splitlines()
    assert len(lines) == 10  # the truncated line is gone
    recs = [json.loads(line) for line in lines]
    assert [r["seed"] for r in recs] == [0] * 5 + [1] * 5  # exactly the missing trials ran
    ref = records(ref_dir)
    assert set(ref) == {r["trial"] for r in recs}
    for r in recs:
        assert comparable(r) == comparable(ref[r["trial"]])
    assert json.loads((out / "run.json").read_text())["finished"] is True


def test_error_record_is_retried(tmp_path, ref_run, one_torch_thread):
    path, ref_dir, _ = ref_run
    out = copy_run(ref_dir, tmp_path / "run")
    ref = records(ref_dir)
    tid = next(t for t, r in ref.items() if r["method"] == "fqt" and r["seed"] == 1)
    with open(out / RESULTS, "a") as f:
        f.write(json.dumps({"trial": tid, "name": ref[tid]["name"], "status": "error", "method": "fqt",
                            "error": "RuntimeError: boom"}) + "\n")
    assert records(out)[tid]["status"] == "error"  # the later line wins
    summary = run_config(load_config(path), out, show_progress=False)
    assert summary.ran == 1 and summary.skipped == 9 and summary.failed == 0
    last = json.loads((out / RESULTS).read_text().splitlines()[-1])
    assert last["trial"] == tid and last["status"] == "ok"
    assert comparable(records(out)[tid]) == comparable(ref[tid])
    with open(out / "results.csv", newline="") as f:
        assert {row["status"] for row in csv.DictReader(f)} == {"ok"}


def test_trial_that_raises_is_an_error_record_and_the_run_goes_on(tmp_path, one_torch_thread):
    # source classes are checked when the trial builds its world: a run-time failure
    text = config_text(seeds=(0,), methods={"none": METHODS["none"]}, extra=PANEL2.replace(
        'dataset = "digits"', 'dataset = "digits"\ntask = "transfer"\nsource_classes = [99]'))
    cfg = load_config(write(tmp_path, text))
    summary = run_config(cfg, tmp_path / "run", show_progress=False)
    assert summary.ran == 2 and summary.failed == 1
    by_panel = {r["panel"]: r for r in records(tmp_path / "run").values()}
    assert by_panel["digits noise"]["status"] == "ok"
    bad = by_panel["digits rotate"]
    assert bad["status"] == "error" and "source_classes" in bad["error"] and bad["accuracy"]["final"] is None
    again = run_config(cfg, tmp_path / "run", show_progress=False)  # retried (and fails again)
    assert again.ran == 1 and again.skipped == 1 and again.failed == 1


def test_another_config_is_refused_then_moved_aside_with_force(tmp_path, ref_run, one_torch_thread):
    path, ref_dir, _ = ref_run
    out = copy_run(ref_dir, tmp_path / "run")
    old = {name: (out / name).read_bytes() for name in ("run.json", "config.toml", RESULTS, "results.csv")}
    other = load_config(write(tmp_path, path.read_text().replace("sigma = 2.0", "sigma = 3.0"), "other.toml"))
    with pytest.raises(RunDirError, match="--force"):
        run_config(other, out, show_progress=False)
    assert {name: (out / name).read_bytes() for name in old} == old  # refused before touching anything
    summary = run_config(other, out, force=True, show_progress=False, only=lambda t: t.method == "none")
    assert summary.ran == 2
    moved = out / "superseded-1"
    assert {name: (moved / name).read_bytes() for name in old} == old  # nothing deleted
    assert len(records(out)) == 2 and len(list((out / "cache").glob("*.etm"))) == 2
    assert json.loads((out / "run.json").read_text())["fingerprint"] == other.fingerprint()
    third = load_config(write(tmp_path, path.read_text().replace("sigma = 2.0", "sigma = 4.0"), "third.toml"))
    run_config(third, out, force=True, show_progress=False, only=lambda t: False)
    assert (out / "superseded-2" / RESULTS).exists() and {
        name: (moved / name).read_bytes() for name in old} == old
    assert not (out / RESULTS).exists() or records(out) == {}


def test_prepare_dir_refuses_foreign_directories(tmp_path, ref_run):
    cfg = load_config(ref_run[0])
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / RESULTS).write_text("{}\n")
    with pytest.raises(RunDirError, match="no run.json"):
        prepare_dir(cfg, stray, force=True)
    garbled = tmp_path / "garbled"
    garbled.mkdir()
    (garbled / "run.json").write_text("not json")
    with pytest.raises(RunDirError, match="not a run description"):
        prepare_dir(cfg, garbled, force=True)


def test_read_results_tolerates_a_truncated_line(tmp_path):
    path = tmp_path / RESULTS
    path.write_text('{"trial": "a", "status": "error"}\n{"trial": "b", "status": "ok"}\n'
                    '{"trial": "a", "status": "ok"}\n{"trial": "c", "sta')
    recs, bad = read_results(path)
    assert bad == 1 and recs == {"a": {"trial": "a", "status": "ok"}, "b": {"trial": "b", "status": "ok"}}
    assert read_results(tmp_path / "absent.jsonl") == ({}, 0)


def test_two_workers_match_one(tmp_path, ref_run):
    ref = records(ref_run[1])
    methods = {k: METHODS[k] for k in ("none", "fqt", "sgd")}
    cfg = load_config(write(tmp_path, config_text(seeds=(0,), methods=methods)))
    assert {t.id for t in expand(cfg)} <= set(ref)  # the same trials as in the serial run
    summary = run_config(cfg, tmp_path / "run", workers=2, show_progress=False)
    assert summary.ran == 3 and summary.failed == 0
    got = records(tmp_path / "run")
    assert len(got) == 3
    for tid, rec in got.items():
        assert comparable(rec) == comparable(ref[tid])
    with pytest.raises(ValueError, match="workers"):
        run_config(cfg, tmp_path / "run", workers=0, show_progress=False)


def test_ray_matches_serial(tmp_path, ref_run):
    ray = pytest.importorskip("ray")
    ref = records(ref_run[1])
    cfg = load_config(write(tmp_path, config_text(seeds=(0,), methods={k: METHODS[k] for k in ("none", "fqt")})))
    try:
        summary = run_config(cfg, tmp_path / "run", use_ray=True, show_progress=False)
    finally:
        ray.shutdown()
    assert summary.ran == 2 and summary.failed == 0
    got = records(tmp_path / "run")
    assert len(got) == 2
    for tid, rec in got.items():
        assert comparable(rec) == comparable(ref[tid])


# -- devices and costs ----------------------------------------------------------------------------------------


def test_method_that_does_not_fit_is_recorded_not_run(tmp_path, one_torch_thread):
    es = METHODS["es"]
    methods = {"none": METHODS["none"], "es-big": es + "\nbuffer = 8000", "es-huge": es + "\nbuffer = 100000"}
    head = HEAD.replace("[training]", '[devices]\nprofiles = ["cortex-m4", "stm32h743"]\n\n[training]')
    cfg = load_config(write(tmp_path, config_text(seeds=(0,), methods=methods, head=head)))
    out = tmp_path / "run"
    summary = run_config(cfg, out, show_progress=False)
    assert summary.ran == 3 and summary.failed == 0
    recs = {r["method"]: r for r in records(out).values()}
    assert recs["none"]["status"] == "ok" and [d["fits"] for d in recs["none"]["devices"]] == [True, True]
    sample_bytes = 64 + 1  # an 8x8 uint8 image and its label
    for label, buffer, fits_h7 in (("es-big", 8000, True), ("es-huge", 100_000, False)):
        r = recs[label]
        assert r["status"] == "does-not-fit" and r["error"] is None
        assert "RAM" in r["why"] and "nrf52840" in r["why"]
        assert r["accuracy"]["final"] is None
        assert r["accuracy"]["clean"] == recs["none"]["accuracy"]["clean"]
        assert r["accuracy"]["shifted"] == recs["none"]["accuracy"]["shifted"]
        led = r["ledger"]
        assert led["train_ram_bytes"] > M4_SRAM and led["train_ram_bytes"] > buffer * sample_bytes
        assert led["forward_passes"] is None and led["energy_j"] is None and r["curve"] == []
        m4, h7 = r["devices"]
        assert (m4["device"], m4["fits"], m4["sram_bytes"]) == ("nrf52840", False, M4_SRAM)
        assert h7["device"] == "stm32h743" and h7["fits"] is fits_h7 and m4["ram_bytes"] == led["train_ram_bytes"]
        trainer = make_trainer("es", r["config"]["method"]["settings"], r["config"]["training"])
        assert trainer.buffer == buffer
    with open(out / "results.csv", newline="") as f:
        assert sorted(row["status"] for row in csv.DictReader(f)) == ["does-not-fit", "does-not-fit", "ok"]
    again = run_config(cfg, out, show_progress=False)  # a settled answer: not retried
    assert again.ran == 0 and again.skipped == 3


def test_costs_by_hand(ref_run):
    ref = records(ref_run[1])
    recs = {r["method"]: r for r in ref.values() if r["seed"] == 0}
    world = build_world(recs["none"]["config"], cache_dir=ref_run[1] / "cache")  # the cached deployed model
    model = world.model
    assert recs["none"]["accuracy"]["clean"] == world.clean and recs["none"]["accuracy"]["shifted"] == world.shifted
    m4 = get_device("cortex-m4")
    per_mac_j, per_mac_s = m4.cycles_per_mac * m4.energy_per_cycle_j, m4.cycles_per_mac / m4.clock_hz
    infer_peak = inference_plan(model).peak_bytes()

    none = recs["none"]
    led = none["ledger"]
    assert led["forward_passes"] == 0 and led["weight_writes"] == 0 and led["macs"] == 0
    assert none["samples_seen"] == 0 and none["accuracy"]["final"] == none["accuracy"]["shifted"]
    assert led["train_ram_bytes"] == infer_peak and led["extra_memory_bytes"] == 0
    assert none["per_sample"] == {"macs": None, "energy_j": None, "latency_s": None}

    fqt = recs["fqt"]
    led, ps, n = fqt["ledger"], fqt["per_sample"], fqt["samples_seen"]
    assert n == 64 and led["forward_passes"] == 64  # max_samples caps one epoch
    assert led["macs_forward"] == 64 * MLP_MACS and led["macs"] == led["macs_forward"] + led["macs_backward"] > 0
    assert ps["macs"] * n == pytest.approx(led["macs"], rel=1e-12)
    assert led["energy_j"] == pytest.approx(ps["energy_j"] * n, rel=1e-12)
    assert led["energy_j"] == pytest.approx(led["macs"] * per_mac_j, rel=1e-9)
    assert led["latency_s"] == pytest.approx(led["macs"] * per_mac_s, rel=1e-9)
    trainer = make_trainer("fqt", fqt["config"]["method"]["settings"], fqt["config"]["training"])
    assert trainer.batch == 8 and trainer.lam_max == 0.1
    assert led["train_ram_bytes"] == ram_need("fqt", trainer, model)[0] == trainer.memory(model)["train_ram_bytes"]
    assert led["extra_memory_bytes"] == led["train_ram_bytes"] - infer_peak
    assert 0 < fqt["update_rate"] <= 0.1 and led["weight_writes"] > 0  # dynamic partial updates: <= 10% of rows

    es = recs["es"]
    led, n = es["ledger"], es["samples_seen"]
    per_generation = 4 * 16  # population x batch
    generations = math.ceil(2000 / per_generation)  # until the budget is spent
    assert led["forward_passes"] == generations * per_generation >= 2000
    # 8 samples arrive per generation; the first waits for a full mini-batch of 16
    assert n == 8 * (generations + 1) and n % 8 == 0
    assert led["macs"] == led["forward_passes"] * MLP_MACS and led["macs_backward"] == 0
    assert 0 < led["max_writes_per_cell"] <= generations
    assert led["energy_j"] == pytest.approx(es["per_sample"]["energy_j"] * n, rel=1e-12)
    assert led["energy_j"] == pytest.approx(led["macs"] * per_mac_j, rel=1e-5)  # per-sample MACs are rounded
    assert [p["forward_passes"] for p in es["curve"]] == [0, 1024, 2048]  # eval marks at 1000 and 2000

    sgd = recs["sgd"]
    led = sgd["ledger"]
    assert sgd["samples_seen"] == 64 and led["forward_passes"] == 64
    assert 0 < led["max_writes_per_cell"] <= 64 and led["weight_writes"] > 0 and 0 < led["mean_write_density"] <= 1

    back = recs["backprop"]
    assert back["samples_seen"] == 64 and back["ledger"]["forward_passes"] == 64 and 0 <= back["deployed_final"] <= 1
    for r in (fqt, es, sgd, back):
        assert len(r["curve"]) == 3 and r["curve"][-1]["accuracy"] == r["accuracy"]["final"]
    for r in (fqt, es, sgd):  # before training: the deployed model as it is, integer-exact
        assert r["curve"][0]["accuracy"] == r["accuracy"]["shifted"]
    assert [p["samples"] for p in fqt["curve"]] == [0, 32, 64]


# -- the command line -----------------------------------------------------------------------------------------


def test_cli_run_and_report(tmp_path, capsys, one_torch_thread):
    cfg = write(tmp_path, config_text(seeds=(0,), methods={k: METHODS[k] for k in ("none", "fqt")}))
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 0
    assert "2 trials: 0 already done, 2 run now (0 failed)" in capsys.readouterr().out
    assert len(records(out)) == 2
    assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 0
    assert "2 trials: 2 already done, 0 run now" in capsys.readouterr().out
    assert main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "fqt" in report and (out / "report.html").exists()

    other = write(tmp_path, cfg.read_text().replace("rate = 0.1", "rate = 0.5"), "other.toml")
    assert main(["run", str(other), "--out", str(out), "--no-progress"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["run", str(other), "--out", str(out), "--no-progress", "--force"]) == 0
    assert (out / "superseded-1" / RESULTS).exists() and (out / "superseded-1" / "report.md").exists()


def test_cli_config_error_is_status_2_with_location(tmp_path, capsys):
    text = config_text().replace("eval_points = 2\n", "eval_points = 2\nestimate_fast = true\n")
    bad = write(tmp_path, text)
    assert main(["run", str(bad), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:16:" in err and "estimate_fast" in err and "error" in err
    assert not (tmp_path / "run").exists()
    assert main(["run", str(tmp_path / "missing.toml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_unknown_dataset_is_refused_at_load_time(tmp_path):
    bad = write(tmp_path, config_text(seeds=(0,), methods={"none": METHODS["none"]}).replace(
        'dataset = "digits"', 'dataset = "nosuchdata"'))
    with pytest.raises(ConfigError, match=r":\d+: \[\[panels\]\] #1 dataset 'nosuchdata'"):
        load_config(bad)


def test_non_finite_number_is_refused(tmp_path):
    bad = write(tmp_path, config_text(seeds=(0,), methods={"lr": 'kind = "lowrank"\nmethod = "sgd"\nmax_cond = inf'}))
    with pytest.raises(ConfigError, match="max_cond must be a finite number"):
        load_config(bad)


def test_second_run_on_the_same_directory_is_refused(tmp_path):
    import fcntl

    cfg = load_config(write(tmp_path, config_text(seeds=(0,), methods={"none": METHODS["none"]})))
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        with pytest.raises(RunDirError, match="in use by another"):
            run_config(cfg, out, show_progress=False)


def test_cli_failed_trial_is_status_1(tmp_path, capsys, one_torch_thread):
    cfg = write(tmp_path, config_text(seeds=(0,), methods={"none": METHODS["none"]}).replace(
        'dataset = "digits"', 'dataset = "digits"\ntask = "transfer"\nsource_classes = [99]'))
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 1
    assert "(1 failed)" in capsys.readouterr().out

"""Experiment configs: one TOML file names the question (model, data, shift, device, methods, seeds).

A config is read with :func:`load_config` into a :class:`RunConfig`, and every key is checked against
the schema below before anything runs: an unknown key or a value of the wrong type is an error that
names the file, the line and the key. Layout::

    [experiment]           name, description, seeds = [0, 1, 2]
    [model]                archs = ["cnn"], format = "uint8", pretrain_epochs = 30
    [training]             protocol ("offline" | "online"), params, epochs, batch, es_budget, samples, ...
    [devices]              profiles = ["cortex-m4", ...] (the first is the budget), nvm = "rram"
    [[panels]]             dataset, task ("shift" | "transfer" | "scratch"), shifts = [...], optional
                           params / epochs overrides; one or more
    [methods.<label>]      kind = "none" | "backprop" | "es" | "lowrank" | "fqt", then that kind's settings
    [quick]                overrides applied by ``--quick`` (keys of [training] and [model], and seeds)

Method settings are the trainers' own fields (``ESTrainer``, ``NVMTrainer``, ``FQTTrainer``), so a
config says exactly what the Python API would; :func:`method_settings` lists them per kind.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..train.es.trainer import ESTrainer
from ..train.lowrank.trainer import NVMTrainer

KINDS = ("none", "backprop", "es", "lowrank", "fqt")
PROTOCOLS = ("offline", "online")
TASKS = ("shift", "transfer", "scratch")

_STR, _INT, _FLOAT, _BOOL = "a string", "an integer", "a finite number", "true or false"
_STRS, _INTS = "a list of strings", "a list of integers"

SECTIONS: dict[str, dict[str, str]] = {
    "experiment": {"name": _STR, "description": _STR, "seeds": _INTS},
    "model": {"archs": _STRS, "format": _STR, "pretrain_epochs": _INT},
    "training": {"protocol": _STR, "params": _STR, "epochs": _INT, "batch": _INT, "es_budget": _INT,
                 "es_arrive": _INT, "samples": _INT, "max_samples": _INT, "eval_points": _INT, "window": _INT,
                 "run_length": _INT,
                 "analog": _STR, "digital": _STR, "backprop_lr": _FLOAT},
    "devices": {"profiles": _STRS, "nvm": _STR},
    "panels": {"name": _STR, "dataset": _STR, "task": _STR, "shifts": _STRS, "params": _STR, "epochs": _INT,
               "source_classes": _INTS},
}
"""Section -> key -> expected type (as the error message words it)."""

DEFAULTS: dict[str, dict[str, Any]] = {
    "experiment": {"name": None, "description": "", "seeds": [0]},
    "model": {"archs": ["cnn"], "format": "uint8", "pretrain_epochs": 30},
    "training": {"protocol": "offline", "params": "last:2", "epochs": 3, "batch": 8, "es_budget": 200_000,
                 "es_arrive": 8, "samples": 2000, "max_samples": 0, "eval_points": 8, "window": 100, "run_length": 10,
                 "analog": "analog:4@10", "digital": "digital:1e-3@10", "backprop_lr": 3e-3},
    "devices": {"profiles": ["cortex-m4"], "nvm": None},
}

QUICK: dict[str, Any] = {"pretrain_epochs": 5, "epochs": 1, "es_budget": 4000, "samples": 200, "max_samples": 256,
                         "eval_points": 3}
"""What ``--quick`` shrinks every trial to (before the config's own ``[quick]`` table), and one seed."""

_FQT_EXTRA = {"rate": _FLOAT, "optimizer": _STR, "lr": _FLOAT, "momentum": _FLOAT}
_COMMON = {"kind": _STR, "params": _STR}


def _field_types(cls: type, skip: tuple[str, ...] = ()) -> dict[str, str]:
    out = {}
    for f in fields(cls):
        if f.name in skip:
            continue
        t = str(f.type)
        out[f.name] = (_BOOL if "bool" in t else _INT if t.startswith("int") else _FLOAT if "float" in t
                       else _STR)
    return out


def method_settings(kind: str) -> dict[str, str]:
    """The settings a method of ``kind`` accepts (key -> expected type)."""
    if kind == "es":
        return {**_COMMON, **_field_types(ESTrainer), "budget": _INT}  # budget: forward passes, >= 1
    if kind == "lowrank":
        return {**_COMMON, **_field_types(NVMTrainer, skip=("params",))}
    if kind == "fqt":
        return {**_COMMON, "precision": _STR, "lam_min": _FLOAT, "lam_max": _FLOAT, "ranges": _STR,
                "range_rate": _FLOAT, "error_range": _FLOAT, "batch": _INT, **_FQT_EXTRA}
    if kind == "backprop":
        return {**_COMMON, "lr": _FLOAT, "epochs": _INT}
    if kind == "none":
        return {"kind": _STR}
    raise ValueError(f"unknown method kind {kind!r}; expected one of {KINDS}")


class ConfigError(ValueError):
    """A config problem, located: ``file:line: message``."""


@dataclass(frozen=True)
class Panel:
    """One dataset/task and the shifts its trials meet."""

    name: str
    dataset: str
    task: str
    shifts: tuple[str, ...]
    params: str | None = None
    epochs: int | None = None
    source_classes: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Method:
    label: str
    kind: str
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunConfig:
    """A checked config; ``raw`` is the parsed TOML, ``path`` where it came from."""

    path: Path
    name: str
    description: str
    seeds: tuple[int, ...]
    model: dict[str, Any]
    training: dict[str, Any]
    devices: dict[str, Any]
    panels: tuple[Panel, ...]
    methods: tuple[Method, ...]
    quick: bool = False
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    def fingerprint(self) -> str:
        """A hash of everything that decides the trials (not the file's path or comments)."""
        body = {"seeds": self.seeds, "model": self.model, "training": self.training, "devices": self.devices,
                "panels": [p.__dict__ for p in self.panels],
                "methods": [[m.label, m.kind, m.settings] for m in self.methods], "quick": self.quick}
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=list).encode()).hexdigest()[:16]


class _Lines:
    """Where keys sit in a TOML file: tomllib gives no positions, so scan the text for table
    headers and ``key =`` lines (enough for the flat tables configs use)."""

    _header = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    _key = re.compile(r"^\s*(\"[^\"]+\"|'[^']+'|[A-Za-z0-9_\-]+)\s*=")

    def __init__(self, text: str) -> None:
        self.tables: dict[tuple[str, int], int] = {}
        self.keys: dict[tuple[str, int, str], int] = {}
        counts: dict[str, int] = {}
        table, index = "", 0
        for n, line in enumerate(text.splitlines(), start=1):
            m = self._header.match(line)
            if m:
                table = ".".join(p.strip().strip("\"'") for p in m.group(2).split("."))
                index = counts.get(table, 0)
                if m.group(1) == "[[":
                    counts[table] = index + 1
                self.tables.setdefault((table, index), n)
                continue
            m = self._key.match(line)
            if m:
                self.keys.setdefault((table, index, m.group(1).strip("\"'")), n)

    def of(self, table: str, key: str | None = None, index: int = 0) -> int | None:
        if key is not None and (table, index, key) in self.keys:
            return self.keys[(table, index, key)]
        return self.tables.get((table, index))


def _check_type(value: Any, expected: str) -> bool:
    if expected == _STR:
        return isinstance(value, str)
    if expected == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected == _FLOAT:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if expected == _BOOL:
        return isinstance(value, bool)
    if expected == _STRS:
        return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)
    if expected == _INTS:
        return (isinstance(value, list) and bool(value)
                and all(isinstance(v, int) and not isinstance(v, bool) for v in value))
    raise AssertionError(expected)


class _Checker:
    def __init__(self, path: Path, text: str) -> None:
        self.path, self.lines = path, _Lines(text)

    def fail(self, message: str, table: str = "", key: str | None = None, index: int = 0) -> ConfigError:
        line = self.lines.of(table, key, index)
        where = f"{self.path}:{line}" if line else str(self.path)
        return ConfigError(f"{where}: {message}")

    def table(self, data: dict, table: str, schema: dict[str, str], index: int = 0, label: str | None = None) -> dict:
        label = label or f"[{table}]"
        for key, value in data.items():
            if key not in schema:
                raise self.fail(f"unknown key {key!r} in {label}; expected one of {sorted(schema)}", table, key,
                                index)
            if isinstance(value, dict):
                raise self.fail(f"{label} {key} must be {schema[key]}, got a table", table, key, index)
            if not _check_type(value, schema[key]):
                raise self.fail(f"{label} {key} must be {schema[key]}, got {type(value).__name__} {value!r}",
                                table, key, index)
        return data


def _float_settings(settings: dict[str, Any], schema: dict[str, str]) -> dict[str, Any]:
    return {k: float(v) if schema.get(k) == _FLOAT else v for k, v in settings.items()}


SHIPPED = Path(__file__).resolve().parents[1] / "configs"
"""The shipped configs (``edgetrain/configs/*.toml``): package data, so ``edgetrain run compare`` finds
them in an installed wheel as well as in a source checkout."""


def find_config(name: str | Path) -> Path:
    """``name`` itself when it is a file, else the shipped config of that name (``compare`` ->
    ``edgetrain/configs/compare.toml``); an error lists the shipped ones."""
    path = Path(name)
    if path.is_file() or path.suffix:
        return path
    shipped = SHIPPED / f"{path.name}.toml"
    if shipped.is_file():
        return shipped
    known = sorted(p.stem for p in SHIPPED.glob("*.toml")) if SHIPPED.is_dir() else []
    raise ConfigError(f"{name}: no such config file, and not a shipped config (shipped: {known or 'none found'})")


def load_config(path: str | Path, quick: bool = False, data_dir: str | None = None) -> RunConfig:
    """Read and check ``path``; with ``quick`` apply :data:`QUICK`, then the file's ``[quick]`` table,
    and keep the first seed only. ``data_dir`` is where datasets not built in are looked for."""
    path = find_config(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    ck = _Checker(path, text)
    allowed = set(SECTIONS) | {"methods", "quick"}
    for key in raw:
        if key not in allowed:
            where = (key, None) if isinstance(raw[key], dict) else ("", key)
            raise ck.fail(f"unknown section or key {key!r}; expected the sections {sorted(allowed)}", *where)
    parts: dict[str, dict[str, Any]] = {}
    for section in ("experiment", "model", "training", "devices"):
        data = raw.get(section, {})
        if not isinstance(data, dict):
            raise ck.fail(f"{section!r} must be a table ([{section}])", section)
        parts[section] = {**DEFAULTS[section], **ck.table(data, section, SECTIONS[section])}
    q = raw.get("quick", {})
    if not isinstance(q, dict):
        raise ck.fail("'quick' must be a table ([quick])", "quick")
    ck.table(q, "quick", {**SECTIONS["training"], **SECTIONS["model"], "seeds": _INTS})
    if quick:
        for key, value in QUICK.items():  # shrink, never grow (max_samples 0 = no cap)
            section = "model" if key in SECTIONS["model"] else "training"
            current = parts[section][key]
            parts[section][key] = value if key == "max_samples" and current == 0 else min(current, value)
        for key, value in q.items():  # the config's own quick settings win
            section = "experiment" if key == "seeds" else "model" if key in SECTIONS["model"] else "training"
            parts[section][key] = value
        parts["experiment"]["seeds"] = parts["experiment"]["seeds"][:1]

    exp, training = parts["experiment"], parts["training"]
    from_quick = set(q) if quick else set()

    def where(section: str, key: str) -> tuple[str, str]:
        return ("quick", key) if key in from_quick else (section, key)

    if len(set(exp["seeds"])) != len(exp["seeds"]) or any(s < 0 for s in exp["seeds"]):
        raise ck.fail(f"[experiment] seeds must be distinct integers >= 0, got {exp['seeds']}",
                      *where("experiment", "seeds"))
    if training["protocol"] not in PROTOCOLS:
        raise ck.fail(f"[training] protocol must be one of {PROTOCOLS}, got {training['protocol']!r}",
                      *where("training", "protocol"))
    if training["max_samples"] < 0:
        raise ck.fail("[training] max_samples must be >= 0 (0: no cap)", *where("training", "max_samples"))
    for key in ("epochs", "batch", "es_budget", "es_arrive", "samples", "eval_points", "window", "run_length"):
        if training[key] < 1:
            raise ck.fail(f"[training] {key} must be >= 1, got {training[key]}", *where("training", key))
    if parts["model"]["pretrain_epochs"] < 0:
        raise ck.fail("[model] pretrain_epochs must be >= 0", *where("model", "pretrain_epochs"))
    _check_values(ck, parts)

    raw_panels = raw.get("panels")
    if not isinstance(raw_panels, list) or not raw_panels or not all(isinstance(p, dict) for p in raw_panels):
        raise ck.fail("a config needs at least one [[panels]] table (dataset, task, shifts)", "panels")
    panels = []
    for i, p in enumerate(raw_panels):
        ck.table(p, "panels", SECTIONS["panels"], i, label=f"[[panels]] #{i + 1}")
        if "dataset" not in p:
            raise ck.fail(f"[[panels]] #{i + 1} needs a dataset", "panels", None, i)
        _check_dataset(ck, p["dataset"], i, data_dir)
        task = p.get("task", "shift")
        if task not in TASKS:
            raise ck.fail(f"[[panels]] #{i + 1} task must be one of {TASKS}, got {task!r}", "panels", "task", i)
        shifts = tuple(p.get("shifts", ["none"]))
        _check_shifts(ck, shifts, training, i)
        name = p.get("name") or f"{p['dataset']} {task}"
        if name in {q.name for q in panels}:
            raise ck.fail(f"two panels are called {name!r}; give them distinct names", "panels", "name", i)
        if p.get("epochs", 1) < 1:
            raise ck.fail(f"[[panels]] #{i + 1} epochs must be >= 1", "panels", "epochs", i)
        src = p.get("source_classes")
        panels.append(Panel(name, p["dataset"], task, shifts, p.get("params"), p.get("epochs"),
                            None if src is None else tuple(src)))

    raw_methods = raw.get("methods")
    if not isinstance(raw_methods, dict) or not raw_methods:
        raise ck.fail("a config needs at least one [methods.<label>] table", "methods")
    methods = []
    for label, m in raw_methods.items():
        table = f"methods.{label}"
        if not isinstance(m, dict):
            raise ck.fail(f"methods.{label} must be a table ([methods.{label}])", "methods", label)
        kind = m.get("kind")
        if kind not in KINDS:
            raise ck.fail(f"[{table}] kind must be one of {KINDS}, got {kind!r}", table, "kind")
        schema = method_settings(kind)
        ck.table(m, table, schema)
        settings = _float_settings({k: v for k, v in m.items() if k != "kind"}, schema)
        if quick:  # a method's own ES budget or epochs shrink like the [training] ones
            if "budget" in settings:
                settings["budget"] = min(settings["budget"], training["es_budget"])
            if "epochs" in settings:
                settings["epochs"] = min(settings["epochs"], training["epochs"])
        try:
            _validate_method(kind, settings, parts, training["protocol"])
        except (ValueError, TypeError) as e:
            raise ck.fail(f"[{table}]: {e}", table, None) from None
        methods.append(Method(label, kind, settings))
    return RunConfig(path=path, name=exp["name"] or path.stem, description=exp["description"],
                     seeds=tuple(exp["seeds"]), model=parts["model"], training=training, devices=parts["devices"],
                     panels=tuple(panels), methods=tuple(methods), quick=quick, raw=raw)


def _check_values(ck: _Checker, parts: dict[str, dict[str, Any]]) -> None:
    from ..device import get_device
    from ..model.arch import ARCHS
    from ..model.scheme import parse_scheme
    from ..shift import parse_drift

    for arch in parts["model"]["archs"]:
        if arch not in ARCHS:
            raise ck.fail(f"[model] archs: unknown architecture {arch!r}; expected some of {ARCHS}", "model", "archs")
    try:
        parse_scheme(parts["model"]["format"])
    except ValueError as e:
        raise ck.fail(f"[model] format: {e}", "model", "format") from None
    kinds = {"mcu", "fpga"}
    for name in parts["devices"]["profiles"]:
        try:
            dev = get_device(name)
        except (KeyError, ValueError) as e:
            raise ck.fail(f"[devices] profiles: {e}", "devices", "profiles") from None
        if getattr(dev, "kind", None) not in kinds:
            raise ck.fail(f"[devices] profiles: {name!r} is a {dev.kind} profile; trials run on a microcontroller "
                          "or an FPGA (name NVM technologies with nvm = ...)", "devices", "profiles")
    nvm = parts["devices"]["nvm"]
    if nvm is not None:
        try:
            dev = get_device(nvm)
        except (KeyError, ValueError) as e:
            raise ck.fail(f"[devices] nvm: {e}", "devices", "nvm") from None
        if dev.kind != "nvm":
            raise ck.fail(f"[devices] nvm: {nvm!r} is a {dev.kind} profile, not a non-volatile memory", "devices",
                          "nvm")
    for key in ("analog", "digital"):
        try:
            parse_drift(parts["training"][key])
        except ValueError as e:
            raise ck.fail(f"[training] {key}: {e}", "training", key) from None


def _check_dataset(ck: _Checker, name: str, i: int, data_dir: str | None) -> None:
    """Refuse a dataset name that is neither built in nor a UEA/UCR set we can find (MNIST-family
    files are checked when loaded: they may be downloaded then)."""
    from ..data.registry import DATASETS, find_ts

    if name in DATASETS:
        return
    try:
        find_ts(name.removeprefix("ts:"), data_dir)
    except (FileNotFoundError, ValueError) as e:
        raise ck.fail(f"[[panels]] #{i + 1} dataset {name!r}: not built in ({sorted(DATASETS)}) and not a .ts set "
                      f"found on this machine: {e}", "panels", "dataset", i) from None


ONLINE_SCENARIOS = ("control", "distribution", "analog-drift", "digital-drift")


def _check_shifts(ck: _Checker, shifts: tuple[str, ...], training: dict, i: int) -> None:
    from ..shift import parse_shift

    for s in shifts:
        if training["protocol"] == "online":
            if s not in ONLINE_SCENARIOS:
                raise ck.fail(f"[[panels]] #{i + 1} shifts: the online protocol's scenarios are {ONLINE_SCENARIOS}, "
                              f"got {s!r}", "panels", "shifts", i)
            continue
        try:
            parse_shift(s)
        except ValueError as e:
            raise ck.fail(f"[[panels]] #{i + 1} shifts: {e}", "panels", "shifts", i) from None


def _validate_method(kind: str, settings: dict[str, Any], parts: dict, protocol: str) -> None:
    """Build the method's trainer once so bad settings fail at load time, not mid-run."""
    from .methods import make_trainer

    if protocol == "online" and kind not in ("none", "lowrank"):
        raise ValueError(f"the online protocol (predict, then learn one sample) runs 'none' and 'lowrank' methods; "
                         f"{kind!r} trains from the offline split")
    if kind == "fqt" and not parts["model"]["format"].startswith("uint8"):
        raise ValueError(f"fqt trains uint8 per-tensor models; [model] format is {parts['model']['format']!r}")
    for key in ("budget", "epochs"):
        if key in settings and settings[key] < 1:
            raise ValueError(f"{key} must be >= 1, got {settings[key]}")
    make_trainer(kind, settings, parts["training"])

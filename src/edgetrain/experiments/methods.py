"""One trial, run: build the method's trainer, check it fits the budget device, train, cost, record.

Every method meets the same world (``world.py``) and reports into the same ledger, so results line
up: accuracy clean / shifted (no adaptation) / final, forward passes and MACs spent, the RAM it needs
on each device, weight writes, and latency and energy per training sample on each microcontroller
profile (MACs x the profile's cycles and energy per MAC).

Protocols (``[training] protocol``):

* ``offline``: labelled shifted samples arrive from the adaptation split (reshuffled, shift drawn
  afresh on every pass). Gradient methods (``fqt``, ``lowrank``, ``backprop``) step on ``epochs``
  passes' worth of samples (``fqt``: mini-batches of ``batch``; ``lowrank``: one sample at a time,
  as the NVM method is defined; ``backprop``: Adam on batches of 32, the float upper bound), capped
  at ``max_samples`` when that is set (``--quick`` does). ``es`` methods spend a budget of forward
  passes instead, ``es_arrive`` new samples entering the device's buffer per generation (AbdulQader
  et al.'s forward-only setting). Accuracy is measured on the shifted test split at ``eval_points``
  marks (host-side, not on the ledger).
* ``online``: the stream of ``lrt-demo`` (Gural et al.): predict, then learn, one sample at a time,
  under a scenario (control, distribution switching, analog or digital weight drift); the final
  accuracy is the online accuracy over the stream.

RAM needed on a device, by kind (the basis is written into every record):

* ``none``: the inference plan's peak.
* ``fqt``: the trainer's own training plan (``cost.training_memory``), as ``fqt-demo`` uses.
* ``lowrank``: the training plan for per-sample backprop (uint8 activations, float32 errors, no
  gradient buffer or optimizer state) plus the Kronecker-sum accumulators (``aux_bytes``).
* ``es``: inference peak + the trained weights (held in RAM to be rewritten) + the trainer's extra
  memory (sample buffer, generator states, fitness registers).
* ``backprop``: the float32 plan at its batch of 32 with Adam's two moments. It is the host-side
  upper bound, so it runs even where it would not fit; it sees the inputs the device sees (the
  shifted samples through the model's input quantizer) and is scored as a float network.

On an FPGA profile only ``es`` is costed (its training unit's LUT/FF/DSP/BRAM estimate); the other
methods need a backward pass that an inference-only engine does not have, and are marked so.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from typing import Any

from ..cost import Ledger, fits, flash_bytes, inference_plan
from ..cost.energy import energy_j, latency_s
from ..cost.memory import param_bytes
from ..cost.training_memory import training_flash_bytes, training_memory
from ..cost.writes import WriteCounter, lifetime_steps, write_energy_j, writes_ledger
from ..device import get_device
from ..device.profiles import FPGA, MCU
from ..report import make_record
from ..train.backprop import BackpropFinetune, float_net_accuracy
from ..train.es.hardware import es_hardware
from ..train.es.perturb import derive_seed
from ..train.es.trainer import ESTrainer
from ..train.fqt.optimizer import Optimizer
from ..train.fqt.trainer import FQTTrainer
from ..train.lowrank.trainer import NVMTrainer
from ..train.protocol import Batch
from .world import World, accuracy_q, arrivals, build_world, model_digest, quantized

Progress = Callable[[int, int], None]
BACKPROP_BATCH = 32
"""Mini-batch of the float backprop reference (Adam)."""


def make_trainer(kind: str, settings: dict[str, Any], training: dict[str, Any], params: str | None = None):
    """The trainer a method table describes (``None`` for ``none``); ``params`` defaults to the
    method's own, then ``training['params']``."""
    s = dict(settings)
    params = s.pop("params", None) or params or training["params"]
    if kind == "none":
        return None
    if kind == "es":
        s.pop("budget", None)
        return ESTrainer(params=params, **s)
    if kind == "lowrank":
        return NVMTrainer(params=params, **s)
    if kind == "backprop":
        return BackpropFinetune(params=params, lr=s.get("lr", training["backprop_lr"]))
    if kind == "fqt":
        rate = s.pop("rate", None)
        if rate is not None:
            if not 0 < rate <= 1:
                raise ValueError(f"rate must lie in (0, 1], got {rate}")
            s.setdefault("lam_min", 1.0 if rate == 1 else 0.0)
            s.setdefault("lam_max", rate)
        opt = Optimizer(s.pop("optimizer", "sgd"), s.pop("lr", 0.1), s.pop("momentum", 0.0))
        s.setdefault("batch", training["batch"])
        return FQTTrainer(params=params, optimizer=opt, **s)
    raise ValueError(f"unknown method kind {kind!r}")


def ram_need(kind: str, trainer, model) -> tuple[int, int, str]:
    """``(ram_bytes, flash_bytes, basis)`` of running ``trainer`` on ``model`` (see the module docstring)."""
    infer = inference_plan(model).peak_bytes()
    flash = flash_bytes(model)
    names = () if trainer is None else trainer.writes(model)
    if kind == "none" or not names:
        return infer, flash, "inference plan peak (nothing trained)"
    if kind == "fqt":
        mem = trainer.memory(model)
        return mem["train_ram_bytes"], mem["flash_bytes"], f"{trainer.precision} training plan (FQT)"
    if kind == "lowrank":
        plan = training_memory(model, names, "mixed", accumulate=1, optimizer="sgd")
        at_peak = plan["by_kind"]
        base = plan["train_ram_bytes"] - at_peak.get("gradient", 0) - at_peak.get("optimizer", 0)
        return (base + sum(trainer.aux_bytes(model).values()), training_flash_bytes(model, "mixed"),
                "per-sample backprop plan (uint8 activations, float32 errors) + Kronecker-sum accumulators")
    if kind == "es":
        extra = trainer.extra_memory(model)["total"]
        return (infer + param_bytes(model, names) + extra, flash,
                "inference peak + trained weights in RAM + ES extra memory")
    if kind == "backprop":
        plan = training_memory(model, names, "float32", accumulate=1, optimizer="sgd", momentum=True,
                               batch=BACKPROP_BATCH)
        second_moment = 4 * sum(model.param(n)[0].numel() for n in names)
        return (plan["train_ram_bytes"] + second_moment, plan["flash_bytes"],
                f"float32 training plan at batch {BACKPROP_BATCH} with Adam's two moments")
    raise ValueError(kind)


def device_rows(kind: str, trainer, model, profiles: list[str], macs_per_sample: float | None) -> list[dict]:
    """Per device: does the method fit, what RAM it needs, latency and energy per training sample."""
    ram, flash, basis = ram_need(kind, trainer, model)
    rows = []
    for name in profiles:
        dev = get_device(name)
        row: dict[str, Any] = {"device": dev.name, "profile": name, "kind": dev.kind,
                               "core": getattr(dev, "core", None), "ram_bytes": ram, "flash_bytes": flash,
                               "ram_basis": basis, "sram_bytes": getattr(dev, "sram_bytes", None),
                               "energy_per_sample_j": None, "latency_per_sample_s": None}
        if isinstance(dev, MCU):
            rep = fits(dev, ram_bytes=ram, flash_bytes=flash)
            row.update(fits=rep.ok, why=None if rep.ok else str(rep))
            if macs_per_sample is not None and integer_priced(kind, trainer):  # a mean: not rounded
                row.update(energy_per_sample_j=energy_j(1, dev) * macs_per_sample,
                           latency_per_sample_s=latency_s(1, dev) * macs_per_sample)
        elif isinstance(dev, FPGA):
            if kind == "es":
                hw = es_hardware(trainer, model, dev)
                row.update(fits=hw["max_fraction"] <= 1.0, fpga_fraction=hw["max_fraction"], fpga_total=hw["total"],
                           why=None if hw["max_fraction"] <= 1.0 else
                           f"training unit needs {hw['max_fraction']:.1%} of the part's scarcest resource")
            elif kind == "none":
                row.update(fits=True, why=None)
            else:
                row.update(fits=None, why="not costed: needs a backward pass, which an inference-only FPGA engine "
                                          "does not have")
        rows.append(row)
    return rows


def integer_priced(kind: str, trainer) -> bool:
    """Whether a method's MACs can be priced with the MCU profiles' cycles per MAC, which are for
    int8 kernels: ES (integer forward only), uint8 FQT and the NVM methods (whose device kernels are
    8/16-bit fixed point; our trainer computes their backward in float). Float backprop and FQT's
    float32/mixed precisions are not priced (null), as in ``fqt-demo``."""
    if kind == "backprop":
        return False
    return not (kind == "fqt" and trainer.precision != "uint8")


def _settings(trainer) -> dict:
    if trainer is None:
        return {}
    d = asdict(trainer) if is_dataclass(trainer) else {}
    return {k: (asdict(v) if is_dataclass(v) else v) for k, v in d.items()}


def run_trial(spec: dict, cache_dir=None, data_dir: str | None = None, download: bool = False,
              on_progress: Progress | None = None) -> dict:
    """Run the trial ``spec`` (see ``trials.expand``) and return its result record."""
    t0 = time.perf_counter()
    method, training = spec["method"], spec["training"]
    kind = method["kind"]
    trainer = make_trainer(kind, method["settings"], training)
    world = build_world(spec, cache_dir, data_dir, download)
    model = world.model
    profiles = list(spec["devices"]["profiles"])
    budget = device_rows(kind, trainer, model, profiles[:1], None)[0]
    common = {"method": method["label"], "dataset": world.dataset.name, "model": spec["arch"],
              "fmt": spec["format"], "shift": spec["shift"], "device": budget["device"], "seed": spec["seed"]}
    extra = {"kind": kind, "panel": spec["panel"]["name"], "task": spec["panel"]["task"],
             "model_sha256": model_digest(model),
             "protocol": training["protocol"], "settings": _settings(trainer),
             "trained": [] if trainer is None else list(trainer.writes(model)), "config": spec}
    if budget["fits"] is False and kind != "backprop":  # backprop is the host-side reference: always run
        rows = device_rows(kind, trainer, model, profiles, None)
        ledger = Ledger(train_ram_bytes=budget["ram_bytes"], flash_bytes=budget["flash_bytes"],
                        wall_s=time.perf_counter() - t0)
        return make_record(**common, accuracy={"clean": world.clean, "shifted": world.shifted, "final": None,
                                               "reference": None},
                           ledger=ledger.to_dict(extra=False), status="does-not-fit", error=None, why=budget["why"],
                           devices=rows, per_sample=None, curve=[], **extra)
    if training["protocol"] == "online":
        out = _online(trainer, world, spec, on_progress)
    else:
        out = _offline(kind, trainer, world, spec, on_progress)
    ledger: Ledger = out["ledger"]
    samples = out["samples"]
    per_sample_macs = None if not samples or ledger.macs is None else ledger.macs / samples
    rows = device_rows(kind, trainer, model, profiles, per_sample_macs)
    ram = rows[0]["ram_bytes"]
    extra_memory = ram - inference_plan(model).peak_bytes() if kind != "none" else 0
    energy = None if rows[0]["energy_per_sample_j"] is None else rows[0]["energy_per_sample_j"] * samples
    latency = None if rows[0]["latency_per_sample_s"] is None else rows[0]["latency_per_sample_s"] * samples
    ledger = ledger.replace(train_ram_bytes=ram, flash_bytes=rows[0]["flash_bytes"], extra_memory_bytes=extra_memory,
                            energy_j=energy, latency_s=latency, wall_s=time.perf_counter() - t0)
    nvm = _nvm(spec, out.get("state"), model)
    return make_record(
        **common, accuracy={"clean": world.clean, "shifted": out["shifted"], "final": out["final"], "reference": None},
        ledger=ledger.to_dict(extra=False), status="ok", error=None, devices=rows,
        per_sample={"macs": per_sample_macs, "energy_j": rows[0]["energy_per_sample_j"],
                    "latency_s": rows[0]["latency_per_sample_s"]},
        samples_seen=samples, curve=out["curve"], ledger_note="ledger: totals over the trial (energy and latency "
        "on the budget device); per_sample: one training sample", **out.get("extra", {}), nvm=nvm, **extra)


def _nvm(spec: dict, state, model) -> dict | None:
    name = spec["devices"].get("nvm")
    counter = getattr(state, "writes", None)
    if name is None or counter is None or not counter.counts:
        return None
    nvm = get_device(name)
    life = lifetime_steps(counter, nvm)
    return {"nvm": nvm.name, "write_energy_j": write_energy_j(counter, model, nvm),
            "lifetime_samples": None if math.isinf(life) else life}


def weight_cells(counter: WriteCounter | None) -> WriteCounter | None:
    """``counter`` restricted to weights: every kind's ledger counts weight writes only (FQT's trainer
    counts changed weights; biases live in SRAM), so ES's bias cells are left out here."""
    if counter is None:
        return None
    return WriteCounter({k: v for k, v in counter.counts.items() if k.endswith(".weight")}, counter.steps)


def _evaluator(kind: str, trainer, world: World):
    if kind == "backprop":
        return lambda state: float_net_accuracy(trainer.net(state), world.xs_test, world.y_test)
    if kind == "fqt":
        return lambda state: trainer.accuracy(state, world.q_test, world.y_test)
    return lambda state: accuracy_q(trainer.model(state), world.q_test, world.y_test)


def _offline(kind: str, trainer, world: World, spec: dict, on_progress: Progress | None) -> dict:
    training, seed = spec["training"], spec["seed"]
    if trainer is None:
        return {"ledger": Ledger(forward_passes=0, macs_forward=0, macs_backward=0, weight_writes=0,
                                 max_writes_per_cell=0),
                "samples": 0, "final": world.shifted, "shifted": world.shifted,
                "curve": [{"samples": 0, "forward_passes": 0, "accuracy": world.shifted}]}
    n = world.x.shape[0]
    if kind == "es":
        size, axis = training["es_arrive"], "forward_passes"
        total = spec["method"]["settings"].get("budget", training["es_budget"])
    else:
        size = {"fqt": getattr(trainer, "batch", 1), "lowrank": 1, "backprop": BACKPROP_BATCH}[kind]
        size = min(size, n)
        axis, total = "samples", spec["method"]["settings"].get("epochs", training["epochs"]) * n
        if training.get("max_samples"):
            total = min(total, training["max_samples"])
    stream = arrivals(world.x, world.y, world.shift, derive_seed(seed, 9), size)
    batches = quantized(world.model, stream, real=kind == "backprop")  # backprop: the values the device sees
    evaluate = _evaluator(kind, trainer, world)
    state = trainer.init(world.model, seed)
    marks = [math.ceil(total * (i + 1) / training["eval_points"]) for i in range(training["eval_points"])]
    ledger, done = Ledger(), {"samples": 0, "forward_passes": 0}
    curve = [{"samples": 0, "forward_passes": 0, "accuracy": evaluate(state)}]
    while done[axis] < total:
        xb, yb = next(batches)
        state, info = trainer.step(state, Batch(xb, yb))
        ledger = ledger + info.ledger
        done["samples"] += int(yb.shape[0])
        done["forward_passes"] += int(info.ledger.forward_passes or 0)
        while marks and done[axis] >= marks[0]:
            marks.pop(0)
            curve.append({**done, "accuracy": evaluate(state)})
        if on_progress is not None:
            on_progress(min(done[axis], total), total)
    counter = weight_cells(getattr(state, "writes", None))
    if counter is not None:
        ledger = ledger.replace(weight_writes=None, max_writes_per_cell=None, mean_write_density=None,
                                write_cell_steps=None) + writes_ledger(counter)
    extra = {}
    if kind == "backprop":
        extra["deployed_final"] = accuracy_q(trainer.model(state), world.q_test, world.y_test)
        extra["note"] = "float fine-tuning (Adam) of the same parameters: the upper bound; accuracy.final is the " \
                        "float network's, deployed_final after re-quantizing"
    if kind == "fqt":
        extra["update_rate"] = state.kept_rows / state.offered_rows if state.offered_rows else None
    return {"ledger": ledger, "samples": done["samples"], "final": curve[-1]["accuracy"], "shifted": world.shifted,
            "curve": curve, "state": state, "extra": extra}


def _online(trainer, world: World, spec: dict, on_progress: Progress | None) -> dict:
    from .lrt_demo import SCENARIOS as LRT_SCENARIOS
    from .lrt_demo import LRTDemoConfig, moving_average, run_online, scenario_drift, scenario_stream

    training, seed, scenario = spec["training"], spec["seed"], spec["shift"]
    cfg = LRTDemoConfig(samples=training["samples"], run_length=training["run_length"], analog=training["analog"],
                        digital=training["digital"], window=training["window"], seed=seed, progress=False, out=None)
    q, y, segments = scenario_stream(world.dataset, world.model, scenario, cfg)
    drift = scenario_drift(scenario, cfg)
    drift_seed = derive_seed(seed, LRT_SCENARIOS.index(scenario), 43)
    base = run_online(NVMTrainer(method="inference-only"), world.model, q, y, drift, drift_seed, seed)
    shifted = float(base["correct"].mean())
    if trainer is None:
        res = base
    else:
        class _Bar:  # run_online's progress hook, forwarded to ours
            def update(self, task, completed):
                if on_progress is not None:
                    on_progress(completed, q.shape[0])

        res = run_online(trainer, world.model, q, y, drift, drift_seed, seed, _Bar(), None)
    correct = res["correct"]
    ledger = res["ledger"]
    state = res["state"]
    counter = getattr(state, "writes", None)
    if counter is not None and counter.counts:
        ledger = ledger + writes_ledger(counter)
    else:
        ledger = ledger.replace(weight_writes=0, max_writes_per_cell=0)
    n = int(correct.shape[0])
    return {"ledger": ledger, "samples": n, "final": float(correct.mean()), "shifted": shifted, "state": state,
            "curve": [], "extra": {"online_curve": moving_average(correct, training["window"]),
                                   "online_accuracy_second_half": float(correct[n // 2:].mean()),
                                   "segments": segments, "drift": drift.name}}


__all__ = ["device_rows", "make_trainer", "ram_need", "run_trial"]

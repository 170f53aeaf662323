"""Tests of the forward-only ES trainer (``edgetrain.train.es``): trainer, fitness, hardware estimate.

The estimators are checked against step-by-step reproductions written here from the published
formulas, not from the trainer's own helpers: the noise is regenerated with ``draw`` from the
documented seed derivation, every member is evaluated by its own ``forward_int`` call, fitness is
``-cross_entropy`` from ``torch.nn.functional`` and ranks come from a sort. The remaining tests pin
the contract every trainer shares (protocol, untouched parameters, ledger counts, determinism), the
cost model (extra memory and FPGA size counted by hand) and that it learns on real data.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from edgetrain.cost.macs import inference_macs
from edgetrain.cost.writes import total_writes
from edgetrain.data import load_dataset
from edgetrain.device import get_device
from edgetrain.experiments.deploy import pretrain_and_deploy
from edgetrain.model import DeployedModel
from edgetrain.model.arch import build_float_net
from edgetrain.model.convert import convert
from edgetrain.model.forward import forward_int, quantize_input
from edgetrain.quant import dequantize, in_range, round_real
from edgetrain.shift import parse_shift
from edgetrain.threads import torch_threads
from edgetrain.train.es import trainer as trainer_module
from edgetrain.train.es.fitness import centered_ranks, fitness
from edgetrain.train.es.hardware import es_hardware, leap_xor_luts
from edgetrain.train.es.perturb import DISTRIBUTIONS, SOURCES, derive_seed, draw, draw_lowrank, lfsr_step
from edgetrain.train.es.trainer import ESState, ESTrainer
from edgetrain.train.protocol import Batch, Trainer
from edgetrain.train.select import select_params

MEMBER_KEY = 3  # the trainer's documented key for member seeds: derive_seed(seed, step, 3, member)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _deploy(arch: str) -> DeployedModel:
    g = torch.Generator().manual_seed(7)
    model, _ = convert(build_float_net(arch, (1, 8, 8), 10, seed=0), torch.rand((64, 1, 8, 8), generator=g),
                       "fixed16_6")
    return model


@pytest.fixture(scope="module")
def mlp() -> DeployedModel:
    return _deploy("mlp")


@pytest.fixture(scope="module")
def cnn() -> DeployedModel:
    return _deploy("cnn")


@pytest.fixture(scope="module")
def digits():
    """Digits and an mlp pre-trained for 5 epochs and deployed in fixed16_6 (about 2 s)."""
    with torch_threads(1):  # module fixtures start before the per-test one; two threads thrash a busy machine
        ds = load_dataset("digits")
        return ds, pretrain_and_deploy(ds, "mlp", epochs=5, show_progress=False).model


# -- helpers -------------------------------------------------------------------------------------

def raw_batch(model: DeployedModel, n: int, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x = quantize_input(model, torch.rand((n, *model.input_shape), generator=g))
    return Batch(x, torch.randint(0, model.output_shape[0], (n,), generator=g))


def batches(model: DeployedModel, n_batches: int, size: int, seed: int = 100) -> list[Batch]:
    return [raw_batch(model, size, seed + i) for i in range(n_batches)]


def run(trainer: ESTrainer, model: DeployedModel, stream: list[Batch], seed: int = 0):
    state = trainer.init(model, seed)
    infos = []
    for b in stream:
        state, info = trainer.step(state, b)
        infos.append(info)
    return state, infos


def params_of(model: DeployedModel) -> dict[str, torch.Tensor]:
    return {n: t.clone() for n, t, _ in model.params()}


def ref_fitness(model: DeployedModel, members: list[dict[str, torch.Tensor]], x: torch.Tensor, y: torch.Tensor,
                kind: str = "ce") -> torch.Tensor:
    """Each member evaluated by its own integer forward; ``-CE`` via F.cross_entropy, or accuracy."""
    out = []
    for m in members:
        logits = forward_int(model.with_params(m), x, overflow="wrap")
        if kind == "ce":
            out.append(-float(F.cross_entropy(dequantize(logits, model.output_fmt), y)))
        else:
            out.append(float((logits.argmax(dim=1) == y).double().mean()))
    return torch.tensor(out, dtype=torch.float64)


def ref_ranks(f: torch.Tensor) -> torch.Tensor:
    """Centred ranks from a sort: position in ascending order, ties share their mean position."""
    values = sorted(f.tolist())
    n = len(values)
    ranks = [sum(j for j, v in enumerate(values) if v == x) / values.count(x) for x in f.tolist()]
    return torch.tensor([r / (n - 1) - 0.5 for r in ranks], dtype=torch.float64)


def ref_noise(trainer: ESTrainer, state: ESState, member_seeds: list[int]) -> dict[str, torch.Tensor]:
    """z per trained parameter: row i from seed derive_seed(member_seed_i, k), k = index of the name."""
    out = {}
    for k, name in enumerate(state.names):
        t = state.model.param(name)[0]
        seeds = [derive_seed(s, k) for s in member_seeds]
        if trainer.rank and t.ndim == 2:
            out[name] = draw_lowrank(seeds, tuple(t.shape), trainer.rank, trainer.distribution, trainer.source)
        else:
            out[name] = draw(seeds, t.numel(), trainer.distribution, trainer.source).reshape(len(seeds), *t.shape)
    return out


def perturbed(model: DeployedModel, name: str, delta: torch.Tensor) -> torch.Tensor:
    t, fmt = model.param(name)
    return (t + delta).clamp(fmt.raw_min, fmt.raw_max)


def ref_gradient_members(trainer: ESTrainer, state: ESState):
    """Member seeds, z and the members theta + d_0, theta - d_0, theta + d_1, ... of a generation."""
    pairs = trainer.population // 2 if trainer.estimator == "antithetic" else trainer.directions
    member_seeds = [derive_seed(state.seed, state.step, MEMBER_KEY, i) for i in range(pairs)]
    z = ref_noise(trainer, state, member_seeds)
    members = []
    for i in range(pairs):
        for sign in (1, -1):
            members.append({n: perturbed(state.model, n, sign * torch.round(state.sigma * z[n][i]).long())
                            for n in state.names})
    return pairs, z, members


def tensors_in(obj, seen=None):
    """Every tensor reachable from ``obj`` through dataclasses, dicts, lists and tuples."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from tensors_in(getattr(obj, f.name), seen)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from tensors_in(v, seen)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from tensors_in(v, seen)


def strip_wall(ledger):
    return ledger.replace(wall_s=None)


# -- 1. no autograd ------------------------------------------------------------------------------

AUTOGRAD_CASES = {
    "one-plus-one": {"estimator": "one-plus-one"},
    "antithetic": {"estimator": "antithetic", "population": 6},
    "spsa": {"estimator": "spsa", "directions": 2, "lr": 500.0},
    "antithetic-rank1": {"estimator": "antithetic", "population": 6, "rank": 1},
    "antithetic-shadow": {"estimator": "antithetic", "population": 6, "shadow": True},
}


@pytest.mark.parametrize("mode", ["no_grad", "set_grad_enabled_false", "grad_enabled"])
@pytest.mark.parametrize("case", list(AUTOGRAD_CASES))
def test_no_autograd_on_the_path(mlp, monkeypatch, case, mode):
    def refuse(*args, **kwargs):
        raise AssertionError("autograd backward called on the ES path")

    monkeypatch.setattr(torch.Tensor, "backward", refuse)
    monkeypatch.setattr(torch.autograd, "backward", refuse)
    monkeypatch.setattr(torch.autograd, "grad", refuse)
    probe = torch.ones(2, requires_grad=True)
    with pytest.raises(AssertionError, match="autograd backward"):  # the patch is live
        (probe * 2).sum().backward()

    def no_saved_tensors(t):
        raise AssertionError("an autograd graph saved a tensor for backward on the ES path")

    trainer = ESTrainer(params="last:2", batch=8, buffer=16, **AUTOGRAD_CASES[case])
    stream = batches(mlp, 4, 8)
    hooks = torch.autograd.graph.saved_tensors_hooks(no_saved_tensors, lambda t: t)
    if mode == "no_grad":
        with torch.no_grad():
            state, infos = run(trainer, mlp, stream)
    elif mode == "set_grad_enabled_false":
        with torch.autograd.set_grad_enabled(False):
            state, infos = run(trainer, mlp, stream)
    else:  # grad mode on: the trainer itself must build no graph
        with torch.autograd.set_grad_enabled(True), hooks:
            state, infos = run(trainer, mlp, stream)
    assert state.step == 4 and all(i.ledger.macs_backward == 0 for i in infos)
    found = list(tensors_in(state))
    assert len(found) >= len(list(mlp.params())) + 2  # params, buffers, counters at least
    assert not any(t.requires_grad for t in found)
    assert not any(t.requires_grad for _, t, _ in trainer.model(state).params())
    if case == "antithetic-shadow":
        assert all(not s.requires_grad for s in state.shadow.values())


# -- 2. protocol ---------------------------------------------------------------------------------

def test_is_a_trainer_and_names_itself():
    assert isinstance(ESTrainer(), Trainer)
    assert ESTrainer().name == "es-antithetic"
    assert ESTrainer(estimator="spsa").name == "es-spsa"
    assert ESTrainer(rank=2, shadow=True).name == "es-antithetic-lowrank2-shadow"
    assert ESTrainer(estimator="one-plus-one").members == 2
    assert ESTrainer(estimator="spsa", directions=3).members == 6
    assert ESTrainer(population=12).members == 12


@pytest.mark.parametrize("spec", ["last", "last:2", "bias", "all", "bias:last"])
def test_writes_is_select_params(mlp, cnn, spec):
    for model in (mlp, cnn):
        names = ESTrainer(params=spec).writes(model)
        assert names == select_params(model, spec) and names
        assert ESTrainer(params=spec).init(model).names == names
    assert ESTrainer(params="last").writes(mlp) == ("5.weight", "5.bias")
    assert ESTrainer(params="bias").writes(cnn) == ("0.bias", "3.bias", "7.bias")


PROTOCOL_CASES = [
    ("mlp", "last", {"estimator": "antithetic"}),
    ("mlp", "bias", {"estimator": "spsa", "lr": 2000.0}),
    ("mlp", "last:2", {"estimator": "one-plus-one"}),
    ("cnn", "bias:last:2", {"estimator": "antithetic", "shadow": True}),
    ("cnn", "0,7.weight", {"estimator": "antithetic", "rank": 1}),
    # saturating: huge steps push written values against the format's limits
    ("mlp", "last", {"estimator": "antithetic", "sigma": 64.0, "lr": 1e6, "rounding": "floor"}),
]


@pytest.mark.parametrize(("arch", "spec", "settings"), PROTOCOL_CASES)
def test_only_written_params_change_and_stay_in_format(mlp, cnn, arch, spec, settings):
    model = {"mlp": mlp, "cnn": cnn}[arch]
    trainer = ESTrainer(params=spec, population=6, batch=8, buffer=16, **settings)
    before = params_of(model)
    state, _ = run(trainer, model, batches(model, 10, 8))
    after = trainer.model(state)
    written = set(trainer.writes(model))
    changed = set()
    for name, t, fmt in after.params():
        if name not in written:
            assert torch.equal(t, before[name]), name
            assert t.dtype == before[name].dtype
        else:
            assert t.dtype == torch.int64 and t.shape == before[name].shape
            assert in_range(t, fmt), name
            if not torch.equal(t, before[name]):
                changed.add(name)
    assert changed, "ten steps changed nothing: the test would prove nothing"
    for old, new in zip(model.layers, after.layers, strict=True):  # formats and shapes untouched
        assert type(old) is type(new) and old.out_fmt == new.out_fmt
    if settings.get("lr") == 1e6:
        fmt = after.param("5.weight")[1]
        w = after.param("5.weight")[0]
        assert int(w.max()) == fmt.raw_max or int(w.min()) == fmt.raw_min  # clamping was exercised


# -- 3. determinism ------------------------------------------------------------------------------

DETERMINISM = [(e, s, d) for e in ("one-plus-one", "antithetic", "spsa") for s in SOURCES for d in DISTRIBUTIONS]


@pytest.mark.parametrize(("estimator", "source", "distribution"), DETERMINISM)
def test_same_seed_same_bits_other_seed_other_params(mlp, estimator, source, distribution):
    trainer = ESTrainer(estimator=estimator, source=source, distribution=distribution, population=6,
                        lr=3000.0 if estimator == "spsa" else 8.0, batch=8, buffer=24)
    stream = batches(mlp, 6, 8)
    a, infos_a = run(trainer, mlp, stream, seed=5)
    b, infos_b = run(trainer, mlp, stream, seed=5)
    c, _ = run(trainer, mlp, stream, seed=6)
    for name, t, _ in trainer.model(a).params():
        assert torch.equal(t, trainer.model(b).param(name)[0])
    assert a.sigma == b.sigma and a.accepted == b.accepted
    for name in a.names:
        assert torch.equal(a.writes.counts[name], b.writes.counts[name])
    for ia, ib in zip(infos_a, infos_b, strict=True):
        assert ia.metrics == ib.metrics
        assert strip_wall(ia.ledger) == strip_wall(ib.ledger)
    assert any(not torch.equal(trainer.model(a).param(n)[0], trainer.model(c).param(n)[0]) for n in a.names)


# -- 4. ledger -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("settings", "members"), [
    ({"estimator": "antithetic", "population": 6}, 6),
    ({"estimator": "antithetic", "population": 4, "rank": 1, "shadow": True}, 4),
    ({"estimator": "spsa", "directions": 3, "lr": 3000.0}, 6),
    ({"estimator": "one-plus-one"}, 2),
])
def test_ledger_hand_counts(mlp, settings, members):
    batch = 8
    trainer = ESTrainer(params="last:2", batch=batch, buffer=16, **settings)
    per_sample = inference_macs(mlp)
    assert per_sample == 64 * 64 + 32 * 64 + 10 * 32  # dense layers only: one MAC per weight
    state = trainer.init(mlp, 0)
    # 4 samples: the buffer holds fewer than ``batch``, the device waits
    before = params_of(mlp)
    state, info = trainer.step(state, raw_batch(mlp, 4, 1))
    assert info.metrics == {"waiting": 1.0}
    led = info.ledger
    assert (led.forward_passes, led.macs_forward, led.macs_backward, led.macs, led.weight_writes) == (0, 0, 0, 0, 0)
    assert led.extra_memory_bytes == trainer.extra_memory(mlp)["total"]
    assert state.step == 0 and state.seen == 4
    assert all(torch.equal(t, before[n]) for n, t, _ in state.model.params())
    total_changed = 0
    for k in range(6):
        old = params_of(state.model)
        state, info = trainer.step(state, raw_batch(mlp, 4, 2 + k))
        led = info.ledger
        assert "waiting" not in info.metrics and info.metrics["batch"] == batch
        assert led.forward_passes == members * batch
        assert led.macs_forward == members * batch * per_sample == led.macs
        assert led.macs_backward == 0
        assert led.extra_memory_bytes == trainer.extra_memory(mlp)["total"]
        changed = sum(int((t != old[n]).sum()) for n, t, _ in state.model.params())
        assert led.weight_writes == changed
        assert led.max_writes_per_cell == (1 if changed else 0)
        total_changed += changed
    assert state.step == 6 and state.seen == 28
    assert total_changed > 0
    assert total_writes(state.writes) == total_changed


def test_minibatch_comes_from_the_filled_buffer_without_repeats(mlp, monkeypatch):
    """Each generation's mini-batch is ``batch`` distinct samples among those pushed so far, the
    whole buffer in order when it holds exactly ``batch``, and the ring keeps the newest samples."""
    seen_batches = []
    original = ESTrainer._evaluate

    def spy(self, state, members, xb, yb):
        seen_batches.append((xb.clone(), yb.clone()))
        return original(self, state, members, xb, yb)

    monkeypatch.setattr(ESTrainer, "_evaluate", spy)
    trainer = ESTrainer(params="last", population=2, batch=6, buffer=10)
    chunks = [(0, 6), (6, 3), (9, 5), (14, 12), (26, 4)]

    def labelled(start, n):  # sample g: every input equal to g (raw), label g % 10: identifiable anywhere
        ids = torch.arange(start, start + n)
        return Batch(ids.view(-1, 1, 1, 1).expand(n, *mlp.input_shape).contiguous(), ids % 10)

    run(trainer, mlp, [labelled(*c) for c in chunks], seed=4)
    other_seed = [xb.flatten(1)[:, 0].tolist() for xb, _ in seen_batches]
    seen_batches.clear()
    state = trainer.init(mlp, 3)
    pushed = []
    for start, n in chunks:
        state, _ = trainer.step(state, labelled(start, n))
        ids = torch.arange(start, start + n)
        pushed.extend(ids.tolist())
        xb, yb = seen_batches[-1]
        got = xb.flatten(1)[:, 0].tolist()
        assert torch.equal(xb, xb.flatten(1)[:, :1].view(-1, 1, 1, 1).expand_as(xb))
        assert yb.tolist() == [g % 10 for g in got]
        assert len(got) == 6 and len(set(got)) == 6
        assert set(got) <= set(pushed[-10:])  # only samples still in the ring
        if start == 0:
            assert got == list(range(6))  # buffer holds exactly `batch`: all of it, in order
    # the ring: sample g sits at slot g % 10 for the 10 newest samples
    for g in pushed[-10:]:
        assert int(state.buf_x[g % 10].flatten()[0]) == g and int(state.buf_y[g % 10]) == g % 10
    assert state.seen == 30
    # mini-batch draws come from the trainer's seed: another seed draws other samples
    mine = [xb.flatten(1)[:, 0].tolist() for xb, _ in seen_batches]
    assert mine[0] == other_seed[0] and mine[1:] != other_seed[1:]


# -- 5. extra memory -----------------------------------------------------------------------------

def test_extra_memory_hand_count(mlp):
    trainer = ESTrainer(estimator="antithetic", population=20, source="lfsr", rounding="stochastic", buffer=256)
    mem = trainer.extra_memory(mlp)
    expected = {"sample_buffer": 256 * (64 * 2 + 1), "generators": (10 + 1 + 1) * 4, "fitness": 20 * 4,
                "registers": 12}
    expected["total"] = sum(expected.values())
    assert mem == expected
    assert mem["total"] == 33_024 + 48 + 80 + 12

    torch_src = ESTrainer(population=20, source="torch", rounding="stochastic").extra_memory(mlp)
    assert torch_src["generators"] == 12 * 2504
    assert ESTrainer(population=20, rounding="nearest").extra_memory(mlp)["generators"] == (10 + 1) * 4
    one = ESTrainer(estimator="one-plus-one", rounding="stochastic").extra_memory(mlp)
    assert one["generators"] == (1 + 1) * 4 and one["fitness"] == 2 * 4  # 1+1 never rounds stochastically
    spsa = ESTrainer(estimator="spsa", directions=3).extra_memory(mlp)
    assert spsa["generators"] == (3 + 1 + 1) * 4 and spsa["fitness"] == 6 * 4

    trained = 10 * 32 + 10
    shadow = ESTrainer(population=20, shadow=True).extra_memory(mlp)
    assert shadow["shadow"] == 4 * trained
    assert shadow["total"] == mem["total"] + 4 * trained
    low = ESTrainer(population=20, rank=2).extra_memory(mlp)
    # update, restart design: 10 streams x ((3 x 2 - 1) LFSR cursors of 5 B + 2 factor registers of 2 B);
    # evaluation: one member's factors, 16 bits x rank 2 x (10 + 32)
    assert low["lowrank_factors"] == max(10 * (5 * 5 + 2 * 2), 2 * 2 * (10 + 32)) == 290
    assert low["total"] == mem["total"] + low["lowrank_factors"]
    low_all = ESTrainer(population=20, rank=1, params="all").extra_memory(mlp)
    # evaluation (one member's factors of every dense layer) outweighs the update's 10 x (2 x 5 + 2)
    assert low_all["lowrank_factors"] == 2 * ((64 + 64) + (32 + 64) + (10 + 32)) == 532
    plan = ESTrainer(population=20, rank=1, params="all").lowrank_memory(mlp)
    assert plan == {"evaluation": 532, "update": 120, "update_design": "restart", "bytes": 532}
    # a torch generator's restart point is its whole state: storing every stream's factors is cheaper
    torch_plan = ESTrainer(population=20, rank=1, source="torch").lowrank_memory(mlp)
    assert torch_plan == {"evaluation": 2 * 42, "update": 2 * 10 * 42, "update_design": "stored", "bytes": 840}
    assert ESTrainer(buffer=128, batch=64).extra_memory(mlp)["sample_buffer"] == 128 * 129


@pytest.mark.parametrize("settings", [
    {"estimator": "antithetic"}, {"estimator": "antithetic", "rounding": "nearest"}, {"estimator": "spsa"},
    {"estimator": "one-plus-one"}, {"estimator": "antithetic", "population": 40},
])
def test_extra_memory_within_trained_weights_plus_buffer(mlp, settings):
    trainer = ESTrainer(params="last", source="lfsr", **settings)
    weight_bytes = sum(mlp.param(n)[0].numel() * 2 for n in trainer.writes(mlp))
    mem = trainer.extra_memory(mlp)
    assert weight_bytes == 330 * 2
    assert mem["total"] <= weight_bytes + mem["sample_buffer"]


# -- 6. antithetic update by hand ----------------------------------------------------------------

@pytest.mark.parametrize(("distribution", "source", "rank", "spec"), [
    ("rademacher", "lfsr", 0, "bias:last"),
    ("rademacher", "lfsr", 0, "last"),
    ("gaussian", "torch", 0, "last"),
    ("uniform", "lfsr", 1, "last"),
])
def test_antithetic_step_by_hand(mlp, distribution, source, rank, spec):
    B, seed = 16, 11
    trainer = ESTrainer(estimator="antithetic", params=spec, population=4, sigma=8.0, lr=24.0,
                        distribution=distribution, source=source, rank=rank, rounding="nearest", shadow=False,
                        buffer=B, batch=B)
    state = trainer.init(mlp, seed)
    b = raw_batch(mlp, B, 21)
    pairs, z, members = ref_gradient_members(trainer, state)
    assert pairs == 2 and len(members) == 4
    f = ref_fitness(mlp, members, b.x, b.y)
    u = ref_ranks(f)
    weights = [float(u[2 * i] - u[2 * i + 1]) for i in range(pairs)]
    expected = {}
    for name in state.names:
        t, fmt = mlp.param(name)
        step = sum(weights[i] * z[name][i] for i in range(pairs)) * trainer.lr / pairs
        expected[name] = (t + round_real(step, "nearest")).clamp(fmt.raw_min, fmt.raw_max)
    new_state, info = trainer.step(state, b)
    assert any(not torch.equal(expected[n], mlp.param(n)[0]) for n in state.names)
    for name in state.names:
        assert torch.equal(new_state.model.param(name)[0], expected[name]), name
    assert info.metrics["fitness"] == pytest.approx(float(f.mean()), rel=1e-12)
    assert info.metrics["fitness_best"] == pytest.approx(float(f.max()), rel=1e-12)
    if rank:
        z_w = z["5.weight"][0]
        assert torch.linalg.matrix_rank(z_w) == 1


def test_round_nearest_is_half_up_and_floor_is_down(mlp):
    """P = 2, rademacher: the step is exactly +-lr in every cell, so lr = 2.5 lands on ties."""
    base = dict(estimator="antithetic", params="last", population=2, sigma=4.0, lr=2.5, buffer=8, batch=8)
    b = raw_batch(mlp, 8, 3)
    theta = mlp.param("5.weight")[0]
    deltas = {}
    for rounding in ("nearest", "floor", "stochastic"):
        trainer = ESTrainer(rounding=rounding, **base)
        new, _ = trainer.step(trainer.init(mlp, 1), b)
        deltas[rounding] = new.model.param("5.weight")[0] - theta
    # the real step (same seed, same members) is +-2.5; its sign per cell from nearest's result
    up = deltas["nearest"] > 0
    assert up.any() and (~up).any()
    assert torch.equal(deltas["nearest"], torch.where(up, 3, -2))  # 2.5 -> 3, -2.5 -> -2
    assert torch.equal(deltas["floor"], torch.where(up, 2, -3))  # 2.5 -> 2, -2.5 -> -3
    s = deltas["stochastic"]
    assert bool(torch.where(up, (s == 2) | (s == 3), (s == -2) | (s == -3)).all())
    assert not torch.equal(deltas["stochastic"], deltas["nearest"])
    assert not torch.equal(deltas["stochastic"], deltas["floor"])


@pytest.mark.parametrize("source", SOURCES)
def test_stochastic_rounding_unbiased_and_reproduced(mlp, source):
    """lr = 2.3 with P = 2 rademacher: every cell's real step is +-2.3; stochastic rounding must
    average to it (6570 cells, standard error 0.006), and equal floor(step + u) with the
    trainer's documented [0, 1) offsets."""
    trainer = ESTrainer(estimator="antithetic", params="all", population=2, sigma=4.0, lr=2.3, source=source,
                        rounding="stochastic", buffer=8, batch=8)
    state = trainer.init(mlp, 2)
    b = raw_batch(mlp, 8, 4)
    pairs, z, members = ref_gradient_members(trainer, state)
    f = ref_fitness(mlp, members, b.x, b.y)
    w = float(ref_ranks(f)[0] - ref_ranks(f)[1])
    assert abs(w) == 1.0
    offsets_all = trainer._rounding_noise(state, 6570)
    new, _ = trainer.step(state, b)
    errors, n = {1: [], -1: []}, 0
    for name in state.names:
        t, fmt = mlp.param(name)
        step = trainer.lr * w * z[name][0]
        offsets = offsets_all[n: n + step.numel()].reshape(step.shape)  # one stream, in parameter order
        assert bool(((offsets >= 0) & (offsets < 1)).all())
        q = new.model.param(name)[0] - t
        assert torch.equal(q, torch.floor(step + offsets).long()), name
        for sign in (1, -1):
            errors[sign].append((q - step)[step * sign > 0].flatten())
        n += q.numel()
    assert n == 6570
    for sign in (1, -1):  # floor is off by -0.3 / -0.7, nearest by -0.3 / +0.3 for +2.3 / -2.3
        err = torch.cat(errors[sign])
        assert err.numel() > 2000 and abs(float(err.mean())) < 0.05, sign


@pytest.mark.parametrize("source", SOURCES)
def test_rounding_noise_in_unit_interval(mlp, source):
    trainer = ESTrainer(source=source)
    state = trainer.init(mlp, 0)
    u = trainer._rounding_noise(state, 100_000)
    a, b = u[:50_000], u[50_000:]
    assert u.dtype == torch.float64
    assert bool(((u >= 0) & (u < 1)).all())
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005
    assert not torch.equal(a, b)  # one stream, not a repeated block
    assert torch.equal(trainer._rounding_noise(state, 50_000), a)  # same seed, same offsets; shorter = prefix
    other_seed = trainer._rounding_noise(dataclasses.replace(state, seed=1), 50_000)
    other_step = trainer._rounding_noise(dataclasses.replace(state, step=1), 50_000)
    assert not torch.equal(other_seed, a) and not torch.equal(other_step, a)


def test_floor_rounding_drifts_down_compared_with_nearest(mlp):
    common = dict(estimator="antithetic", params="last:2", population=4, sigma=8.0, lr=2.2, batch=8, buffer=8)
    stream = batches(mlp, 5, 8)
    mean_step = {}
    for rounding in ("floor", "nearest"):
        trainer = ESTrainer(rounding=rounding, **common)
        state, _ = run(trainer, mlp, stream, seed=4)
        diffs = [(state.model.param(n)[0] - mlp.param(n)[0]).double().flatten() for n in state.names]
        mean_step[rounding] = float(torch.cat(diffs).mean())
    assert mean_step["floor"] < mean_step["nearest"] - 0.2  # floor loses ~0.5 LSB per step and cell


def test_shadow_holds_float_and_deploys_its_rounding(mlp):
    """P = 2 rademacher, lr = 0.3: the shadow moves by exactly +-0.3 per cell and step while the
    deployed value is round-nearest (clamped) of the shadow."""
    trainer = ESTrainer(estimator="antithetic", params="last", population=2, sigma=4.0, lr=0.3, shadow=True,
                        batch=8, buffer=8)
    state = trainer.init(mlp, 0)
    assert set(state.shadow) == set(state.names)
    for name in state.names:
        assert state.shadow[name].dtype == torch.float32
        assert torch.equal(state.shadow[name], mlp.param(name)[0].float())
    for b in batches(mlp, 6, 8):
        prev = {n: s.clone() for n, s in state.shadow.items()}
        state, _ = trainer.step(state, b)
        for name in state.names:
            t, fmt = state.model.param(name)
            sh = state.shadow[name]
            assert sh.dtype == torch.float32
            assert torch.allclose((sh - prev[name]).abs(), torch.full_like(sh, 0.3), atol=1e-3)
            assert torch.equal(t, round_real(sh, "nearest").clamp(fmt.raw_min, fmt.raw_max))
    sh = torch.cat([state.shadow[n].flatten() for n in state.names])
    assert bool((sh != torch.round(sh)).any())  # fractional values kept, not rounded away
    moved = sum(int((state.model.param(n)[0] != mlp.param(n)[0]).sum()) for n in state.names)
    assert 0 < moved < 330  # six +-0.3 steps move some cells across a rounding boundary, not all


def test_shadow_saturates_with_the_format(mlp):
    trainer = ESTrainer(estimator="antithetic", params="5.bias", population=2, sigma=4.0, lr=1e6, shadow=True,
                        batch=8, buffer=8)
    state, _ = run(trainer, mlp, batches(mlp, 2, 8))
    fmt = mlp.param("5.bias")[1]
    sh = state.shadow["5.bias"]
    assert bool(((sh == fmt.raw_max) | (sh == fmt.raw_min)).all())
    assert torch.equal(state.model.param("5.bias")[0], sh.long())


def test_lowrank_update_has_rank_one(mlp):
    """P = 2 (one pair), rank 1, rademacher, integer lr: the weight update is +-lr a b^T exactly."""
    trainer = ESTrainer(estimator="antithetic", params="5.weight", population=2, sigma=4.0, lr=3.0, rank=1,
                        rounding="nearest", batch=8, buffer=8)
    new, _ = trainer.step(trainer.init(mlp, 9), raw_batch(mlp, 8, 9))
    d = (new.model.param("5.weight")[0] - mlp.param("5.weight")[0]).double()
    assert bool((d.abs() == 3).all())
    assert int(torch.linalg.matrix_rank(d)) == 1


# -- 7. SPSA by hand -----------------------------------------------------------------------------

@pytest.mark.parametrize("directions", [1, 3])
def test_spsa_step_by_hand(mlp, directions):
    B = 16
    trainer = ESTrainer(estimator="spsa", params="last", directions=directions, sigma=8.0, lr=20_000.0,
                        distribution="gaussian", rounding="nearest", buffer=B, batch=B)
    state = trainer.init(mlp, 4)
    b = raw_batch(mlp, B, 8)
    pairs, z, members = ref_gradient_members(trainer, state)
    assert pairs == directions and len(members) == 2 * directions
    f = ref_fitness(mlp, members, b.x, b.y)
    g = [(float(f[2 * i]) - float(f[2 * i + 1])) / (2 * trainer.sigma) for i in range(pairs)]
    new, info = trainer.step(state, b)
    moved = 0
    for name in state.names:
        t, fmt = mlp.param(name)
        step = trainer.lr * sum(g[i] * z[name][i] for i in range(pairs)) / pairs
        expected = (t + round_real(step, "nearest")).clamp(fmt.raw_min, fmt.raw_max)
        assert torch.equal(new.model.param(name)[0], expected), name
        moved += int((expected != t).sum())
    assert moved > 30  # the step is several LSBs: the comparison is not trivially "unchanged"
    assert info.metrics["fitness"] == pytest.approx(float(f.mean()), rel=1e-12)
    assert new.sigma == trainer.sigma  # SPSA keeps sigma fixed


# -- 8. (1+1)-ES ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("fit", "sigma", "lo", "hi"), [("ce", 4.0, 1.0, 8.0), ("accuracy", 2.0, 1.0, 8.0)])
def test_one_plus_one_by_hand(mlp, fit, sigma, lo, hi):
    B = 16
    trainer = ESTrainer(estimator="one-plus-one", params="last", sigma=sigma, sigma_min=lo, sigma_max=hi,
                        sigma_up=2.0, fitness=fit, buffer=B, batch=B)
    state = trainer.init(mlp, 13)
    theta = {n: mlp.param(n)[0] for n in state.names}
    ref_sigma, outcomes, ties = sigma, [], 0
    for k in range(14):
        b = raw_batch(mlp, B, 40 + k)  # buffer == batch: the mini-batch is exactly this batch
        z = ref_noise(trainer, state, [derive_seed(13, k, MEMBER_KEY, 0)])
        offspring = {n: perturbed(state.model, n, torch.round(ref_sigma * z[n][0]).long()) for n in state.names}
        assert any(not torch.equal(offspring[n], theta[n]) for n in state.names)
        f_parent, f_off = ref_fitness(mlp, [theta, offspring], b.x, b.y, fit).tolist()
        state, info = trainer.step(state, b)
        better = f_off > f_parent
        ties += f_off == f_parent
        outcomes.append(better)
        written = sum(int((offspring[n] != theta[n]).sum()) for n in state.names) if better else 0
        if better:
            theta = offspring
        ref_sigma = min(max(ref_sigma * (2.0 if better else 2.0 ** -0.25), lo), hi)
        assert info.metrics["accepted"] == float(better)
        assert info.metrics["fitness"] == pytest.approx(f_parent, rel=1e-12)
        assert info.metrics["fitness_offspring"] == pytest.approx(f_off, rel=1e-12)
        assert state.sigma == pytest.approx(ref_sigma, rel=1e-12) and info.metrics["sigma"] == state.sigma
        assert info.ledger.weight_writes == written
        for n in state.names:
            assert torch.equal(state.model.param(n)[0], theta[n]), (k, n)
    assert state.accepted == sum(outcomes)
    if fit == "ce":
        assert any(outcomes) and not all(outcomes)  # both branches exercised
    else:
        assert ties > 0  # equal fitness must keep the parent (strict improvement only)


def test_one_plus_one_sigma_hits_both_clamps(mlp):
    """sigma_up = 4 and a narrow range: one success reaches sigma_max, failures reach sigma_min."""
    trainer = ESTrainer(estimator="one-plus-one", params="last", sigma=2.0, sigma_min=1.0, sigma_max=4.0,
                        sigma_up=4.0, batch=8, buffer=8)
    state, infos = run(trainer, mlp, batches(mlp, 16, 8, seed=300))
    sigmas = [i.metrics["sigma"] for i in infos]
    accepted = [i.metrics["accepted"] for i in infos]
    assert all(1.0 <= s <= 4.0 for s in sigmas)
    prev = 2.0
    for s, a in zip(sigmas, accepted, strict=True):
        assert s == (min(prev * 4.0, 4.0) if a else max(prev * 4.0 ** -0.25, 1.0))
        prev = s
    assert 4.0 in sigmas and 1.0 in sigmas


# -- 10. fitness and ranks -----------------------------------------------------------------------

def test_centered_ranks_known_values():
    f64 = torch.float64
    assert torch.equal(centered_ranks(torch.tensor([3.0, 1.0, 2.0])), torch.tensor([0.5, -0.5, 0.0], dtype=f64))
    assert torch.equal(centered_ranks(torch.tensor([10.0, -4.0, 7.0, 0.5, 2.0])),
                       torch.tensor([0.5, -0.5, 0.25, -0.25, 0.0], dtype=f64))
    # ties share their mean rank: ranks 0, 1.5, 1.5, 3 of n - 1 = 3
    assert torch.allclose(centered_ranks(torch.tensor([1.0, 2.0, 2.0, 3.0])),
                          torch.tensor([-0.5, 0.0, 0.0, 0.5], dtype=f64), atol=1e-15)
    assert torch.allclose(centered_ranks(torch.tensor([5.0, 5.0, 5.0, 1.0])),
                          torch.tensor([1 / 6, 1 / 6, 1 / 6, -0.5], dtype=f64), atol=1e-15)
    assert torch.equal(centered_ranks(torch.full((6,), 0.25)), torch.zeros(6, dtype=f64))
    assert torch.equal(centered_ranks(torch.tensor([4.0])), torch.zeros(1, dtype=f64))
    g = torch.Generator().manual_seed(0)
    for n in (2, 7, 20):
        f = torch.randint(0, 4, (n,), generator=g).double()  # many ties
        u = centered_ranks(f)
        assert torch.allclose(u, ref_ranks(f), atol=1e-12)
        assert abs(float(u.sum())) < 1e-12 and float(u.min()) >= -0.5 and float(u.max()) <= 0.5
        assert torch.equal(centered_ranks(f + 100.0), u)  # only the order matters


def test_fitness_accuracy_and_ce_on_hand_made_logits(mlp):
    fmt = mlp.output_fmt  # fixed16_6: 10 fractional bits
    logits = torch.tensor([
        [[1024, 0, -512], [0, 2048, 0], [300, 200, 100]],
        [[0, 1024, 0], [-1024, 0, 5], [0, 0, 1]],
    ])  # [P=2, B=3, C=3]
    y = torch.tensor([0, 1, 2])
    acc = fitness(logits, y, fmt, "accuracy")
    assert acc.dtype == torch.float64 and torch.equal(acc, torch.tensor([2 / 3, 1 / 3], dtype=torch.float64))
    ce = fitness(logits, y, fmt, "ce")
    real = logits.double() / 1024.0
    expected = torch.stack([-F.cross_entropy(real[p], y) for p in range(2)])
    assert torch.allclose(ce, expected, rtol=1e-12, atol=0)
    # a hand value: member 0, sample 0: logits (1, 0, -0.5), label 0
    lse = math.log(math.e + 1 + math.exp(-0.5))
    own = -(lse - 1.0)
    assert float(-F.cross_entropy(real[0, :1], y[:1])) == pytest.approx(own, rel=1e-12)
    assert float(fitness(logits[:, :1], y[:1], fmt, "ce")[0]) == pytest.approx(own, rel=1e-12)
    assert fitness(logits, y, fmt).equal(ce)  # "ce" is the default
    with pytest.raises(ValueError, match="fitness"):
        fitness(logits, y, fmt, "mse")
    with pytest.raises(ValueError, match=r"\[P, B, C\]"):
        fitness(logits[0], y, fmt)
    with pytest.raises(ValueError, match="labels"):
        fitness(logits, y[:2], fmt)


# -- 11. learning --------------------------------------------------------------------------------

def _noisy_run(digits, steps: int, seed: int = 0):
    """Pretrained mlp, noise:0.3 on the inputs; antithetic ES on ``last`` (sigma 16, lr 16, batch 32,
    buffer 256), ``steps`` arrivals of 32 fresh noisy training samples. Returns (CE before, CE after)
    on a fixed noisy copy of the whole training split."""
    ds, model = digits
    shift = parse_shift("noise:0.3")
    g = torch.Generator().manual_seed(1000 + seed)
    q_eval = quantize_input(model, shift.apply(ds.train.x, g))
    idx = torch.randint(0, ds.train.x.shape[0], (steps * 32,), generator=g)
    q = quantize_input(model, shift.apply(ds.train.x[idx], g))
    y = ds.train.y[idx]
    trainer = ESTrainer(estimator="antithetic", params="last", population=100, sigma=16.0, lr=16.0, batch=32,
                        buffer=256)
    state, _ = run(trainer, model, [Batch(q[k:k + 32], y[k:k + 32]) for k in range(0, steps * 32, 32)], seed)

    def ce(m):
        return float(F.cross_entropy(dequantize(forward_int(m, q_eval, overflow="wrap"), m.output_fmt), ds.train.y))

    return ce(model), ce(trainer.model(state))


@pytest.mark.slow
def test_learns_under_input_noise(digits):
    """Loss on the shifted distribution falls by 3.5-6 % in this setting (12 seeds); the bar is 3 %
    (lr = 1 instead of 16 reaches only 1.6-2.1 %).

    The held-out set is a fixed noisy copy of the whole training split (1258 samples): with only 256
    the evaluation noise is as large as the effect of a few hundred ES generations.
    """
    before, after = _noisy_run(digits, steps=200)
    assert after < before * 0.97, (before, after)


def test_learning_test_can_fail(digits, monkeypatch):
    """Control: with the fitness shaping negated the trainer climbs the loss instead."""
    original = trainer_module.centered_ranks
    monkeypatch.setattr(trainer_module, "centered_ranks", lambda f: -original(f))
    before, after = _noisy_run(digits, steps=40)
    assert after > before * 1.05


# -- 12. errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("settings", "named"), [
    ({"estimator": "sgd"}, "estimator"),
    ({"distribution": "cauchy"}, "distribution"),
    ({"source": "mt19937"}, "source"),
    ({"rounding": "ceil"}, "rounding"),
    ({"rounding": "nearest_even"}, "rounding"),
    ({"fitness": "mse"}, "fitness"),
    ({"population": 5}, "population"),
    ({"population": 0}, "population"),
    ({"directions": 0}, "directions"),
    ({"rank": -1}, "rank"),
    ({"buffer": 32, "batch": 64}, "batch"),
    ({"buffer": 0}, "buffer"),
    ({"sigma": 100.0}, "sigma"),
    ({"sigma": 0.5}, "sigma"),
    ({"sigma": 2.0, "sigma_min": 4.0}, "sigma"),
    ({"lr": 0.0}, "lr"),
    ({"lr": float("nan")}, "lr"),
    ({"sigma_up": 1.0}, "sigma_up"),
    ({"shadow": True, "estimator": "one-plus-one"}, "shadow"),
])
def test_bad_settings_name_the_setting(settings, named):
    with pytest.raises(ValueError, match=named):
        ESTrainer(**settings)


def test_bad_init(mlp):
    with pytest.raises(ValueError, match="seed"):
        ESTrainer().init(mlp, -1)
    with pytest.raises(ValueError, match="nope"):
        ESTrainer(params="nope").init(mlp)


def test_bad_batches(mlp):
    trainer = ESTrainer(batch=4, buffer=8)
    state = trainer.init(mlp, 0)
    good = raw_batch(mlp, 4, 0)
    with pytest.raises(TypeError, match="integer"):
        trainer.step(state, Batch(good.x.double(), good.y))
    with pytest.raises(TypeError, match="labels"):
        trainer.step(state, Batch(good.x, good.y.double()))
    with pytest.raises(ValueError, match="shape"):
        trainer.step(state, Batch(good.x.view(4, 64), good.y))
    with pytest.raises(ValueError, match="labels"):
        trainer.step(state, Batch(good.x, good.y[:3]))
    for bad_label in (10, -1):
        y = good.y.clone()
        y[2] = bad_label
        with pytest.raises(ValueError, match="labels"):
            trainer.step(state, Batch(good.x, y))
    fmt = mlp.input_fmt
    for bad in (fmt.raw_max + 1, fmt.raw_min - 1):
        x = good.x.clone()
        x[1, 0, 3, 3] = bad
        with pytest.raises(ValueError, match="input format"):
            trainer.step(state, Batch(x, good.y))
    # the state given is untouched by refused batches
    assert state.seen == 0 and state.step == 0


# -- 13. hardware estimate -----------------------------------------------------------------------

def _leap_luts_by_hand() -> int:
    """A^32 by repeated squaring of the one-clock GF(2) matrix (rows as ints), then a LUT6 XOR tree
    per output bit: each LUT merges up to 6 signals into 1."""
    rows = [lfsr_step(1 << j) for j in range(32)]  # row j: image of state bit j after one clock

    def compose(a, b):  # a then b
        out = []
        for j in range(32):
            v, acc = a[j], 0
            for i in range(32):
                if (v >> i) & 1:
                    acc ^= b[i]
            out.append(acc)
        return out

    m = rows
    for _ in range(5):  # 2^5 = 32 clocks
        m = compose(m, m)
    # linearity spot check against 32 single clocks from a random state
    state = 0x9E3779B9
    ref = state
    for _ in range(32):
        ref = lfsr_step(ref)
    img = 0
    for j in range(32):
        if (state >> j) & 1:
            img ^= m[j]
    assert img == ref
    luts = 0
    for bit in range(32):
        signals = sum((m[j] >> bit) & 1 for j in range(32))
        while signals > 1:
            take = min(6, signals)
            signals -= take - 1
            luts += 1
    return luts


def test_leap_xor_luts_recount():
    n = leap_xor_luts()
    assert isinstance(n, int) and n > 0
    assert n == _leap_luts_by_hand()


@pytest.mark.parametrize("settings", [
    {"estimator": "antithetic"}, {"estimator": "antithetic", "fitness": "accuracy", "shadow": True},
    {"estimator": "spsa", "directions": 2}, {"estimator": "one-plus-one"}, {"estimator": "antithetic", "rank": 1},
])
def test_es_hardware_rows_and_fractions(mlp, settings):
    ku115 = get_device("ku115")
    trainer = ESTrainer(params="last", **settings)
    hw = es_hardware(trainer, mlp, ku115)
    keys = ("luts", "ffs", "dsps", "bram_36k")
    for k in keys:
        assert hw["total"][k] == sum(r[k] for r in hw["rows"])
        assert all(isinstance(r[k], int) and r[k] >= 0 for r in hw["rows"])
    assert hw["available"] == {"luts": 663_360, "ffs": 1_326_720, "dsps": 5_520, "bram_36k": 2_160}
    for k in keys:
        assert hw["fraction"][k] == hw["total"][k] / hw["available"][k]
    assert hw["max_fraction"] == max(hw["fraction"].values())
    assert hw["lanes"] == 330 and hw["reuse_factor"] == 1
    rows = {r["unit"]: r for r in hw["rows"]}
    rank = settings.get("rank", 0)
    # 330 lanes, add + saturate of 16-bit weights (+ a rank-term factor sum per lane)
    assert rows["perturbation adders"]["luts"] == 330 * 2 * 16 + 330 * rank * 16
    streams = {"antithetic": 10, "spsa": 2, "one-plus-one": 1}[trainer.estimator]
    # evaluation: one member at a time, 330 lanes x 1 bit (rademacher) -> 11 LFSRs (1 with low rank);
    # update: every stream in lockstep, one LFSR each (two per rank term with low rank: a_k and b_k);
    # the registers are shared by both phases
    lfsrs = max(1 if rank else math.ceil(330 * 1 / 32), streams * (2 * rank if rank else 1))
    assert rows["LFSRs (perturbation)"]["luts"] == lfsrs * _leap_luts_by_hand()
    assert rows["LFSRs (perturbation)"]["ffs"] == lfsrs * 32
    if rank:  # factor buffer 16 x (10 + 32); per stream a 37-bit restart point and a 16-bit a_k; sign XORs
        assert rows["low-rank factors"]["ffs"] == 16 * (10 + 32) + 10 * (37 + 16)
        assert (rows["low-rank factors"]["luts"], rows["low-rank factors"]["dsps"]) == (10, 0)
    assert ("low-rank factors" in rows) == bool(rank)
    assert rows["fitness registers"]["ffs"] == trainer.members * 32
    assert rows["sample buffer"]["bram_36k"] == math.ceil(256 * (64 * 16 + 8) / (36 * 1024))
    assert ("shadow copy" in rows) == bool(settings.get("shadow"))
    # the paper's "< 1 % of a KU115" for the training unit: with hls4ml's reuse factor 8 (the estimate
    # at reuse factor 1 is about 1.9 %, mostly the 330 parallel adder lanes)
    assert es_hardware(trainer, mlp, ku115, reuse_factor=8)["max_fraction"] < 0.01


def test_es_hardware_reuse_factor(mlp):
    ku115 = get_device("ku115")
    trainer = ESTrainer(params="last")
    one, four = es_hardware(trainer, mlp, ku115), es_hardware(trainer, mlp, ku115, reuse_factor=4)
    assert four["lanes"] == math.ceil(330 / 4)
    assert four["total"]["luts"] < one["total"]["luts"]
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="reuse_factor"):
            es_hardware(trainer, mlp, ku115, reuse_factor=bad)


# -- 14. write counter ---------------------------------------------------------------------------

@pytest.mark.parametrize("settings", [
    {"estimator": "antithetic", "rounding": "stochastic"},
    {"estimator": "antithetic", "shadow": True, "lr": 2.0},
    {"estimator": "one-plus-one"},
])
def test_write_counter_counts_every_change(mlp, settings):
    trainer = ESTrainer(params="last:2", population=4, batch=8, buffer=16, **settings)
    state = trainer.init(mlp, 3)
    assert state.writes.steps == 0
    mine = {n: torch.zeros_like(mlp.param(n)[0]) for n in state.names}
    stream = [raw_batch(mlp, 4, 50)] + batches(mlp, 9, 8, seed=60)  # first call waits
    ledger_total = 0
    for b in stream:
        old = {n: state.model.param(n)[0].clone() for n in state.names}
        state, info = trainer.step(state, b)
        for n in state.names:
            mine[n] += (state.model.param(n)[0] != old[n]).long()
        ledger_total += info.ledger.weight_writes
    assert state.writes.steps == len(stream) and state.step == len(stream) - 1
    assert set(state.writes.counts) == set(state.names)
    for n in state.names:
        assert torch.equal(state.writes.counts[n], mine[n]), n
    assert total_writes(state.writes) == ledger_total > 0
    if settings["estimator"] != "one-plus-one":
        assert max(int(c.max()) for c in mine.values()) > 1  # cells written more than once

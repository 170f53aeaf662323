"""C export of forward-only ES training (``export.generate.export_es``): the generated library trains bit for
bit as ``ESTrainer.step`` does over 50 generations (every logit before each step, the probe logits and the
trained tensors, step, accepted, seen and sigma after it), for each exported estimator, distribution and
rounding on a small dense model and for the digits CNN (host ``gcc``, ASan + UBSan, and an emulated
Cortex-M4 under QEMU); its LFSR, seeds and rounding thresholds equal Python's (``ctypes``); its arena is the
one ``cost.es_memory`` plans. Settings the C does not reproduce are refused by name."""

from __future__ import annotations

import ctypes
import json
import math
import shutil
import struct

import pytest
import torch
from torch import nn

from edgetrain.cli import main
from edgetrain.cost.es_memory import es_memory
from edgetrain.export import toolchain
from edgetrain.export.check import (
    encode_input,
    es_compare,
    es_reference_output,
    es_state_bytes,
    run_host,
    run_target,
)
from edgetrain.export.generate import NotExportable, check_es_exportable, export_es
from edgetrain.model.convert import convert
from edgetrain.model.forward import quantize_input
from edgetrain.model.io import save_model
from edgetrain.threads import torch_threads
from edgetrain.train.es.perturb import derive_seed, draw, lfsr_step, lfsr_words, seed_state
from edgetrain.train.es.trainer import ESTrainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs the host C compiler (apt-get install gcc)")
needs_target = pytest.mark.skipif(
    not toolchain.have_target_toolchain(),
    reason="needs arm-none-eabi-gcc with newlib and qemu-system-arm "
           "(apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm)")

N_PROBE = 2
STEPS = 50


def _es(batch: int = 8, **kw) -> ESTrainer:
    """An exportable ES configuration: accuracy fitness, LFSR noise, the ring buffer = the mini-batch."""
    return ESTrainer(fitness="accuracy", source="lfsr", buffer=batch, batch=batch, **kw)


class Case:
    """One ES export and what its driver must write for ``steps`` calls of ``per_step`` samples."""

    def __init__(self, model, trainer, q, y, out_dir, steps: int = STEPS, per_step: int | None = None,
                 seed: int = 0):
        self.model, self.trainer, self.steps, self.seed = model, trainer, steps, seed
        self.per_step = per_step or trainer.batch
        self.export = export_es(model, trainer, out_dir, seed=seed)
        idx = torch.arange(steps * self.per_step) % q.shape[0]
        self.x, self.y = q[idx], y[idx]
        self.probes = q[-N_PROBE:]
        self.data = encode_input(self.x, self.y, self.per_step, self.probes)
        self.infos: list = []
        self.want = es_reference_output(model, trainer, self.x, self.y, self.per_step, self.probes, seed=seed,
                                        infos=self.infos)

    def step_bytes(self) -> int:
        state = len(es_state_bytes(self.model, self.trainer, self.trainer.init(self.model, self.seed)))
        return (self.per_step + N_PROBE) * self.model.output_shape[0] + 4 + state

    def first(self, steps: int) -> tuple[bytes, bytes]:
        """(``et_in.bin``, expected ``et_out.bin``) of the first ``steps`` steps only."""
        n = steps * self.per_step
        return encode_input(self.x[:n], self.y[:n], self.per_step, self.probes), self.want[:steps * self.step_bytes()]

    def assert_same(self, got: bytes, steps: int | None = None, want: bytes | None = None) -> None:
        steps = self.steps if steps is None else steps
        mismatch = es_compare(self.model, self.export, self.want if want is None else want, got, steps,
                              self.per_step, N_PROBE)
        assert mismatch is None, f"C differs from ESTrainer: {mismatch}"

    def assert_trained(self) -> None:
        """The comparison is not vacuous: generations ran and moved the trained values (one-plus-one: some
        offspring accepted, some rejected, so sigma went both ways)."""
        ran = [i for i in self.infos if "waiting" not in i.metrics]
        assert len(ran) >= self.steps - 1
        assert sum(i.ledger.weight_writes for i in ran) > 0, "no generation changed a trained value"
        if self.trainer.estimator == "one-plus-one":
            accepted = [i.metrics["accepted"] for i in ran]
            assert 0.0 in accepted and 1.0 in accepted, accepted


# -- a small dense model ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dense():
    """A uint8 two-layer MLP from a random torch net, 64 raw inputs and random labels (5 classes)."""
    with torch_threads(1):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            net = nn.Sequential(nn.Flatten(), nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 5))
        g = torch.Generator().manual_seed(0)
        model, _ = convert(net, torch.randn(128, 2, 3, 4, generator=g), "uint8")
        q = quantize_input(model, torch.randn(64, 2, 3, 4, generator=g))
        return model, q, torch.randint(0, 5, (64,), generator=g)


# name -> (trainer, samples per driver call): every estimator, distribution and rounding the C implements;
# weight-only, bias-only and whole-model selections; sigma 2.5 rounds +-sigma to different magnitudes
DENSE_CASES = {
    "spsa-all": (_es(estimator="spsa", params="all", sigma=8.0, lr=64.0), None),
    "spsa-2dirs-floor": (_es(estimator="spsa", directions=2, params="last:1", sigma=8.0, lr=96.0, rounding="floor"),
                         None),
    "antithetic-4-nearest": (_es(estimator="antithetic", population=4, params="all", sigma=8.0, lr=4.0,
                                 rounding="nearest"), None),
    # int32 biases at the accumulator scale: a step of a few LSBs moves no logit, so sigma and lr are large
    "antithetic-2-bias": (_es(estimator="antithetic", population=2, params="bias", sigma=1024.0, lr=1024.0,
                              sigma_max=4096.0), None),
    # sigma held at 2.5, where round(sigma z) is 3 for z = 1 and -2 for z = -1
    "one-plus-one-weight-only-tie": (_es(estimator="one-plus-one", params="3.weight", sigma=2.5, sigma_min=2.5,
                                         sigma_max=2.5), None),
    "one-plus-one-uniform": (_es(estimator="one-plus-one", params="all", sigma=16.0, distribution="uniform"), None),
    "one-plus-one-gaussian": (_es(estimator="one-plus-one", params="last:1", sigma=32.0, distribution="gaussian"),
                              None),
    "spsa-uniform-nearest": (_es(estimator="spsa", params="all", sigma=8.0, lr=64.0, distribution="uniform",
                                 rounding="nearest"), None),
    "spsa-gaussian": (_es(estimator="spsa", params="last:1", sigma=8.0, lr=64.0, distribution="gaussian"), None),
    # 3 samples per call into a ring buffer of 5: the first call waits, the slots wrap around
    "spsa-ring-3-into-5": (_es(batch=5, estimator="spsa", params="all", sigma=8.0, lr=64.0), 3),
}


@needs_gcc
@pytest.mark.parametrize("name", list(DENSE_CASES))
def test_host_dense_bit_exact(dense, tmp_path, name):
    model, q, y = dense
    trainer, per_step = DENSE_CASES[name]
    case = Case(model, trainer, q, y, tmp_path / "export", per_step=per_step, seed=7)
    case.assert_trained()
    case.assert_same(run_host(case.export, case.data))


@needs_gcc
def test_host_conv1d_with_global_average_pool_bit_exact(tmp_path):
    """Every layer kind of the forward: conv1d (padded, strided), ReLU, max pool, global average pool, dense."""
    with torch.random.fork_rng():
        torch.manual_seed(1)
        net = nn.Sequential(nn.Conv1d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2),
                            nn.Conv1d(4, 6, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
                            nn.Flatten(), nn.Linear(6, 4))
    g = torch.Generator().manual_seed(1)
    model, _ = convert(net, torch.randn(128, 3, 41, generator=g), "uint8")
    q, y = quantize_input(model, torch.randn(48, 3, 41, generator=g)), torch.randint(0, 4, (48,), generator=g)
    case = Case(model, _es(estimator="spsa", directions=2, params="all", sigma=8.0, lr=64.0), q, y, tmp_path / "c")
    case.assert_trained()
    case.assert_same(run_host(case.export, case.data))


# -- the digits CNN ---------------------------------------------------------------------------------------------

DIGITS_BATCH = 16
DIGITS_CASES = {
    "spsa": _es(DIGITS_BATCH, estimator="spsa", params="last:2", sigma=8.0, lr=64.0),
    "one-plus-one": _es(DIGITS_BATCH, estimator="one-plus-one", params="last:2", sigma=4.0),
    "antithetic": _es(DIGITS_BATCH, estimator="antithetic", population=4, params="last:1", sigma=8.0, lr=8.0),
}


@pytest.fixture(scope="module")
def digits_model(digits_cnn_uint8):
    """A uint8 CNN for digits pre-trained briefly in float, and 800 raw training samples."""
    model, q, y = digits_cnn_uint8
    m = STEPS * DIGITS_BATCH
    assert m <= q.shape[0]
    return model, q[:m], y[:m]


@pytest.fixture(scope="module")
def digits(digits_model, tmp_path_factory):
    """estimator -> Case, built on first use."""
    cases: dict[str, Case] = {}

    def get(name: str) -> Case:
        if name not in cases:
            with torch_threads(1):
                model, q, y = digits_model
                cases[name] = Case(model, DIGITS_CASES[name], q, y, tmp_path_factory.mktemp(f"digits-{name}"))
        return cases[name]

    return get


@needs_gcc
@pytest.mark.parametrize("name", list(DIGITS_CASES))
def test_host_digits_cnn_bit_exact(digits, name):
    case = digits(name)
    assert case.export.params == case.trainer.writes(case.model)
    case.assert_trained()
    case.assert_same(run_host(case.export, case.data))


@needs_gcc
def test_host_digits_cnn_sanitized_bit_exact(digits, tmp_path):
    case = digits("spsa")
    got = run_host(case.export, case.data, sanitize=True, workdir=tmp_path)
    case.assert_same(got)
    rc, output = toolchain.run_host_program(tmp_path / "et_host_asan", tmp_path)  # read the console again
    assert rc == 0 and "et firmware: ok" in output, output
    assert "Sanitizer" not in output and "runtime error" not in output, output
    assert (tmp_path / "et_out.bin").read_bytes() == got


def _planned(case: Case) -> int:
    return es_memory(case.model, case.trainer.writes(case.model), batch=case.trainer.batch,
                     members=case.trainer.members)["arena_bytes"]


@pytest.mark.mcu
@needs_target
def test_target_m4_digits_cnn_bit_exact(digits):
    case = digits("spsa")
    run = run_target(case.export, case.data, "cortex-m4", plugin=False)
    case.assert_same(run.output)
    assert run.arena_symbol_bytes == case.export.arena_bytes == _planned(case)
    assert run.size["bss"] >= case.export.arena_bytes


@pytest.mark.mcu
@needs_target
def test_target_m4_dense_soft_float_paths_bit_exact(dense, tmp_path):
    """Gaussian noise with stochastic rounding and one-plus-one's sigma adaptation: the double arithmetic runs
    in the M4's soft-float routines."""
    model, q, y = dense
    for name in ("spsa-gaussian", "one-plus-one-gaussian"):
        case = Case(model, DENSE_CASES[name][0], q, y, tmp_path / name, steps=20, seed=7)
        run = run_target(case.export, case.data, "cortex-m4", plugin=False)
        case.assert_same(run.output)
        assert run.arena_symbol_bytes == case.export.arena_bytes == _planned(case)


# -- memory --------------------------------------------------------------------------------------------------

def test_arena_is_the_es_plan_and_says_what_it_adds(digits_model, tmp_path):
    model, _, _ = digits_model
    trainer = DIGITS_CASES["spsa"]
    export = export_es(model, trainer, tmp_path / "export")
    names = trainer.writes(model)
    mem = es_memory(model, names, batch=DIGITS_BATCH, members=trainer.members)
    assert export.arena_bytes == mem["arena_bytes"] == export.manifest["arena_bytes"]
    assert {b["name"]: b["offset"] for b in export.manifest["buffers"]} == export.offsets
    params = sum(model.param(n)[0].numel() * (1 if n.endswith(".weight") else 4) for n in names)
    items, extra = mem["items"], trainer.extra_memory(model)
    assert items["theta"] == items["member_copy"] == params
    assert items["samples_x"] + items["samples_y"] == extra["sample_buffer"]
    assert items["fitness"] == extra["fitness"]
    # what the C holds beyond ESTrainer.extra_memory: inference activations, theta, the member copy, and
    # 64-bit sigma / seen registers; its noise generators live on the stack
    assert export.arena_bytes >= items["activations"] + 2 * params + extra["sample_buffer"] + extra["fitness"] + 24
    assert export.arena_bytes > extra["total"]


# -- ctypes: the random source, the rounding thresholds and the API ----------------------------------------------

class Lib:
    """An ES export loaded with ``ctypes``."""

    def __init__(self, export, path):
        so = toolchain.compile_host_library([export.out_dir / s for s in export.sources], [export.out_dir], path)
        self.dll = dll = ctypes.CDLL(str(so))
        dll.et_es_derive_seed.restype = ctypes.c_uint32
        dll.et_es_derive_seed.argtypes = [ctypes.c_uint64, ctypes.POINTER(ctypes.c_uint64), ctypes.c_int]
        dll.et_es_seed_state.restype = ctypes.c_uint32
        dll.et_es_seed_state.argtypes = [ctypes.c_uint64]
        dll.et_es_lfsr_words.argtypes = [ctypes.c_uint64, ctypes.POINTER(ctypes.c_uint32), ctypes.c_int]
        dll.et_es_draw.argtypes = [ctypes.c_uint64, ctypes.c_int, ctypes.POINTER(ctypes.c_double), ctypes.c_int]
        dll.et_es_stochastic_round_all.argtypes = [ctypes.c_double, ctypes.POINTER(ctypes.c_int64)]
        dll.et_es_step.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]
        dll.et_es_state_size.restype = ctypes.c_uint32
        dll.et_es_state_write.restype = ctypes.c_uint32
        dll.et_es_state_write.argtypes = [ctypes.c_void_p, ctypes.c_uint32]

    def derive_seed(self, seed: int, *keys: int) -> int:
        arr = (ctypes.c_uint64 * max(len(keys), 1))(*keys)
        return self.dll.et_es_derive_seed(seed, arr, len(keys))

    def words(self, seed: int, n: int) -> list[int]:
        buf = (ctypes.c_uint32 * n)()
        self.dll.et_es_lfsr_words(seed, buf, n)
        return list(buf)

    def draw(self, seed: int, distribution: str, n: int) -> torch.Tensor:
        z = (ctypes.c_double * n)()
        self.dll.et_es_draw(seed, ("rademacher", "uniform", "gaussian").index(distribution), z, n)
        return torch.tensor(list(z), dtype=torch.float64)

    def stochastic_round_all(self, s: float) -> torch.Tensor:
        q = (ctypes.c_int64 * 65536)()
        self.dll.et_es_stochastic_round_all(s, q)
        return torch.tensor(list(q), dtype=torch.int64)

    def step(self, x: torch.Tensor, y: torch.Tensor, n: int | None = None) -> int:
        xb = bytes(x.reshape(-1).to(torch.uint8).tolist())
        yb = bytes(y.reshape(-1).to(torch.uint8).tolist())
        return self.dll.et_es_step(xb, yb, x.shape[0] if n is None else n)

    def state(self) -> bytes:
        size = self.dll.et_es_state_size()
        buf = ctypes.create_string_buffer(size)
        assert self.dll.et_es_state_write(buf, size) == size
        return buf.raw


@pytest.fixture(scope="module")
def dense_lib(dense, tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("needs the host C compiler (apt-get install gcc)")
    model, _, _ = dense
    trainer = _es(estimator="spsa", params="all", sigma=8.0, lr=64.0)
    export = export_es(model, trainer, tmp_path_factory.mktemp("es-lib"), seed=3)
    return Lib(export, export.out_dir / "libet_es.so"), model, trainer


SEEDS = [0, 1, 12345, 2**31 - 1, 2**32, 2**63 + 5, 2**64 - 1]


def test_ctypes_seeds_and_lfsr_words_match_python(dense_lib):
    lib = dense_lib[0]
    for seed in SEEDS:
        assert lib.dll.et_es_seed_state(seed) == seed_state(seed)
        for keys in [(), (0,), (5, 3, 0), (2**64 - 1, 1), (17, 2), (0, 3, 1)]:
            assert lib.derive_seed(seed, *keys) == derive_seed(seed, *keys), (seed, keys)
        # 2500 words: past the 1024-word blocks after which Python jumps ahead with GF(2) matrices
        assert lib.words(seed, 2500) == lfsr_words(seed, 2500).tolist(), seed
    state, want = seed_state(SEEDS[2]), []
    for _ in range(3):  # the scalar reference: 32 single clocks per word
        for _ in range(32):
            state = lfsr_step(state)
        want.append(state)
    assert lib.words(SEEDS[2], 3) == want


@pytest.mark.parametrize("distribution", ["rademacher", "uniform", "gaussian"])
def test_ctypes_noise_values_match_python_bit_for_bit(dense_lib, distribution):
    lib = dense_lib[0]
    for seed in SEEDS:
        want = draw([seed], 1001, distribution, "lfsr")[0]
        got = lib.draw(seed, distribution, 1001)
        assert torch.equal(got.view(torch.int64), want.view(torch.int64)), (seed, distribution)


def test_ctypes_stochastic_rounding_thresholds_match_python(dense_lib):
    """floor(s + (u / sqrt 3 + 1) / 2) over every 16-bit stream value, as the trainer computes it (draw
    'uniform', then _rounding_noise), equals what the C's update computes from one threshold on h."""
    lib = dense_lib[0]
    h = torch.arange(65536, dtype=torch.int64)
    u = ((h.to(torch.float64) + 0.5) / 65536.0 * 2.0 - 1.0) * math.sqrt(3.0)
    offset = (u / math.sqrt(3.0) + 1.0) / 2.0
    g = torch.Generator().manual_seed(0)
    values = (torch.rand(60, generator=g, dtype=torch.float64) * 20 - 10).tolist()
    values += [0.0, -0.0, 1.0, -1.0, 3.0, 0.5, -0.5, 2**-20, -(2**-20), 7 - 2**-40, -7 + 2**-40, 1e-300, 2.0**40 + 0.25,
               -(2.0**40) - 0.75, math.nextafter(1.0, 0.0), math.nextafter(-1.0, 0.0), 2.0**52 - 0.5, 2.0**52 + 1,
               -(2.0**52) - 1, 2.0**53, 2.0**62, -(2.0**62)]
    for s in values:
        want = torch.floor(torch.tensor(s, dtype=torch.float64) + offset).to(torch.int64)
        assert torch.equal(want, lib.stochastic_round_all(s)), s


def test_ctypes_step_pushes_waits_and_refuses_like_python(dense_lib, dense):
    lib, model, trainer = dense_lib
    _, q, y = dense
    b = trainer.batch
    state = trainer.init(model, seed=3)
    assert lib.dll.et_es_init() == 0
    assert lib.state() == es_state_bytes(model, trainer, state)
    # refused calls change nothing
    assert lib.step(q[:2], y[:2], n=-1) < 0
    bad = y[:3].clone()
    bad[1] = model.output_shape[0]
    assert lib.step(q[:3], bad) < 0
    assert lib.state() == es_state_bytes(model, trainer, state)
    # fewer samples than a mini-batch: wait; an empty call waits too
    for xs, ys in [(q[:3], y[:3]), (q[:0], y[:0])]:
        assert lib.step(xs, ys) == 0
        state, info = trainer.step(state, (xs, ys))
        assert info.metrics.get("waiting") == 1.0
        assert lib.state() == es_state_bytes(model, trainer, state)
    # more than the buffer holds in one call (only the last b samples stay), then an empty call, which
    # runs a generation on what the buffer holds, as in Python
    for xs, ys in [(q[3:3 + 2 * b + 3], y[3:3 + 2 * b + 3]), (q[:0], y[:0]), (q[40:41], y[40:41])]:
        assert lib.step(xs, ys) == 1
        state, info = trainer.step(state, (xs, ys))
        assert "waiting" not in info.metrics
        assert lib.state() == es_state_bytes(model, trainer, state)
    assert state.step == 3 and state.seen == 3 + 2 * b + 3 + 1


# -- refusals -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"source": "torch"}, "source 'torch'"),
    ({"fitness": "ce"}, "fitness 'ce'.*log_softmax"),
    ({"rank": 2}, "rank 2"),
    ({"shadow": True}, "shadow True"),
    ({"buffer": 16}, "buffer == batch.*buffer 16 > batch 8.*randperm"),
    ({"estimator": "antithetic", "population": 6}, "population 6.*at most 2 pair"),
    ({"estimator": "spsa", "directions": 3}, "directions 3.*at most 2 pair"),
    ({"estimator": "spsa", "distribution": "uniform", "directions": 2}, "'uniform'.*at most 1 pair"),
    ({"estimator": "antithetic", "distribution": "gaussian", "population": 4}, "'gaussian'.*at most 1 pair"),
])
def test_refuses_settings_it_does_not_reproduce(dense, tmp_path, kwargs, message):
    model, _, _ = dense
    base = {"estimator": "spsa", "fitness": "accuracy", "source": "lfsr", "buffer": 8, "batch": 8, "params": "all"}
    trainer = ESTrainer(**{**base, **kwargs})
    with pytest.raises(NotExportable, match=message):
        check_es_exportable(model, trainer)
    with pytest.raises(NotExportable, match=message):
        export_es(model, trainer, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_models_seeds_and_trainers_it_cannot_run(dense, tmp_path):
    model, _, _ = dense
    trainer = _es(estimator="spsa", params="all")
    check_es_exportable(model, trainer, seed=2**64 - 1)
    for seed in (-1, 2**64, 1.5):
        with pytest.raises(NotExportable, match="seed"):
            export_es(model, trainer, tmp_path / "out", seed=seed)
    with pytest.raises(NotExportable, match="needs an ESTrainer"):
        check_es_exportable(model, object())
    net = nn.Sequential(nn.Flatten(), nn.Linear(24, 5))
    fixed, _ = convert(net, torch.randn(32, 2, 3, 4, generator=torch.Generator().manual_seed(0)), "fixed16_6")
    with pytest.raises(NotExportable, match="input must be uint8.*fixed16_6"):
        export_es(fixed, trainer, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -- the command line -----------------------------------------------------------------------------------------

@needs_gcc
def test_cli_export_c_train_es_checks_on_the_host(digits_model, tmp_path, capsys):
    model, _, _ = digits_model
    path = save_model(model, tmp_path / "digits.etm")
    out, rec_path = tmp_path / "c", tmp_path / "rec.json"
    rc = main(["export-c", str(path), "--train", "es", "--estimator", "one-plus-one", "--batch", "8", "--steps", "4",
               "--sigma", "4", "--out", str(out), "--json", str(rec_path)])
    assert rc == 0, capsys.readouterr().err
    rec = json.loads(rec_path.read_text())
    assert rec["method"] == "es-one-plus-one"
    assert rec["export"]["host"].startswith("bit-exact over 4 generations")
    assert rec["ledger"]["train_ram_bytes"] == rec["export"]["arena_bytes"] == json.loads(
        (out / "manifest.json").read_text())["arena_bytes"]
    assert (out / "et_es.c").exists() and (out / "et_model.c").read_text().count("one-plus-one") >= 1
    for args, message in [(["--fitness", "ce"], "fitness 'ce'"), (["--source", "torch"], "source 'torch'"),
                          (["--buffer", "32"], "buffer == batch"), (["--update-rate", "0.5"], "--train fqt only")]:
        assert main(["export-c", str(path), "--train", "es", "--check", "none", "--out", str(tmp_path / "x"),
                     *args]) == 2
        assert message in capsys.readouterr().err
    assert main(["export-c", str(path), "--check", "none", "--out", str(tmp_path / "y"), "--sigma", "3"]) == 2
    assert "--sigma applies to --train es only" in capsys.readouterr().err


def test_state_bytes_layout(dense):
    """es_state_bytes: the trained tensors in the trainer's order, then step, accepted, seen, sigma."""
    model, _, _ = dense
    trainer = _es(estimator="one-plus-one", params="last:1", sigma=6.0)
    data = es_state_bytes(model, trainer, trainer.init(model))
    w, b = model.param("3.weight")[0], model.param("3.bias")[0]
    assert data[:w.numel()] == bytes(w.reshape(-1).tolist())
    assert struct.unpack(f"<{b.numel()}i", data[w.numel():w.numel() + 4 * b.numel()]) == tuple(b.tolist())
    assert struct.unpack("<IIQd", data[-24:]) == (0, 0, 0, 6.0)

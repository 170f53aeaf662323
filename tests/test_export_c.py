"""C export of FQT training (``export.generate`` / ``export.check``): the generated C library trains
bit for bit as ``FQTTrainer(precision="uint8", ranges="fixed", optimizer=sgd)`` does, with dynamic
partial updates, for every layer type (host ``gcc``), on the digits CNN (host, ASan + UBSan, per-layer
observer through ``ctypes``), on a 1-D CNN for BasicMotions, and on emulated Cortex-M0+/M4/M7 (QEMU);
the arena the ELF allocates is the one the memory ledger plans. Configurations and inputs the C does not
handle are refused by name."""

from __future__ import annotations

import ctypes
import dataclasses
import shutil
import struct

import pytest
import torch
from torch import nn

from edgetrain.cost.training_memory import training_memory
from edgetrain.data import load_dataset
from edgetrain.experiments.deploy import pretrain_and_deploy
from edgetrain.experiments.export_c import CONV_FORWARD
from edgetrain.export import toolchain
from edgetrain.export.check import compare, encode_input, reference_output, run_host, run_target, state_bytes
from edgetrain.export.generate import NotExportable, check_exportable, export_fqt, parse_state
from edgetrain.model.convert import convert
from edgetrain.model.forward import forward_int, quantize_input
from edgetrain.threads import torch_threads
from edgetrain.train.fqt import backward as fqt_backward
from edgetrain.train.fqt.backward import PartialPolicy, backward_uint8
from edgetrain.train.fqt.kernels import error_format
from edgetrain.train.fqt.optimizer import Optimizer
from edgetrain.train.fqt.trainer import FQTTrainer
from edgetrain.train.select import trainable_layers

pytestmark = pytest.mark.usefixtures("one_torch_thread")

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs the host C compiler (apt-get install gcc)")
needs_target = pytest.mark.skipif(
    not toolchain.have_target_toolchain(),
    reason="needs arm-none-eabi-gcc with newlib and qemu-system-arm "
           "(apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm)")

RATES = {"full": (1.0, 1.0), "dyn10": (0.0, 0.1), "dyn50": (0.0, 0.5), "fix29": (0.29, 0.29)}
N_PROBE = 2


def _trainer(params: str, batch: int, rate: str = "full", lr: float = 0.1) -> FQTTrainer:
    lam_min, lam_max = RATES[rate]
    return FQTTrainer(precision="uint8", params=params, lam_min=lam_min, lam_max=lam_max,
                      optimizer=Optimizer("sgd", lr=lr), ranges="fixed", batch=batch)


def _take(q: torch.Tensor, y: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` samples of ``q``, ``y``, wrapping around."""
    idx = torch.arange(n) % q.shape[0]
    return q[idx], y[idx]


class Case:
    """One exported configuration and what its driver must write for ``steps`` steps of ``per_step``."""

    def __init__(self, model, trainer, q, y, out_dir, steps: int, per_step: int | None = None):
        self.model, self.trainer, self.steps = model, trainer, steps
        self.per_step = per_step or trainer.batch
        self.export = export_fqt(model, trainer, out_dir)
        self.x, self.y = _take(q, y, steps * self.per_step)
        self.probes = q[-N_PROBE:]
        self.data = encode_input(self.x, self.y, self.per_step, self.probes)
        self.want = reference_output(model, trainer, self.x, self.y, self.per_step, self.probes)
        self.state_len = len(state_bytes(model, trainer, trainer.init(model)))

    def step_bytes(self) -> int:
        classes = self.model.output_shape[0]
        return (self.per_step + N_PROBE) * classes + 4 + self.state_len

    def first(self, steps: int) -> tuple[bytes, bytes]:
        """(``et_in.bin``, expected ``et_out.bin``) of the first ``steps`` steps only (a prefix of the run)."""
        n = steps * self.per_step
        data = encode_input(self.x[:n], self.y[:n], self.per_step, self.probes)
        return data, self.want[:steps * self.step_bytes()]

    def assert_same(self, got: bytes, steps: int | None = None, want: bytes | None = None) -> None:
        steps = self.steps if steps is None else steps
        want = self.want if want is None else want
        mismatch = compare(self.model, self.export, want, got, steps, self.per_step, N_PROBE)
        assert mismatch is None, f"C differs from FQTTrainer: {mismatch}"

    def final_state(self):
        return parse_state(self.model, self.export, self.want[-self.state_len:])

    def assert_trained(self) -> None:
        """The comparison is not vacuous: every trained layer's parameters moved."""
        for i, st in self.final_state().items():
            layer = self.model.layers[i]
            assert not torch.equal(st.bias, layer.bias), f"layer {i}: training changed no bias"
            if st.weight is not None:
                assert not torch.equal(st.weight, layer.weight), f"layer {i}: training changed no weight"


# -- small models of each layer type ------------------------------------------------------------------

def _small_nets() -> dict[str, tuple[nn.Sequential, tuple[int, ...], int]]:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return _build_small_nets()


def _build_small_nets() -> dict[str, tuple[nn.Sequential, tuple[int, ...], int]]:
    return {
        # dense only; 100 hidden rows, where a 29% static rate is 28.999... rows in doubles and must keep 29
        "mlp": (nn.Sequential(nn.Flatten(), nn.Linear(24, 100), nn.ReLU(), nn.Linear(100, 5)), (2, 3, 4), 5),
        # conv2d (non-square kernel, odd filter count) below a padded stride-2 conv2d, so that its input
        # error (the transposed convolution with stride and padding) is made when every layer trains
        "conv2d": (nn.Sequential(nn.Conv2d(2, 3, (2, 3), padding=(0, 1)), nn.ReLU(),
                                 nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Flatten(), nn.Linear(24, 5)), (2, 9, 9), 5),
        # conv1d over a long series (141 positions, odd: the max pool drops one), a padded stride-2
        # conv1d, global average pool
        "conv1d": (nn.Sequential(nn.Conv1d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2),
                                 nn.Conv1d(4, 6, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
                                 nn.Flatten(), nn.Linear(6, 4)), (3, 141), 4),
        # larger stride-1 conv2d layers: 144 output positions below, a fan-in of 144 above
        "conv2d_wide": (nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 7, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Flatten(), nn.Linear(63, 5)), (3, 12, 12), 5),
        # the forward's fallbacks: a padded input (1 x 48 x 48) larger than the C's padded-copy buffer
        # (ET_CONV_PAD, 2048 bytes: gather with bounds checks), a fan-in of 270 above ET_WFAN (256: the
        # reference loop, here with stride 2); between them a 2 x 2 kernel of stride 1 (the weight
        # gradient's path for kernels at most 3 wide, with 2 taps per row)
        "conv2d_edge": (nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
                                      nn.Conv2d(3, 30, 2), nn.ReLU(), nn.Conv2d(30, 4, 3, stride=2),
                                      nn.Flatten(), nn.Linear(64, 5)), (1, 46, 46), 5),
    }


@pytest.fixture(scope="module")
def small_models():
    """name -> (uint8 model, 32 raw inputs, labels), from randomly initialized torch nets."""
    with torch_threads(1):  # module fixtures start before the per-test one-thread fixture
        out = {}
        for k, (name, (net, shape, classes)) in enumerate(_small_nets().items()):
            g = torch.Generator().manual_seed(k)
            model, _ = convert(net, torch.randn(128, *shape, generator=g), "uint8")
            q = quantize_input(model, torch.randn(32, *shape, generator=g))
            out[name] = (model, q, torch.randint(0, classes, (32,), generator=g))
        return out


# (params, batch, rate) for each small model: every layer trained at batch 1 and 4 with the full update
# and both dynamic rates, the last layer alone, bias-only training, and only the first layer (frozen
# ones above it pass the error down without partial updates)
LAYER_CASES = [
    ("all", 1, "full"), ("all", 4, "dyn10"), ("all", 1, "dyn50"), ("all", 4, "dyn50"),
    ("last:1", 4, "full"), ("last:1", 1, "dyn10"), ("bias:last:2", 4, "dyn10"), ("first", 4, "dyn50"),
]
HOST_CASES = ([(name, *c) for name in ("mlp", "conv2d", "conv1d") for c in LAYER_CASES]
              + [("mlp", "all", 4, "fix29"), ("mlp", "bias:last:2", 1, "full"),
                 ("conv2d_wide", "all", 1, "full"), ("conv2d_wide", "all", 4, "dyn50"),
                 ("conv2d_wide", "bias:last:2", 4, "dyn10"),
                 ("conv2d_edge", "all", 1, "full"), ("conv2d_edge", "all", 4, "dyn50")])


def _id(case: tuple) -> str:
    name, params, batch, rate = case
    return f"{name}-{params}-b{batch}-{rate}"


@needs_gcc
@pytest.mark.parametrize("name, params, batch, rate", HOST_CASES, ids=[_id(c) for c in HOST_CASES])
def test_host_each_layer_type_bit_exact(small_models, tmp_path, name, params, batch, rate):
    model, q, y = small_models[name]
    if params == "first":
        params = str(trainable_layers(model)[0])
    case = Case(model, _trainer(params, batch, rate), q, y, tmp_path / "export", steps=50)
    assert case.export.trained == tuple(sorted(case.trainer.layers(model)[0]))
    case.assert_trained()
    case.assert_same(run_host(case.export, case.data))


@needs_gcc
@pytest.mark.parametrize("name", ["mlp", "conv1d"])
def test_host_steps_shorter_than_the_batch_and_a_narrow_error_range(small_models, tmp_path, name):
    """3 samples per step with a gradient buffer for 4 (the update divides by 3), errors in [-0.25, 0.25]."""
    model, q, y = small_models[name]
    trainer = dataclasses.replace(_trainer("all", 4, "dyn50"), error_range=0.25)
    case = Case(model, trainer, q, y, tmp_path / "export", steps=50, per_step=3)
    case.assert_trained()
    case.assert_same(run_host(case.export, case.data))


# -- the digits CNN -----------------------------------------------------------------------------------

DIGITS_STEPS, DIGITS_BATCH = 50, 8


@pytest.fixture(scope="module")
def digits_model(digits_cnn_uint8):
    """A uint8 CNN for digits pre-trained briefly in float, and 400 raw training samples."""
    model, q, y = digits_cnn_uint8
    m = DIGITS_STEPS * DIGITS_BATCH
    assert m <= q.shape[0]
    return model, q[:m], y[:m]


@pytest.fixture(scope="module")
def digits(digits_model, tmp_path_factory) -> Case:
    """The digits CNN trained on its last two layers, 10% dynamic updates, batch 8: export and reference."""
    with torch_threads(1):
        model, q, y = digits_model
        return Case(model, _trainer("last:2", DIGITS_BATCH, "dyn10", lr=0.05), q, y,
                    tmp_path_factory.mktemp("digits"), steps=DIGITS_STEPS)


@needs_gcc
def test_host_digits_cnn_bit_exact(digits):
    assert digits.export.trained == (3, 7) and digits.export.bias_only == ()
    digits.assert_trained()
    digits.assert_same(run_host(digits.export, digits.data))


@needs_gcc
def test_host_digits_cnn_sanitized_bit_exact(digits, tmp_path):
    got = run_host(digits.export, digits.data, sanitize=True, workdir=tmp_path)
    digits.assert_same(got)
    # the sanitizers abort on their first report; run the built program again to read its console
    rc, output = toolchain.run_host_program(tmp_path / "et_host_asan", tmp_path)
    assert rc == 0 and "et firmware: ok" in output, output
    assert "Sanitizer" not in output and "runtime error" not in output, output
    assert (tmp_path / "et_out.bin").read_bytes() == got


# -- a 1-D CNN on BasicMotions --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def motions_model():
    with torch_threads(1):
        try:
            ds = load_dataset("ts:BasicMotions")
        except FileNotFoundError as e:
            pytest.skip(f"the BasicMotions .ts files (shared/data/BasicMotions) are not available: {e}")
        dep = pretrain_and_deploy(ds, "cnn", "uint8", epochs=3, seed=0, show_progress=False)
        return dep.model, quantize_input(dep.model, ds.train.x), ds.train.y


@pytest.fixture(scope="module")
def motions(motions_model, tmp_path_factory) -> dict[int, Case]:
    """batch -> Case: batch 1 trains every layer (dynamic, up to 50%), batch 8 the last two (10%)."""
    with torch_threads(1):
        model, q, y = motions_model
        return {1: Case(model, _trainer("all", 1, "dyn50", lr=0.05), q, y, tmp_path_factory.mktemp("ts1"), 50),
                8: Case(model, _trainer("last:2", 8, "dyn10", lr=0.05), q, y, tmp_path_factory.mktemp("ts8"), 50)}


@needs_gcc
@pytest.mark.parametrize("batch", [1, 8])
def test_host_series_cnn_bit_exact(motions, batch):
    case = motions[batch]
    assert any(type(layer).__name__ == "Conv1d" for layer in case.model.layers)
    case.assert_trained()
    case.assert_same(run_host(case.export, case.data))


# -- ctypes: the library's API and its observer -----------------------------------------------------------

OBSERVER = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32)


class Lib:
    """The generated library loaded with ``ctypes``."""

    def __init__(self, case: Case, path):
        so = toolchain.compile_host_library([case.export.out_dir / "et_kernels.c", case.export.out_dir / "et_model.c"],
                                            [case.export.out_dir], path)
        self.case = case
        self.dll = ctypes.CDLL(str(so))
        self.dll.et_init.restype = ctypes.c_int
        self.dll.et_predict.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
        self.dll.et_train_step.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]
        self.dll.et_train_step.restype = ctypes.c_int
        self.dll.et_state_size.restype = ctypes.c_uint32
        self.dll.et_state_write.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        self.dll.et_state_write.restype = ctypes.c_uint32
        self._observer = ctypes.c_void_p.in_dll(self.dll, "et_observer")

    def train_step(self, x: torch.Tensor, y: torch.Tensor, n: int | None = None) -> int:
        xb = bytes(x.reshape(-1).to(torch.uint8).tolist())
        yb = bytes(y.reshape(-1).to(torch.uint8).tolist())
        return self.dll.et_train_step(xb, yb, x.shape[0] if n is None else n)

    def state(self) -> bytes:
        size = self.dll.et_state_size()
        buf = ctypes.create_string_buffer(size)
        assert self.dll.et_state_write(buf, size) == size
        return buf.raw

    def observe(self, events: list | None):
        """Record ``(event, layer, sample, bytes)`` into ``events`` (``None``: stop)."""
        if events is None:
            self._observer.value = None
            self._callback = None
            return

        def callback(event, layer, sample, data, nbytes):
            events.append((event, layer, sample, ctypes.string_at(data, nbytes)))

        self._callback = OBSERVER(callback)  # kept alive while the library may call it
        self._observer.value = ctypes.cast(self._callback, ctypes.c_void_p).value


@pytest.fixture(scope="module")
def digits_lib(digits, tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("needs the host C compiler (apt-get install gcc)")
    lib = Lib(digits, tmp_path_factory.mktemp("lib") / "libet_digits.so")
    yield lib
    lib.observe(None)


def _u8(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64)


def _i32(data: bytes) -> torch.Tensor:
    return torch.tensor(struct.unpack(f"<{len(data) // 4}i", data), dtype=torch.int64)


def test_ctypes_observer_matches_forward_and_backward(digits_lib, monkeypatch):
    case = digits_lib.case
    model, trainer = case.model, case.trainer
    x, y = case.x[:DIGITS_BATCH], case.y[:DIGITS_BATCH]
    n = len(model.layers)
    trained, bias_only = trainer.layers(model)

    # Python: the forward trace, and the backward with the errors each trained layer's gradients use
    trace = forward_int(model, x, overflow="wrap", trace=True)
    errors = []
    real_bias_grad = fqt_backward.bias_grad

    def spy(e, ef, rows=None):  # the backward calls it for each trained layer with the error it uses
        errors.append(e.clone())
        return real_bias_grad(e, ef, rows)

    monkeypatch.setattr(fqt_backward, "bias_grad", spy)
    e_fmts = {i: error_format(-1.0, 1.0) for i in range(n + 1)}
    assert e_fmts == trainer._e_fmts(trainer.init(model), n)
    grads = backward_uint8(model, x, y, trained, trace, e_fmts, PartialPolicy(trainer.lam_min, trainer.lam_max),
                           {}, bias_only)
    order = sorted(trained, reverse=True)  # the backward meets the trained layers top down
    assert len(errors) == len(order)
    py_errors = dict(zip(order, errors, strict=True))
    after, _ = trainer.step(trainer.init(model), (x, y))

    # C: one training step, observed
    assert digits_lib.dll.et_init() == 0
    events: list = []
    digits_lib.observe(events)
    try:
        assert digits_lib.train_step(x, y) == 0
    finally:
        digits_lib.observe(None)
    by = {}
    for event, layer, sample, data in events:
        assert (event, layer, sample) not in by, f"event {event} of layer {layer}, sample {sample} twice"
        by[event, layer, sample] = data

    # event 0: every layer's output for every sample
    assert {k for k in by if k[0] == 0} == {(0, i, s) for i in range(n) for s in range(DIGITS_BATCH)}
    for i in range(n):
        for s in range(DIGITS_BATCH):
            want = trace.outputs[i][s].reshape(-1)
            assert torch.equal(_u8(by[0, i, s]), want), f"forward output of layer {i}, sample {s}"
    # event 1: the error each trained layer's gradients use, after saturation and partial pruning
    assert {k for k in by if k[0] == 1} == {(1, i, s) for i in trained for s in range(DIGITS_BATCH)}
    for i in trained:
        for s in range(DIGITS_BATCH):
            assert torch.equal(_u8(by[1, i, s]), py_errors[i][s].reshape(-1).to(torch.int64)), \
                f"error at the output of layer {i}, sample {s}"
    # events 2 and 3: the batch-summed gradient accumulators before the update, once, after the last sample
    last = DIGITS_BATCH - 1
    assert {k for k in by if k[0] in (2, 3)} == {(e, i, last) for i in trained for e in (2, 3)}
    for i in trained:
        assert torch.equal(_i32(by[2, i, last]), grads.weight[i][0].reshape(-1).to(torch.int64)), f"layer {i} dW"
        assert torch.equal(_i32(by[3, i, last]), grads.bias[i][0].reshape(-1).to(torch.int64)), f"layer {i} db"
        assert int((grads.bias[i][0] != 0).sum()) > 0
    # the partial update kept some rows only, and the state after the step is the trainer's
    assert any(int(grads.rows[i].numel()) < model.layers[i].weight.shape[0] for i in trained)
    assert digits_lib.state() == state_bytes(model, trainer, after)
    st = parse_state(model, case.export, digits_lib.state())
    assert {i: s.e_max for i, s in st.items()} == grads.e_max


# -- Cortex-M under QEMU ---------------------------------------------------------------------------------

def _check_arena(case: Case, run) -> None:
    ledger = training_memory(case.model, case.trainer.writes(case.model), "uint8", accumulate=case.trainer.batch,
                             optimizer="sgd")["arena_bytes"]
    assert run.arena_symbol_bytes == case.export.arena_bytes == ledger


@pytest.mark.mcu
@needs_target
def test_target_m4_digits_cnn_bit_exact(digits):
    run = run_target(digits.export, digits.data, "cortex-m4", plugin=False)
    digits.assert_same(run.output)
    _check_arena(digits, run)
    assert run.size["ram"] < 256 * 1024, run.size
    assert run.size["bss"] >= digits.export.arena_bytes


@pytest.mark.mcu
@needs_target
@pytest.mark.parametrize("cpu", ["cortex-m0plus", "cortex-m7"])
def test_target_other_cores_digits_cnn_bit_exact(digits, cpu):
    data, want = digits.first(10)
    run = run_target(digits.export, data, cpu, plugin=False)
    digits.assert_same(run.output, steps=10, want=want)
    _check_arena(digits, run)


@pytest.mark.mcu
@needs_target
def test_target_m4_series_cnn_bit_exact(motions):
    case = motions[8]
    data, want = case.first(20)
    run = run_target(case.export, data, "cortex-m4", plugin=False)
    case.assert_same(run.output, steps=20, want=want)
    _check_arena(case, run)


@pytest.mark.mcu
@needs_target
@pytest.mark.parametrize("name", ["conv2d", "conv1d", "conv2d_wide", "conv2d_edge"])
def test_target_m4_each_layer_type_bit_exact(small_models, tmp_path, name, monkeypatch):
    model, q, y = small_models[name]
    case = Case(model, _trainer("all", 4, "dyn50"), q, y, tmp_path / "export", steps=20)
    case.assert_trained()
    edge = name == "conv2d_edge"
    if edge:
        monkeypatch.setenv("EDGETRAIN_CACHE_DIR", str(tmp_path / "cache"))  # the plugin build goes here
    run = run_target(case.export, case.data, "cortex-m4", plugin=edge)
    case.assert_same(run.output)
    _check_arena(case, run)
    if edge:  # the fallbacks ran (and gave the same bytes)
        for fn in ("et_conv_fwd_gather_bounds", "et_conv_fwd_direct", "et_conv_fwd_gather", "et_conv_fwd_rows",
                   "et_conv_grad_row_k3"):
            assert run.counts.get(fn, 0) > 0, f"{fn} did not execute: {sorted(run.counts)}"


@pytest.mark.mcu
@needs_target
def test_target_instruction_counts(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETRAIN_CACHE_DIR", str(tmp_path / "cache"))  # the plugin build goes here
    data, want = digits.first(2)
    run = run_target(digits.export, data, "cortex-m4", plugin=True)
    digits.assert_same(run.output, steps=2, want=want)
    assert run.counts is not None and run.counts["[total]"] > 0
    for fn in ("et_conv_fwd", "et_dense_fwd", "et_conv_grad_row", "et_update_layer"):
        assert run.counts.get(fn, 0) > 0, f"{fn} did not execute: {sorted(run.counts)}"
    assert run.counts["et_conv_fwd"] < run.counts["[total]"]
    # the benchmark's conv-forward figure sums CONV_FORWARD: it must name every forward helper that ran
    ran = {fn for fn in run.counts if fn.startswith("et_conv_fwd")}
    assert ran <= set(CONV_FORWARD) and "et_conv_fwd_rows" in ran, sorted(ran)


# -- refusals and malformed input ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlp(small_models):
    return small_models["mlp"]


@pytest.mark.parametrize("kwargs, message", [
    ({"precision": "mixed", "optimizer": Optimizer("sgd")}, "precision 'mixed'"),
    ({"ranges": "moving", "optimizer": Optimizer("sgd")}, "'moving'"),
    ({"optimizer": Optimizer("standardize")}, "'standardize'"),
    ({"optimizer": Optimizer("qas")}, "'qas'"),
    ({"optimizer": Optimizer("sgd", momentum=0.9)}, "momentum"),
])
def test_refuses_configurations_it_does_not_implement(mlp, tmp_path, kwargs, message):
    model, _, _ = mlp
    trainer = FQTTrainer(**kwargs)
    with pytest.raises(NotExportable, match=message):
        check_exportable(model, trainer)
    with pytest.raises(NotExportable, match=message):
        export_fqt(model, trainer, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("scheme", ["fixed16_6", "int8"])
def test_refuses_a_model_not_deployed_in_uint8(scheme, tmp_path):
    net, shape, _ = _small_nets()["conv2d"]
    model, _ = convert(net, torch.randn(32, *shape, generator=torch.Generator().manual_seed(0)), scheme)
    trainer = _trainer("last:2", 1)
    with pytest.raises(NotExportable, match=r"input must be uint8.*" + scheme):
        check_exportable(model, trainer)
    with pytest.raises(NotExportable, match="uint8"):
        export_fqt(model, trainer, tmp_path / "out")


def test_refuses_layer_formats_and_overlapping_pools(mlp):
    model, _, _ = mlp
    trainer = _trainer("last:1", 1)
    check_exportable(model, trainer)
    dense = model.layers[1]
    floor = dataclasses.replace(model, layers=(model.layers[0], dataclasses.replace(
        dense, w_fmt=dataclasses.replace(dense.w_fmt, rounding="floor")), *model.layers[2:]))
    with pytest.raises(NotExportable, match=r"layer 1 \(dense\).*'nearest' rounding"):
        check_exportable(floor, trainer)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(3, stride=1), nn.Flatten(), nn.Linear(8, 3))
    pooled, _ = convert(net, torch.randn(16, 1, 6, 6, generator=torch.Generator().manual_seed(0)), "uint8")
    with pytest.raises(NotExportable, match=r"layer 2: max pool windows overlap"):
        check_exportable(pooled, trainer)


def test_encode_input_rejects_values_and_step_sizes(mlp):
    _, q, y = mlp
    encode_input(q[:4], y[:4], 2, q[:1])  # fine
    bad = q[:4].clone()
    bad[0].reshape(-1)[0] = 256
    with pytest.raises(ValueError, match=r"0\.\.255"):
        encode_input(bad, y[:4], 2, q[:1])
    bad[0].reshape(-1)[0] = -1
    with pytest.raises(ValueError, match=r"0\.\.255"):
        encode_input(bad, y[:4], 2, q[:1])
    with pytest.raises(ValueError, match=r"probes.*0\.\.255"):
        encode_input(q[:4], y[:4], 2, q[:1] + 300)
    with pytest.raises(ValueError, match="do not split into steps of 2"):
        encode_input(q[:5], y[:5], 2, q[:1])
    with pytest.raises(ValueError, match="labels"):
        encode_input(q[:4], y[:3], 2, q[:1])


@needs_gcc
@pytest.mark.parametrize("how, message", [
    ("truncated", "length does not match its header"),
    ("steps too large", "n_per_step <= ET_BATCH"),
])
def test_driver_rejects_malformed_input(mlp, tmp_path, how, message):
    model, q, y = mlp
    export = export_fqt(model, _trainer("last:1", 2), tmp_path / "export")
    if how == "truncated":
        data = encode_input(q[:4], y[:4], 2, q[:1])[:-1]
    else:
        data = encode_input(q[:3], y[:3], 3, q[:1])
    with pytest.raises(RuntimeError, match=message):
        run_host(export, data)


def test_ctypes_train_step_rejects_bad_counts_and_labels(digits_lib):
    case = digits_lib.case
    x, y = case.x[:DIGITS_BATCH + 1], case.y[:DIGITS_BATCH + 1]
    assert digits_lib.dll.et_init() == 0
    before = digits_lib.state()
    assert digits_lib.train_step(x[:1], y[:1], n=0) < 0
    assert digits_lib.train_step(x[:1], y[:1], n=-1) < 0
    assert digits_lib.train_step(x, y, n=DIGITS_BATCH + 1) < 0
    for label in (case.model.output_shape[0], 255):
        bad = y[:DIGITS_BATCH].clone()
        bad[3] = label
        assert digits_lib.train_step(x[:DIGITS_BATCH], bad) < 0
    assert digits_lib.state() == before  # a refused step changes nothing
    assert digits_lib.train_step(x[:DIGITS_BATCH], y[:DIGITS_BATCH]) == 0
    assert digits_lib.state() != before


def test_sizes_beyond_the_c_layer_table_are_refused():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(70000, 3))
    model, _ = convert(net, torch.randn(8, 1, 70000), "uint8")
    trainer = FQTTrainer(params="last:1", optimizer=Optimizer("sgd", lr=0.1))
    with pytest.raises(NotExportable, match="70000 exceeds"):
        check_exportable(model, trainer)

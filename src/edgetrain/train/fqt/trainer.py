"""``FQTTrainer``: fully quantized training with dynamic partial updates, on the shared protocol.

Deutel, Hannig, Mutschler and Teich (arXiv 2407.10734, IEEE TCAD 2025) train a deployed uint8
network on a Cortex-M. One step here is what their device does for one mini-batch: for every sample,
the integer forward, the backward from the softmax cross-entropy head down to the lowest trained
layer with the sample's own dynamic partial selection, its gradients summed in the accumulation
buffer; then one optimizer update of the kept rows. The batch is vectorized, but the result is
that of the samples one after another (``backward_uint8`` advances the running error maximum
sample by sample).

Precision modes (sec. V of the paper):

* ``uint8``: weights, activations and errors uint8 per tensor, int32 accumulators
  (``backward.backward_uint8``);
* ``mixed``: the same uint8 forward and stored weights, real-valued errors and gradients
  (``real.backward_real`` on the dequantized trace);
* ``float32``: float32 weights, activations and errors (``real.forward_real``); the comparison point.

Stored uint8 weights are updated in dequantized space and requantized (``ranges="fixed"``: the format
is re-ranged to the new min/max after each update; ``"moving"``: to a moving average of them, rate
``range_rate``); the int32 bias follows at scale ``s_in s_w``. With the ``qas`` optimizer the update is
applied to the stored integers in place and the format never changes (Lin et al. 2022). Error
formats are fixed to ``[-error_range, error_range]`` or, in ``"moving"`` mode, track a moving average
of the largest |error| seen before quantization at each layer. Activation formats stay as calibrated
at deployment in both modes.

Update rates: ``lam_min == lam_max == 1`` is the full update; ``lam_min == lam_max == r`` a fixed
(static) rate; ``lam_min < lam_max`` the dynamic rule. Which layers train is a ``train.select`` spec
(``"last:2"``, ``"bias"``, ``"all"``...), which also gives the static "last-k layers only" and
"bias-only" alternatives.

Gradient buffer (``grad_buffer``, uint8 mini-batches only): ``"int32"`` (default, and what the generated C keeps) sums
each sample's int32 gradients in a persistent int32 buffer as large as float32's; ``"int16"`` keeps int16
mantissas with one shared exponent per weight row / conv filter and per bias vector (block floating
point, the standard DSP technique for narrow accumulators; our extension, not the paper's, in
``blockfloat``), half the buffer's bytes plus one byte per row, at the cost of rounding once a partial
sum outgrows int16. With ``batch == 1`` there is no persistent buffer, so ``"int16"`` is refused there,
as it is for ``mixed`` and ``float32`` (real-valued gradients); the C export (``export``) implements
only ``"int32"``.

Every step reports forward and backward MACs actually done, the peak training RAM and flash of this
configuration (``cost.training_memory``, for mini-batches of ``batch`` samples) and the stored weight
values it changed. With ``device`` set, ``init`` refuses a configuration that does not fit the
device's SRAM or flash, with the ledger that shows why.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from ...cost import Ledger
from ...cost.macs import inference_macs
from ...cost.memory import inference_plan
from ...cost.training_memory import GRAD_BUFFERS, check_grad_buffer, check_training_fits, training_memory
from ...device import get_device
from ...model import DeployedModel
from ...model.forward import forward_int
from ...model.layers import Conv1d, Conv2d, Dense
from ...quant import Affine, affine_from_range, dequantize, quantize
from ..protocol import Batch, StepInfo, check_batch
from ..select import select_params
from .backward import Grads, PartialPolicy, backward_uint8
from .blockfloat import bfp_sum
from .kernels import error_format
from .optimizer import LayerOptState, Optimizer, opt_init, opt_update
from .real import RealParams, backward_real, forward_real

PRECISIONS = ("uint8", "mixed", "float32")
RANGES = ("fixed", "moving")
LINEAR = (Dense, Conv2d, Conv1d)


@dataclass(frozen=True, eq=False)
class FQTState:
    """Everything that changes while training.

    ``model`` is the deployed model being trained (``float32``: the model it started from, with
    ``real`` holding the float32 parameters that train). ``e_max`` is the running error maximum
    of each trained layer (dynamic partial updates), ``e_range`` the error ranges and ``w_range``
    the weight ranges of the moving-average mode.
    """

    model: DeployedModel
    real: RealParams | None
    opt: dict[int, LayerOptState]
    e_max: dict[int, float] = field(default_factory=dict)
    e_range: dict[int, float] = field(default_factory=dict)
    w_range: dict[int, tuple[float, float]] = field(default_factory=dict)
    seed: int = 0
    steps: int = 0
    samples: int = 0
    correct: int = 0
    kept_rows: int = 0
    """Rows (dense) or filters (conv) updated, summed over samples and trained layers."""
    offered_rows: int = 0
    """What a full update would have updated over the same samples."""
    memory: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FQTTrainer:
    """Settings of one FQT configuration; see the module docstring."""

    precision: str = "uint8"
    params: str = "last:2"
    lam_min: float = 1.0
    lam_max: float = 1.0
    optimizer: Optimizer = field(default_factory=Optimizer)
    ranges: str = "fixed"
    range_rate: float = 0.01
    error_range: float = 1.0
    batch: int = 1
    """Mini-batch size: samples whose gradients are accumulated before one update."""
    device: str | None = None
    """A device profile name: ``init`` refuses a configuration that does not fit it."""
    label: str | None = None
    grad_buffer: str = "int32"
    """The mini-batch gradient buffer: ``"int32"`` or ``"int16"`` block float (uint8, ``batch > 1``; module doc)."""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown FQT precision {self.precision!r}; expected one of {PRECISIONS}")
        if self.ranges not in RANGES:
            raise ValueError(f"unknown range mode {self.ranges!r}; expected one of {RANGES}")
        PartialPolicy(self.lam_min, self.lam_max)  # validates the rates
        if not (0.0 < self.range_rate <= 1.0):
            raise ValueError(f"range_rate must lie in (0, 1], got {self.range_rate!r}")
        if not (math.isfinite(self.error_range) and self.error_range > 0):
            raise ValueError(f"error_range must be a finite number > 0, got {self.error_range!r}")
        if not (isinstance(self.batch, int) and self.batch >= 1):
            raise ValueError(f"batch must be an integer >= 1, got {self.batch!r}")
        check_grad_buffer(self.grad_buffer, self.precision, self.batch)
        if self.optimizer.kind == "qas" and self.precision == "float32":
            raise ValueError("the 'qas' optimizer scales integer-weight gradients; float32 training has none")
        if self.device is not None:
            get_device(self.device)

    @property
    def policy(self) -> PartialPolicy | None:
        return None if self.lam_min == self.lam_max == 1.0 else PartialPolicy(self.lam_min, self.lam_max)

    @property
    def rate_tag(self) -> str:
        """``full``, ``dyn10`` (dynamic, at most 10%), ``fix10`` (static 10%), or ``dyn5-50``."""
        if self.policy is None:
            return "full"
        pct = lambda v: f"{100 * v:g}"  # noqa: E731
        if self.lam_min == self.lam_max:
            return f"fix{pct(self.lam_max)}"
        if self.lam_min == 0.0:
            return f"dyn{pct(self.lam_max)}"
        return f"dyn{pct(self.lam_min)}-{pct(self.lam_max)}"

    @property
    def name(self) -> str:
        buffer = "-int16" if self.grad_buffer == "int16" else ""
        return self.label or f"fqt-{self.precision}-{self.rate_tag}{buffer}"

    def writes(self, model: DeployedModel) -> tuple[str, ...]:
        return select_params(model, self.params)

    def layers(self, model: DeployedModel) -> tuple[set[int], frozenset[int]]:
        """(trained dense/conv layer indices, those of them whose weight stays frozen)."""
        names = self.writes(model)
        trained = {int(n.split(".")[0]) for n in names}
        with_weight = {int(n.split(".")[0]) for n in names if n.endswith(".weight")}
        for i in trained:
            if not isinstance(model.layers[i], LINEAR):
                raise ValueError(f"layer {i} ({model.layers[i].kind}) has no weights to train")
        return trained, frozenset(trained - with_weight)

    def memory(self, model: DeployedModel) -> dict:
        """Peak training RAM by buffer kind, flash, and the buffers (``cost.training_memory``)."""
        return training_memory(model, self.writes(model), self.precision, accumulate=self.batch,
                               optimizer=self.optimizer.kind, momentum=self.optimizer.momentum > 0,
                               grad_buffer=self.grad_buffer)

    def init(self, model: DeployedModel, seed: int = 0) -> FQTState:
        _check_uint8_model(model)  # every mode starts from (and float32 exports back to) the uint8 deployment
        trained, _ = self.layers(model)
        if not trained:
            raise ValueError(f"params spec {self.params!r} selects nothing to train")
        if self.device is not None:
            check_training_fits(model, self.writes(model), self.precision, get_device(self.device),
                                accumulate=self.batch, optimizer=self.optimizer.kind,
                                momentum=self.optimizer.momentum > 0, grad_buffer=self.grad_buffer)
        real = None
        if self.precision == "float32":
            real = {i: (dequantize(layer.weight, layer.w_fmt).to(torch.float32),
                        dequantize(layer.bias, layer.b_fmt).to(torch.float32))
                    for i, layer in enumerate(model.layers) if isinstance(layer, LINEAR)}
        opt = {i: opt_init(self.optimizer, tuple(model.layers[i].weight.shape)) for i in sorted(trained)}
        w_range = {}
        if self.ranges == "moving" and self.precision != "float32":
            for i in trained:
                layer = model.layers[i]
                w = dequantize(layer.weight, layer.w_fmt)
                w_range[i] = (float(w.min()), float(w.max()))
        memory = self.memory(model)
        memory["extra_memory_bytes"] = max(memory["train_ram_bytes"] - inference_plan(model).peak_bytes(), 0)
        return FQTState(model, real, opt, seed=seed, w_range=w_range, memory=memory)

    # -- one step ---------------------------------------------------------------------------------------

    def _e_fmts(self, state: FQTState, n_layers: int) -> dict[int, Affine]:
        if self.ranges == "fixed":
            fmt = error_format(-self.error_range, self.error_range)
            return {i: fmt for i in range(n_layers + 1)}
        return {i: error_format(-r, r) for i, r in state.e_range.items()}

    def step(self, state: FQTState, batch: Batch) -> tuple[FQTState, StepInfo]:
        """One mini-batch: forward, backward with partial updates, one optimizer update."""
        model = state.model
        x, y = check_batch(batch, model.input_shape, integer=True)
        n_cls = model.output_shape[0]
        if x.shape[0] == 0:
            raise ValueError("batch is empty")
        if x.shape[0] > self.batch:
            raise ValueError(f"this trainer's gradient buffer is sized for mini-batches of {self.batch} samples; "
                             f"got {x.shape[0]} (set FQTTrainer(batch=...))")
        if int(y.min()) < 0 or int(y.max()) >= n_cls:
            raise ValueError(f"batch labels must lie in 0..{n_cls - 1}, found {int(y.min())}..{int(y.max())}")
        start = time.perf_counter()
        trained, bias_only = self.layers(model)
        b = x.shape[0]
        n = len(model.layers)
        e_range = dict(state.e_range)
        if self.precision == "uint8":
            if self.ranges == "moving":
                for i in range(n + 1):
                    e_range.setdefault(i, self.error_range)
                state = replace(state, e_range=e_range)
            trace = forward_int(model, x, overflow="wrap", trace=True)
            logits = dequantize(trace.outputs[-1], model.output_fmt)
            t_back = time.perf_counter()
            g = backward_uint8(model, x, y, trained, trace, self._e_fmts(state, n), self.policy, state.e_max,
                               bias_only, per_sample=self.grad_buffer == "int16")
            grad_w, grad_b = accumulated_grads(g, self.grad_buffer)
            backward_s = time.perf_counter() - t_back
            grad_w = {i: w / b for i, w in grad_w.items()}
            grad_b = {i: v / b for i, v in grad_b.items()}
            if self.ranges == "moving":
                r = self.range_rate
                for i, m in g.e_absmax.items():
                    e_range[i] = max((1 - r) * e_range[i] + r * m, 1e-6)
        else:
            if self.precision == "mixed":
                trace = forward_int(model, x, overflow="wrap", trace=True)
                outs = [dequantize(o, model.layers[i].out_fmt) for i, o in enumerate(trace.outputs)]
                params = {i: (dequantize(layer.weight, layer.w_fmt), dequantize(layer.bias, layer.b_fmt))
                          for i, layer in enumerate(model.layers) if isinstance(layer, LINEAR)}
                xin = dequantize(x, model.input_fmt)
            else:
                params = state.real
                xin = dequantize(x, model.input_fmt).to(torch.float32)
                outs = forward_real(model, params, xin)
            logits = outs[-1]
            saturated = None
            if self.precision == "mixed":
                saturated = {i: (trace.outputs[i] <= layer.out_fmt.raw_min, trace.outputs[i] >= layer.out_fmt.raw_max)
                             for i, layer in enumerate(model.layers) if isinstance(layer, LINEAR)}
            t_back = time.perf_counter()
            g = backward_real(model, params, xin, outs, y, trained, bias_only, self.policy, state.e_max, saturated)
            backward_s = time.perf_counter() - t_back
            grad_w = {i: w / b for i, w in g.weight.items()}
            grad_b = {i: v / b for i, v in g.bias.items()}
        loss = float(F.cross_entropy(logits.to(torch.float64), y))
        correct = int((logits.argmax(1) == y).sum())

        opt = dict(state.opt)
        changed = 0
        new_model, real, w_range = model, state.real, dict(state.w_range)
        for i in sorted(trained):
            dw, db, opt[i] = opt_update(self.optimizer, opt[i], grad_w.get(i), grad_b[i], g.rows[i])
            if self.precision == "float32":
                w, bias = real[i]
                real = {**real, i: (w if dw is None else w + dw.to(w.dtype), bias + db.to(bias.dtype))}
                changed += 0 if dw is None else int((dw != 0).sum())
                continue
            layer = new_model.layers[i]
            if self.optimizer.kind == "qas":
                new_layer = _apply_in_place(layer, dw, db)
            else:
                new_layer, w_range = _apply_requantized(layer, i, dw, db, self.ranges, self.range_rate, w_range)
            changed += int((new_layer.weight != layer.weight).sum())
            layers = list(new_model.layers)
            layers[i] = new_layer
            new_model = dataclasses.replace(new_model, layers=tuple(layers))
        wall = time.perf_counter() - start

        kept = sum(int(k.sum()) for k in g.kept.values())
        offered = b * sum(int(model.layers[i].weight.shape[0]) for i in g.kept)
        mem = state.memory
        ledger = Ledger(forward_passes=b, macs_forward=inference_macs(model, b), macs_backward=g.macs_backward,
                        train_ram_bytes=mem["train_ram_bytes"], flash_bytes=mem["flash_bytes"],
                        extra_memory_bytes=mem["extra_memory_bytes"],
                        weight_writes=changed, wall_s=wall)
        new_state = replace(state, model=new_model, real=real, opt=opt, e_max=g.e_max, e_range=e_range,
                            w_range=w_range, steps=state.steps + 1, samples=state.samples + b,
                            correct=state.correct + correct, kept_rows=state.kept_rows + kept,
                            offered_rows=state.offered_rows + offered)
        return new_state, StepInfo(ledger, {"loss": loss, "correct": float(correct), "backward_s": backward_s,
                                            "update_rate": kept / offered if offered else 0.0})

    # -- results ------------------------------------------------------------------------------------------

    def model(self, state: FQTState) -> DeployedModel:
        """The trained deployed model. ``float32``: the float32 parameters requantized into
        per-tensor uint8 formats re-ranged to their values (for an integer-exact evaluation)."""
        if state.real is None:
            return state.model
        model = state.model
        trained, bias_only = self.layers(model)
        layers = list(model.layers)
        for i in trained:
            layer = layers[i]
            w, b = state.real[i]
            w_fmt = layer.w_fmt if i in bias_only else affine_from_range(float(w.min()), float(w.max()))
            b_fmt = _bias_fmt(layer.in_fmt, w_fmt)
            layers[i] = dataclasses.replace(layer, weight=quantize(w.to(torch.float64), w_fmt), w_fmt=w_fmt,
                                            bias=quantize(b.to(torch.float64), b_fmt), b_fmt=b_fmt)
        return dataclasses.replace(model, layers=tuple(layers))

    def logits(self, state: FQTState, q: torch.Tensor) -> torch.Tensor:
        """Real logits of the network as trained so far on raw inputs ``q`` (float32 mode: in float)."""
        if state.real is not None:
            xin = dequantize(q, state.model.input_fmt).to(torch.float32)
            return forward_real(state.model, state.real, xin)[-1]
        out = forward_int(state.model, q, overflow="wrap")
        return dequantize(out, state.model.output_fmt)

    def accuracy(self, state: FQTState, q: torch.Tensor, y: torch.Tensor, chunk: int = 512) -> float:
        """Fraction of raw inputs ``q`` classified as ``y`` by the network as trained so far."""
        if q.shape[0] == 0:
            raise ValueError("cannot compute accuracy on an empty set")
        correct = 0
        with torch.no_grad():
            for s in range(0, q.shape[0], chunk):
                correct += int((self.logits(state, q[s:s + chunk]).argmax(1) == y[s:s + chunk]).sum())
        return correct / q.shape[0]


def accumulated_grads(g: Grads, grad_buffer: str = "int32") -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """The real weight and bias gradients summed over the mini-batch as the gradient buffer holds them.

    ``"int32"``: the batch-summed int32 accumulators times their scales (``Grads.real_weight_grad``).
    ``"int16"``: each sample's int32 gradients (``backward_uint8(..., per_sample=True)``) added one after
    another into the int16 block-float buffer (``blockfloat.bfp_sum``: one exponent per weight row / conv
    filter, one per bias vector), its exact values ``m * 2**x`` times the same scales. Where no partial
    sum leaves int16 the two are bit-identical."""
    if grad_buffer == "int32":
        return ({i: g.real_weight_grad(i) for i in g.weight}, {i: g.real_bias_grad(i) for i in g.bias})
    if grad_buffer != "int16":
        raise ValueError(f"unknown grad_buffer {grad_buffer!r}; expected one of {GRAD_BUFFERS}")
    if set(g.bias_samples) != set(g.bias):
        raise ValueError("grad_buffer 'int16' needs per-sample gradients: backward_uint8(..., per_sample=True)")
    weight = {i: bfp_sum(acc)[0].to(torch.float64) * scale for i, (acc, scale) in g.weight_samples.items()}
    bias = {i: bfp_sum(acc, one_row=True)[0].to(torch.float64) * scale for i, (acc, scale) in g.bias_samples.items()}
    return weight, bias


def _bias_fmt(in_fmt: Affine, w_fmt: Affine) -> Affine:
    return Affine(32, True, (in_fmt.scale[0] * w_fmt.scale[0],), (0,))


def _apply_requantized(layer, i: int, dw: torch.Tensor | None, db: torch.Tensor, ranges: str, rate: float,
                       w_range: dict[int, tuple[float, float]]):
    """Add the updates in dequantized space and requantize: a re-ranged weight format (``fixed``: the
    new min/max; ``moving``: their moving average), the bias at the accumulator scale ``s_in s_w``."""
    w_fmt = layer.w_fmt
    weight = layer.weight
    if dw is not None and bool((dw != 0).any()):
        w = dequantize(layer.weight, layer.w_fmt) + dw
        lo, hi = float(w.min()), float(w.max())
        if ranges == "moving":
            old_lo, old_hi = w_range[i]
            lo, hi = (1 - rate) * old_lo + rate * lo, (1 - rate) * old_hi + rate * hi
            w_range = {**w_range, i: (lo, hi)}
        w_fmt = affine_from_range(lo, hi, bits=layer.w_fmt.bits, signed=layer.w_fmt.signed)
        weight = quantize(w, w_fmt)
    b_fmt = _bias_fmt(layer.in_fmt, w_fmt)
    bias = quantize(dequantize(layer.bias, layer.b_fmt) + db, b_fmt)
    return dataclasses.replace(layer, weight=weight, w_fmt=w_fmt, bias=bias, b_fmt=b_fmt), w_range


def _apply_in_place(layer, dw: torch.Tensor | None, db: torch.Tensor):
    """QAS: round the update to the stored integers' LSB and add it in place, saturating; the formats
    do not change."""
    weight = layer.weight
    if dw is not None:
        step = torch.round(dw / layer.w_fmt.scale[0]).to(torch.int64)
        weight = layer.w_fmt.fit(layer.weight + step)
    bias = layer.b_fmt.fit(layer.bias + torch.round(db / layer.b_fmt.scale[0]).to(torch.int64))
    return dataclasses.replace(layer, weight=weight, bias=bias)


def _check_uint8_model(model: DeployedModel) -> None:
    for i, layer in enumerate(model.layers):
        if isinstance(layer, LINEAR):
            for what, fmt in (("weights", layer.w_fmt), ("input", layer.in_fmt), ("output", layer.out_fmt)):
                if not isinstance(fmt, Affine) or fmt.per_channel or fmt.signed or fmt.bits != 8:
                    raise ValueError(f"layer {i} ({layer.kind}) {what}: FQT trains uint8 per-tensor formats; "
                                     f"got {getattr(fmt, 'name', fmt)} (deploy with --format uint8)")


__all__ = ["GRAD_BUFFERS", "PRECISIONS", "RANGES", "FQTState", "FQTTrainer", "accumulated_grads"]

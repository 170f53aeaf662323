"""Online training of a deployed network whose weights live in non-volatile memory.

One trainer, six methods, all predict-then-learn at batch size 1 on the same integer-exact forward
and the same straight-through backward (``train.gradients``), so they differ only in how (and how
often) they write the 8-bit weights (Gural et al., arXiv 2009.03887):

* ``inference-only``: never learns.
* ``bias-only``: biases (high-endurance memory) learn every sample; weights never change.
* ``sgd``: every sample writes ``round(-lr g / LSB)``; a changed cell of a convolution is charged one
  write per output-pixel term that touched it, as the paper counts SGD at batch 1.
* ``sgd-accumulate``: a full-size digital buffer (float32, one value per weight) collects
  ``-lr g / LSB`` and a cell is written when its accumulated change passes one LSB (Nandakumar et al.,
  "Mixed-precision deep learning based on computational memory", Front. Neurosci. 2020).
* ``lrt-biased`` / ``lrt-unbiased``: per-layer rank-``r`` Kronecker-sum accumulator
  (``kronecker.py``); every ``B`` samples (10 for convolutions, 100 for dense layers) form
  ``dW = lr sqrt(B_eff) G / B_eff`` (``G`` the accumulated sum, ``B_eff`` the samples in it),
  quantize it to the weight LSB and write only if at least ``rho_min`` of the layer's cells would
  change; otherwise keep accumulating (``B_eff`` grows).

``maxnorm`` (any weight-writing method) divides the gradient by ``max(max|g|, m_hat)`` where
``m_hat`` is the bias-corrected moving average (``beta``) of ``max|g|`` over that layer's updates
(for LRT: over its checks, written or not), so the largest step is ``lr`` in real units (LRT:
``lr sqrt(B_eff)``). Biases update every sample by plain SGD, rounded to
their own format. Weights hold no float master copy: a sub-LSB update is lost, as on the device.
Batch norm is folded into the deployed convolutions (``model.convert``), so there is no separate
streaming batch-norm state to train.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from ...cost import Ledger
from ...cost.macs import inference_ledger, training_ledger
from ...cost.writes import WriteCounter, add_writes, advance, init_writes, record_writes
from ...model import DeployedModel
from ...model.forward import forward_int
from ...model.layers import Dense
from ...quant import scale_of
from ...quant.rounding import round_real
from ..es.perturb import derive_seed
from ..gradients import LINEAR, LayerGrad, backward_trace
from ..protocol import Batch, StepInfo, check_batch
from ..select import select_params
from .kronecker import KSum, ksum_add, ksum_bytes, ksum_init, ksum_matrix, ksum_reset

METHODS = ("inference-only", "bias-only", "sgd", "sgd-accumulate", "lrt-biased", "lrt-unbiased")
WEIGHT_METHODS = ("sgd", "sgd-accumulate", "lrt-biased", "lrt-unbiased")
NORM_BYTES = 8
"""Max-norm state per layer: the moving average (float32) and its update count (uint32)."""


@dataclass(frozen=True, eq=False)
class NVMState:
    """Everything that changes while training (explicit, as the protocol asks)."""

    model: DeployedModel
    seed: int
    step: int
    acc: dict[int, KSum | torch.Tensor]
    """Per trained layer: the Kronecker-sum accumulator (LRT) or the LSB buffer (sgd-accumulate)."""
    b_eff: dict[int, int]
    norm: dict[int, tuple[float, int]]
    """Per layer: max-norm moving average of ``max|g|`` and how many updates it has seen."""
    writes: WriteCounter
    correct: int = 0
    write_events: int = 0
    """Layer writes done (LRT: accumulator flushes; SGD: one per layer per sample that changed a cell)."""
    skipped_writes: int = 0
    """LRT checks that found fewer than ``rho_min`` cells changing and kept accumulating."""
    extra_bytes: int = 0
    learn_ledger: Ledger | None = None
    infer_ledger: Ledger | None = None


@dataclass(frozen=True)
class NVMTrainer:
    """Settings of one method (see the module docstring); ``init`` / ``step`` / ``model`` run it."""

    method: str = "lrt-unbiased"
    maxnorm: bool = True
    lr: float = 0.01
    lr_bias: float | None = None
    """Bias learning rate (default: ``lr``)."""
    rank: int = 4
    batch_conv: int = 10
    batch_dense: int = 100
    rho_min: float = 0.01
    beta: float = 0.999
    max_cond: float | None = None
    factor_bits: int | None = 16
    blocked: bool = True
    """Add a convolution's pixel terms to the accumulator as one block (False: one term at a time)."""
    params: str = "all"
    """Layers that learn (``train.select`` spec); their weights and biases are trained."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown NVM training method {self.method!r}; expected one of {METHODS}")
        for what, v in (("lr", self.lr), ("beta", self.beta), ("rho_min", self.rho_min)):
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{what} must be a finite number >= 0, got {v!r}")
        if self.lr_bias is not None and not (math.isfinite(self.lr_bias) and self.lr_bias >= 0):
            raise ValueError(f"lr_bias must be a finite number >= 0, got {self.lr_bias!r}")
        if not self.beta < 1 or not self.rho_min <= 1:
            raise ValueError(f"beta must be < 1 and rho_min <= 1, got {self.beta} and {self.rho_min}")
        for what, v in (("rank", self.rank), ("batch_conv", self.batch_conv), ("batch_dense", self.batch_dense)):
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{what} must be an integer >= 1, got {v!r}")
        if self.max_cond is not None and not self.max_cond > 1:
            raise ValueError(f"max_cond must be > 1 (or None to never skip), got {self.max_cond}")
        if self.factor_bits is not None and not (isinstance(self.factor_bits, int) and 2 <= self.factor_bits <= 32):
            raise ValueError(f"factor_bits must be an integer in 2..32 or None, got {self.factor_bits!r}")

    @property
    def name(self) -> str:
        return self.method + ("-maxnorm" if self.maxnorm and self.method in WEIGHT_METHODS else "")

    @property
    def lrt(self) -> bool:
        return self.method.startswith("lrt-")

    def layers(self, model: DeployedModel) -> tuple[int, ...]:
        """Indices of the dense/conv layers that learn something (weight, bias or both)."""
        chosen = {int(n.split(".")[0]) for n in self.writes(model)}
        return tuple(i for i in range(len(model.layers)) if i in chosen)

    def weight_layers(self, model: DeployedModel) -> tuple[int, ...]:
        """Indices of the layers whose weights (the NVM cells) this method writes."""
        return tuple(int(n.split(".")[0]) for n in self.writes(model) if n.endswith(".weight"))

    def writes(self, model: DeployedModel) -> tuple[str, ...]:
        """``params``' dense/conv parameters, less the weights for methods that never write them."""
        if self.method == "inference-only":
            return ()
        linear = {i for i, layer in enumerate(model.layers) if isinstance(layer, LINEAR)}
        out = []
        for name in select_params(model, self.params):
            i, kind = name.split(".")
            if int(i) in linear and (kind == "bias" or self.method in WEIGHT_METHODS):
                out.append(name)
        return tuple(out)

    def aux_bytes(self, model: DeployedModel) -> dict[str, int]:
        """Auxiliary memory by item: accumulators or buffers, max-norm state (bytes)."""
        out: dict[str, int] = {}
        if self.method not in WEIGHT_METHODS:
            return out
        for i in self.weight_layers(model):
            n, m = _matrix_shape(model.layers[i].weight)
            if self.lrt:
                out[f"{i}.kronecker_sum"] = ksum_bytes(n, m, self.rank, self.factor_bits) + 4  # + B_eff counter
            elif self.method == "sgd-accumulate":
                out[f"{i}.accumulator"] = n * m * 4
            if self.maxnorm:
                out[f"{i}.maxnorm"] = NORM_BYTES
        return out

    def init(self, model: DeployedModel, seed: int = 0) -> NVMState:
        layers, weights = self.layers(model), self.weight_layers(model)
        if self.method != "inference-only" and not layers:
            raise ValueError(f"params={self.params!r} selects no dense or convolution layer to train")
        acc: dict[int, KSum | torch.Tensor] = {}
        for i in weights:
            n, m = _matrix_shape(model.layers[i].weight)
            if self.lrt:
                acc[i] = ksum_init(n, m, self.rank)
            elif self.method == "sgd-accumulate":
                acc[i] = torch.zeros(n, m, dtype=torch.float32)
        names = [f"{i}.weight" for i in weights]
        trained = self.writes(model)
        # LRT never forms the n x m weight-gradient products: its backward is the error propagation
        # (as for the biases) plus the accumulator work, which the step adds.
        costed = [n for n in trained if n.endswith(".bias")] if self.lrt else list(trained)
        learn = training_ledger(model, costed, 1) if costed else inference_ledger(model, 1)
        return NVMState(
            model=model, seed=int(seed), step=0, acc=acc, b_eff=dict.fromkeys(weights, 0),
            norm=dict.fromkeys(weights, (0.0, 0)),
            writes=init_writes({n: model.param(n)[0].shape for n in names}),
            extra_bytes=sum(self.aux_bytes(model).values()), learn_ledger=learn,
            infer_ledger=inference_ledger(model, 1))

    def model(self, state: NVMState) -> DeployedModel:
        return state.model

    def step(self, state: NVMState, batch: Batch) -> tuple[NVMState, StepInfo]:
        """Predict then learn on each sample of ``batch`` in order (online, batch size 1)."""
        batch = check_batch(batch, state.model.input_shape, integer=True)
        ledger = Ledger()
        metrics = {"correct": 0.0, "loss": 0.0}
        for b in range(batch.x.shape[0]):
            state, led, correct, loss = self._one(state, batch.x[b:b + 1], batch.y[b:b + 1])
            ledger = ledger + led
            metrics["correct"] += correct
            metrics["loss"] += loss
        metrics["write_events"] = float(state.write_events)
        return state, StepInfo(ledger, metrics)

    # -- one sample -------------------------------------------------------------------------------

    def _one(self, state: NVMState, q: torch.Tensor, y: torch.Tensor) -> tuple[NVMState, Ledger, float, float]:
        model = state.model
        trace = forward_int(model, q, overflow="wrap", trace=True)
        correct = float(int(trace.outputs[-1].argmax(dim=1)) == int(y))
        if self.method == "inference-only":
            writes = advance(state.writes)
            ledger = state.infer_ledger.replace(extra_memory_bytes=0)
            return replace(state, step=state.step + 1, correct=state.correct + int(correct), writes=writes), \
                ledger, correct, float("nan")
        trained = set(self.writes(model))
        loss, grads = backward_trace(model, q, y, trace, layers=set(self.layers(model)))
        g = torch.Generator().manual_seed(derive_seed(state.seed, state.step))
        updates: dict[str, torch.Tensor] = {}
        acc, b_eff, norm = dict(state.acc), dict(state.b_eff), dict(state.norm)
        writes, events, skipped, aux_macs = state.writes, state.write_events, state.skipped_writes, 0
        for lg in grads:
            i = lg.index
            layer = model.layers[i]
            if f"{i}.bias" in trained:
                updates[f"{i}.bias"] = self._bias(layer, lg)
            name = f"{i}.weight"
            if name not in trained:
                continue
            w = layer.weight
            if self.lrt:
                acc[i], macs = self._accumulate(acc[i], lg, g)
                aux_macs += macs
                b_eff[i] += 1
                every = self.batch_dense if isinstance(layer, Dense) else self.batch_conv
                if b_eff[i] % every:
                    continue
                n_out, m_in = acc[i].shape
                aux_macs += n_out * m_in * (self.rank + 1)  # form L diag(s) R^T, scale it, quantize
                grad = ksum_matrix(acc[i]) / b_eff[i]
                div, norm[i] = self._norm(grad, norm[i])
                step = self.lr * math.sqrt(b_eff[i]) / div * grad
                new = _apply(layer, w, step)
                if float((new != w).double().mean()) >= self.rho_min and bool((new != w).any()):
                    updates[name] = new
                    writes = record_writes(writes, name, w, new)
                    acc[i], b_eff[i], events = ksum_reset(acc[i]), 0, events + 1
                else:
                    skipped += 1
            elif self.method == "sgd":
                new, cells = self._sgd(layer, lg, norm, i)
                if bool(cells.any()):
                    updates[name] = new
                    writes = add_writes(writes, name, cells.reshape(w.shape))
                    events += 1
            else:  # sgd-accumulate
                grad = lg.weight_grad()[0]
                div, norm[i] = self._norm(grad, norm[i])
                buf = acc[i] - (self.lr / div * grad / _lsb(layer)).to(torch.float32)
                whole = torch.trunc(buf)
                new = _saturate(w + whole.to(torch.int64).reshape(w.shape), layer.w_fmt)
                acc[i] = buf - whole
                if bool((new != w).any()):
                    updates[name] = new
                    writes = record_writes(writes, name, w, new)
                    events += 1
        model = model.with_params(updates)
        ledger = state.learn_ledger
        if aux_macs:
            ledger = ledger.replace(macs_backward=ledger.macs_backward + aux_macs, macs=ledger.macs + aux_macs)
        ledger = ledger.replace(extra_memory_bytes=state.extra_bytes)
        new_state = replace(state, model=model, step=state.step + 1, correct=state.correct + int(correct), acc=acc,
                            b_eff=b_eff, norm=norm, writes=advance(writes), write_events=events,
                            skipped_writes=skipped)
        return new_state, ledger, correct, float(loss.sum())

    def _bias(self, layer, lg: LayerGrad) -> torch.Tensor:
        lr = self.lr if self.lr_bias is None else self.lr_bias
        gb = lg.bias_grad()[0].to(torch.float64)
        step = round_real(-lr * gb / scale_of(layer.b_fmt, 1), "nearest")
        return _saturate(layer.bias + step.to(torch.int64), layer.b_fmt)

    def _norm(self, grad: torch.Tensor, st: tuple[float, int]) -> tuple[float, tuple[float, int]]:
        """Max-norm divisor for ``grad`` (1 without max-norm) and the updated moving average."""
        if not self.maxnorm:
            return 1.0, st
        peak = float(grad.abs().max())
        avg, t = st
        avg, t = self.beta * avg + (1 - self.beta) * peak, t + 1
        denom = max(peak, avg / (1 - self.beta**t))
        return (denom if denom > 0 else 1.0), (avg, t)

    def _accumulate(self, ks: KSum, lg: LayerGrad, g: torch.Generator) -> tuple[KSum, int]:
        mode = self.method[len("lrt-"):]
        dz, a = lg.dz[0].to(torch.float64), lg.a[0].to(torch.float64)
        n, m = ks.shape
        k = dz.shape[1]
        if self.blocked or k == 1:
            ks = ksum_add(ks, dz, a, mode, g, self.max_cond, self.factor_bits)
            return ks, _ksum_macs(n, m, self.rank, k)
        for p in range(k):
            ks = ksum_add(ks, dz[:, p], a[:, p], mode, g, self.max_cond, self.factor_bits)
        return ks, k * _ksum_macs(n, m, self.rank, 1)

    def _sgd(self, layer, lg: LayerGrad, norm: dict, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """SGD at batch 1: the sample's update ``round(-lr g / LSB)`` is written at once, and each changed
        cell is charged one write per output-pixel term that touched it (``dz_p a_p != 0``): a device
        applying a convolution's outer products pixel by pixel writes that cell once per term, which is
        how Gural et al. count SGD. A dense layer has one term: one write per changed cell."""
        w = layer.weight
        grad = lg.weight_grad()[0]
        div, norm[i] = self._norm(grad, norm[i])
        new = _apply(layer, w, self.lr / div * grad)
        changed = (new != w).reshape(w.shape[0], -1)
        dz, a = lg.dz[0], lg.a[0]
        terms = (dz != 0).to(torch.float32) @ (a != 0).to(torch.float32).T  # [n, m]: pixels touching each cell
        cells = torch.where(changed, terms.round().to(torch.int64).clamp(min=1), 0)
        return new, cells

def _matrix_shape(weight: torch.Tensor) -> tuple[int, int]:
    return int(weight.shape[0]), int(weight[0].numel())


def _lsb(layer) -> torch.Tensor:
    """Real value of one weight LSB as an ``[n, 1]`` (per channel) or scalar tensor."""
    s = scale_of(layer.w_fmt, 2)
    return s if s.ndim == 0 else s.reshape(-1, 1)


def _apply(layer, w: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Stored weights after a real-valued change ``-step`` rounded to the LSB and saturated."""
    delta = round_real(-step.to(torch.float64) / _lsb(layer), "nearest").to(torch.int64)
    return _saturate(w + delta.reshape(w.shape), layer.w_fmt)


def _saturate(raw: torch.Tensor, fmt) -> torch.Tensor:
    """Clip to the format's range whatever its overflow mode: a stored value saturates, never wraps."""
    return raw.clamp(fmt.raw_min, fmt.raw_max)


def _ksum_macs(n: int, m: int, rank: int, k: int) -> int:
    """Multiply-accumulates of one ``ksum_add`` of ``k`` terms (``q = rank + k`` columns, of which
    ``qn = min(n, q)`` and ``qm = min(m, q)`` survive the QRs), counted as: two Householder QRs
    (``n q qn + m q qm``), the core ``C`` from the old factors and the terms
    (``(n + m) q (rank + k) + qn qm (rank + k)``), its SVD (~``4 qn qm min(qn, qm)``), and rotating the
    bases and reducing to rank ``r`` (``(n qn + m qm)(qn + rank)``)."""
    q = rank + k
    qn, qm = min(n, q), min(m, q)
    return (n * q * qn + m * q * qm + (n + m) * q * (rank + k) + qn * qm * (rank + k)
            + 4 * qn * qm * min(qn, qm) + (n * qn + m * qm) * (qn + rank))


__all__ = ["METHODS", "NVMState", "NVMTrainer", "WEIGHT_METHODS"]

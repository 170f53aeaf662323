"""Forward-only training of a deployed fixed-point network by evolution strategies.

AbdulQader, Krishnan and Coelho (arXiv 2103.14007, 2021) retrain part of a quantized network on an
FPGA whose inference engine (hls4ml) has no backward path: the training logic only perturbs
weights, runs forward passes and compares fitnesses. This trainer does exactly that on the
deployed model's **integer-exact forward** and nothing else (no autograd anywhere on its path),
with the estimators that have made zeroth-order training stronger since:

* ``one-plus-one``: (1+1)-ES with Rechenberg's 1/5 success rule (Rechenberg 1973; the variant of
  Kern et al. 2004, "Learning probability distributions in continuous evolutionary algorithms"):
  a parent and one offspring ``theta + round(sigma z)``, evaluated on the same mini-batch; the
  offspring replaces the parent only when strictly fitter (accepting ties lets a parent whose
  logits saturate drift at random). ``sigma`` grows by ``sigma_up`` on a
  strict improvement and shrinks by ``sigma_up ** -1/4`` otherwise, so it is stationary at a 1/5
  success rate. The minimal hardware variant: one perturbation seed, two fitness registers.
* ``antithetic``: mirrored sampling with centred-rank fitness shaping (OpenAI-ES, Salimans et al.
  2017, arXiv 1703.03864): ``P/2`` pairs ``theta +- round(sigma z_i)``; with centred ranks ``u``
  the step is ``lr * sum_i (u_i+ - u_i-) z_i / (P/2)`` (LSBs).
* ``spsa``: the two-point SPSA estimator (Spall 1992) as MeZO uses it (Malladi et al. 2023,
  arXiv 2305.17333): ``g = (f(theta + sigma z) - f(theta - sigma z)) / (2 sigma)`` and the step
  ``lr * g * z``, with ``z`` regenerated from its seed, so the device stores no perturbation
  (memory = inference + O(1)). ``directions > 1`` averages several such pairs (n-SPSA).
* ``rank > 0``: dense weights are perturbed by low-rank products ``a b^T / sqrt(rank)``
  (EGGROLL, Sarkar et al. 2025, arXiv 2511.16652): ``rank * (out + in)`` random values per
  member instead of ``out * in``.

Units and number formats. Perturbations and steps are in LSBs of each parameter's own format
(``ap_fixed<16,6>`` by default: 1 LSB = 2**-10). A perturbed weight is ``theta + round(sigma z)``
saturated to the format, computed as the weight is read (never written back); an update is
rounded to whole LSBs (``floor`` = hls4ml's AP_TRN, ``nearest`` = AP_RND, or ``stochastic`` from
the same random source) and saturated, so the stored model is always a valid deployed model.
``shadow=True`` keeps a float copy of the trained parameters instead (the higher-precision
comparison point): updates accumulate in it and the deployed values are its rounding.

Every draw comes from a seed derived from (trainer seed, step, member), so the same seed gives the
same result bit for bit, and a device only keeps seeds and fitness values, never perturbation
vectors. The population is evaluated as one batched integer forward
(:func:`~edgetrain.model.population.forward_int_population`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import torch

from ...cost import Ledger
from ...cost.macs import inference_macs
from ...cost.memory import bytes_per_value
from ...cost.writes import WriteCounter, advance, init_writes, record_writes
from ...model import DeployedModel
from ...model.population import forward_int_population
from ...quant import in_range
from ...quant.rounding import round_float, round_real
from ..protocol import Batch, StepInfo, check_batch
from ..select import select_params
from .fitness import FITNESS, centered_ranks, fitness
from .perturb import DISTRIBUTIONS, SOURCES, derive_seed, draw, draw_lowrank

ESTIMATORS = ("one-plus-one", "antithetic", "spsa")
ROUNDINGS = ("floor", "nearest", "stochastic")

TORCH_GENERATOR_BYTES = 2_504
"""State of one torch CPU generator (MT19937: 624 32-bit words, an index and the seed)."""
LFSR_BYTES = 4
LFSR_CURSOR_BYTES = 5
"""A restart point in an LFSR stream: the 32-bit state and a 5-bit read position (``perturb.LFSRCursor``)."""
FITNESS_BYTES = 4
"""A fitness value: a 32-bit accumulator (integer count or fixed-point cross-entropy)."""
SHADOW_BYTES = 4
"""A float32 shadow copy per trained parameter (held in float32 here too)."""
FACTOR_BYTES = 2
"""One low-rank factor value (16 bits)."""
COUNTER_BYTES = 12
"""Base seed, step counter and ``sigma``: three 32-bit registers."""

_BATCH_KEY, _ROUND_KEY, _MEMBER_KEY = 1, 2, 3


@dataclass(frozen=True)
class ESState:
    """Everything that changes while training; ``step`` returns a new one."""

    model: DeployedModel
    names: tuple[str, ...]
    seed: int
    step: int = 0
    sigma: float = 0.0
    buf_x: torch.Tensor | None = None
    buf_y: torch.Tensor | None = None
    seen: int = 0
    shadow: dict[str, torch.Tensor] | None = None
    writes: WriteCounter | None = None
    accepted: int = 0
    macs_per_forward: int = 0
    extra_bytes: int = 0
    """Fixed for a run (formats and shapes never change): computed once in ``init``."""


@dataclass(frozen=True)
class ESTrainer:
    """Settings of a forward-only ES trainer; see the module docstring for the estimators.

    ``population`` is the number of members evaluated per generation for ``antithetic`` (even);
    ``spsa`` evaluates ``2 * directions`` and ``one-plus-one`` 2 (parent and offspring).
    ``buffer`` is the device's ring buffer of recent labelled samples and ``batch`` the mini-batch
    drawn from it for each generation.
    """

    estimator: str = "antithetic"
    params: str = "last"
    population: int = 20
    directions: int = 1
    sigma: float = 8.0
    lr: float = 8.0
    distribution: str = "rademacher"
    source: str = "lfsr"
    rank: int = 0
    rounding: str = "stochastic"
    shadow: bool = False
    fitness: str = "ce"
    buffer: int = 256
    batch: int = 64
    sigma_up: float = 1.5
    sigma_min: float = 1.0
    sigma_max: float = 64.0

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"ES setting {what}")

        need(self.estimator in ESTIMATORS, f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        need(self.distribution in DISTRIBUTIONS, f"distribution must be one of {DISTRIBUTIONS}, "
             f"got {self.distribution!r}")
        need(self.source in SOURCES, f"source must be one of {SOURCES}, got {self.source!r}")
        need(self.rounding in ROUNDINGS, f"rounding must be one of {ROUNDINGS}, got {self.rounding!r}")
        need(self.fitness in FITNESS, f"fitness must be one of {FITNESS}, got {self.fitness!r}")
        need(isinstance(self.population, int) and self.population >= 2 and self.population % 2 == 0,
             f"population must be an even integer >= 2, got {self.population!r}")
        need(isinstance(self.directions, int) and self.directions >= 1,
             f"directions must be an integer >= 1, got {self.directions!r}")
        need(isinstance(self.rank, int) and self.rank >= 0, f"rank must be an integer >= 0, got {self.rank!r}")
        for key in ("sigma", "lr", "sigma_min", "sigma_max"):
            v = getattr(self, key)
            need(isinstance(v, (int, float)) and math.isfinite(v) and v > 0, f"{key} must be a finite number > 0, "
                 f"got {v!r}")
        need(self.sigma_min <= self.sigma <= self.sigma_max, f"sigma must lie in [sigma_min, sigma_max] = "
             f"[{self.sigma_min}, {self.sigma_max}], got {self.sigma}")
        need(math.isfinite(self.sigma_up) and self.sigma_up > 1, f"sigma_up must be > 1, got {self.sigma_up!r}")
        need(isinstance(self.buffer, int) and self.buffer >= 1, f"buffer must be an integer >= 1, got {self.buffer!r}")
        need(isinstance(self.batch, int) and 1 <= self.batch <= self.buffer,
             f"batch must be an integer in 1..buffer ({self.buffer}), got {self.batch!r}")
        need(not (self.shadow and self.estimator == "one-plus-one"),
             "shadow does not apply to one-plus-one (its offspring is already in the deployed format)")

    # -- protocol -----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        parts = ["es", self.estimator]
        if self.rank:
            parts.append(f"lowrank{self.rank}")
        if self.shadow:
            parts.append("shadow")
        return "-".join(parts)

    @property
    def members(self) -> int:
        """Population members evaluated per generation."""
        if self.estimator == "antithetic":
            return self.population
        return 2 * self.directions if self.estimator == "spsa" else 2

    @property
    def pairs(self) -> int:
        """Perturbation streams per generation: ``P/2`` antithetic pairs, ``directions`` SPSA pairs, or
        the (1+1) offspring's one."""
        if self.estimator == "antithetic":
            return self.population // 2
        return self.directions if self.estimator == "spsa" else 1

    def writes(self, model: DeployedModel) -> tuple[str, ...]:
        return select_params(model, self.params)

    def init(self, model: DeployedModel, seed: int = 0) -> ESState:
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        names = self.writes(model)
        if not names:
            raise ValueError(f"parameter selection {self.params!r} picks no parameters of this model")
        shadow = {n: model.param(n)[0].to(torch.float32) for n in names} if self.shadow else None
        buf_x = torch.zeros((self.buffer, *model.input_shape), dtype=torch.int64)
        buf_y = torch.zeros(self.buffer, dtype=torch.int64)
        return ESState(model=model, names=names, seed=seed, sigma=float(self.sigma), buf_x=buf_x, buf_y=buf_y,
                       shadow=shadow, writes=init_writes({n: model.param(n)[0] for n in names}),
                       macs_per_forward=inference_macs(model), extra_bytes=self.extra_memory(model)["total"])

    def model(self, state: ESState) -> DeployedModel:
        return state.model

    def step(self, state: ESState, batch: Batch) -> tuple[ESState, StepInfo]:
        """Push ``batch`` (raw integer inputs) into the sample buffer, then run one generation on a
        mini-batch drawn from the buffer."""
        t0 = time.perf_counter()
        model = state.model
        batch = check_batch(batch, model.input_shape, integer=True)
        if not in_range(batch.x, model.input_fmt):
            raise ValueError(f"batch x holds values outside the model's input format {model.input_fmt.name}")
        n_out = model.output_shape[0]
        if batch.y.numel() and (int(batch.y.min()) < 0 or int(batch.y.max()) >= n_out):
            raise ValueError(f"batch labels must be in 0..{n_out - 1}")
        state = _push(state, batch)
        if state.seen < self.batch:  # the device waits for a full mini-batch before a generation
            ledger = Ledger(forward_passes=0, macs_forward=0, macs_backward=0, macs=0,
                            extra_memory_bytes=state.extra_bytes, weight_writes=0,
                            max_writes_per_cell=0, wall_s=time.perf_counter() - t0)
            return replace(state, writes=advance(state.writes)), StepInfo(ledger, {"waiting": 1.0})
        xb, yb = self._minibatch(state)
        if self.estimator == "one-plus-one":
            state, metrics = self._one_plus_one(state, xb, yb)
        else:
            state, metrics = self._gradient_step(state, xb, yb)
        state = replace(state, step=state.step + 1, writes=advance(state.writes))
        written = metrics.pop("_written")
        forward = self.members * xb.shape[0]
        macs = forward * state.macs_per_forward
        ledger = Ledger(forward_passes=forward, macs_forward=macs, macs_backward=0, macs=macs,
                        extra_memory_bytes=state.extra_bytes, weight_writes=written,
                        max_writes_per_cell=1 if written else 0, wall_s=time.perf_counter() - t0)
        metrics["batch"] = float(xb.shape[0])
        return state, StepInfo(ledger, metrics)

    # -- the estimators -------------------------------------------------------------------------

    def _minibatch(self, state: ESState) -> tuple[torch.Tensor, torch.Tensor]:
        filled = min(state.seen, self.buffer)
        if filled == self.batch:
            return state.buf_x[:filled], state.buf_y[:filled]
        g = torch.Generator().manual_seed(derive_seed(state.seed, state.step, _BATCH_KEY))
        idx = torch.randperm(filled, generator=g)[: self.batch]
        return state.buf_x[idx], state.buf_y[idx]

    def _noise(self, state: ESState, seeds: list[int]) -> dict[str, torch.Tensor]:
        """Unit-variance noise ``z`` per trained parameter, ``[len(seeds), *shape]`` float64."""
        out = {}
        for k, name in enumerate(state.names):
            t = state.model.param(name)[0]
            pseeds = [derive_seed(s, k) for s in seeds]
            if self.rank and t.ndim == 2:
                out[name] = draw_lowrank(pseeds, tuple(t.shape), self.rank, self.distribution, self.source)
            else:
                out[name] = draw(pseeds, t.numel(), self.distribution, self.source).reshape(len(seeds), *t.shape)
        return out

    def _perturbed(self, state: ESState, z: dict[str, torch.Tensor], signs: list[int],
                   sigma: float) -> dict[str, torch.Tensor]:
        """Member values ``sat(theta + sign * round(sigma z))``: one member per (noise row, sign)."""
        members = {}
        for name in state.names:
            t, fmt = state.model.param(name)
            delta = round_float(sigma * z[name], "nearest").to(torch.int64)  # finite: sigma and z are
            rows = [t.unsqueeze(0) + s * delta if s else t.unsqueeze(0).expand_as(delta) for s in signs]
            stacked = torch.stack(rows, dim=1).reshape(-1, *t.shape)  # member = row * len(signs) + sign
            members[name] = stacked.clamp(fmt.raw_min, fmt.raw_max)
        return members

    def _evaluate(self, state: ESState, members: dict[str, torch.Tensor], xb: torch.Tensor,
                  yb: torch.Tensor) -> torch.Tensor:
        logits = forward_int_population(state.model, xb, members, overflow="wrap")
        return fitness(logits, yb, state.model.output_fmt, self.fitness)

    def _one_plus_one(self, state: ESState, xb: torch.Tensor, yb: torch.Tensor) -> tuple[ESState, dict]:
        seed = derive_seed(state.seed, state.step, _MEMBER_KEY, 0)
        z = self._noise(state, [seed])
        members = self._perturbed(state, z, [0, 1], state.sigma)  # parent, offspring
        f = self._evaluate(state, members, xb, yb)
        better = accept = bool(f[1] > f[0])
        sigma = state.sigma * (self.sigma_up if better else self.sigma_up ** -0.25)
        sigma = min(max(sigma, self.sigma_min), self.sigma_max)
        model, writes, written = state.model, state.writes, 0
        if accept:
            new = {n: members[n][1] for n in state.names}
            model, writes, written = _write(state, new)
        state = replace(state, model=model, writes=writes, sigma=sigma, accepted=state.accepted + int(accept))
        return state, {"fitness": float(f[0]), "fitness_offspring": float(f[1]), "accepted": float(accept),
                       "sigma": sigma, "_written": written}

    def _gradient_step(self, state: ESState, xb: torch.Tensor, yb: torch.Tensor) -> tuple[ESState, dict]:
        pairs = self.pairs
        seeds = [derive_seed(state.seed, state.step, _MEMBER_KEY, i) for i in range(pairs)]
        z = self._noise(state, seeds)
        members = self._perturbed(state, z, [1, -1], state.sigma)  # theta + d_i, theta - d_i
        f = self._evaluate(state, members, xb, yb)
        f_plus, f_minus = f[0::2], f[1::2]
        if self.estimator == "antithetic":
            u = centered_ranks(f)
            weights = u[0::2] - u[1::2]
        else:
            weights = (f_plus - f_minus) / (2 * state.sigma)
        step = {n: self.lr * torch.tensordot(weights, z[n], dims=1) / pairs for n in state.names}
        new, shadow = {}, state.shadow
        if shadow is not None:
            shadow = {}
            for n in state.names:
                fmt = state.model.param(n)[1]
                shadow[n] = (state.shadow[n] + step[n].to(torch.float32)).clamp(fmt.raw_min, fmt.raw_max)
                new[n] = round_real(shadow[n], "nearest")
        else:
            ug, offset = None, 0
            if self.rounding == "stochastic":
                ug = self._rounding_noise(state, sum(step[n].numel() for n in state.names))
            for n in state.names:
                fmt = state.model.param(n)[1]
                s = step[n]
                if ug is not None:
                    q = torch.floor(s + ug[offset: offset + s.numel()].reshape(s.shape)).to(torch.int64)
                    offset += s.numel()
                else:
                    q = round_float(s, self.rounding).to(torch.int64)  # finite: weighted sum of finite noise
                new[n] = (state.model.param(n)[0] + q).clamp(fmt.raw_min, fmt.raw_max)
        model, writes, written = _write(state, new)
        state = replace(state, model=model, writes=writes, shadow=shadow)
        norm = math.sqrt(sum(float((s * s).sum()) for s in step.values()))
        return state, {"fitness": float(f.mean()), "fitness_best": float(f.max()), "step_norm_lsb": norm,
                       "_written": written}

    def _rounding_noise(self, state: ESState, n: int) -> torch.Tensor:
        """``n`` uniform ``[0, 1)`` offsets for stochastic rounding, from the trainer's random source: one
        stream per generation, read in parameter order (one draw, sliced by the caller)."""
        seed = derive_seed(state.seed, state.step, _ROUND_KEY)
        u = draw([seed], n, "uniform", self.source)[0]
        return (u / math.sqrt(3.0) + 1.0) / 2.0

    # -- costs ----------------------------------------------------------------------------------

    def extra_memory(self, model: DeployedModel) -> dict[str, int]:
        """RAM the training unit adds to inference, by item (bytes), and ``total``.

        The device regenerates each perturbation from its seed while weights stream through the
        multipliers, so no perturbation vector is stored: what remains is the sample buffer, one
        generator state per perturbation stream that is live at once (the ``P/2`` antithetic
        streams are replayed in lockstep to apply the update), one fitness register per member,
        the base seed / step / sigma registers, the low-rank factor memory (:meth:`lowrank_memory`),
        and the float shadow copy when enabled.
        """
        names = self.writes(model)
        n_in = math.prod(model.input_shape)
        label_bytes = 1 if model.output_shape[0] <= 256 else 2
        pairs = self.pairs
        gen_bytes = LFSR_BYTES if self.source == "lfsr" else TORCH_GENERATOR_BYTES
        streams = pairs + (1 if self.rounding == "stochastic" and self.estimator != "one-plus-one" else 0)
        items = {
            "sample_buffer": self.buffer * (n_in * bytes_per_value(model.input_fmt) + label_bytes),
            "generators": (streams + 1) * gen_bytes,  # + 1: mini-batch index draws
            "fitness": self.members * FITNESS_BYTES,
            "registers": COUNTER_BYTES,
        }
        if self.rank:
            items["lowrank_factors"] = self.lowrank_memory(model)["bytes"]
        if self.shadow:
            items["shadow"] = SHADOW_BYTES * sum(model.param(n)[0].numel() for n in names)
        items["total"] = sum(items.values())
        return items


    def lowrank_memory(self, model: DeployedModel) -> dict:
        """Bytes the low-rank factors need (``rank > 0``), by phase, and the design the total assumes.

        * Evaluation: the perturbation lanes read one member's factors ``a_k``, ``b_k`` of every
          trained dense layer in parallel, so they sit in a factor buffer (16 bits per value), filled
          from the member's seed.
        * Update (serial, one weight per clock, every stream replayed in lockstep), the cheaper of:
          ``"stored"``, every stream's factors of the largest layer (``pairs * rank * (out + in)``
          values); or ``"restart"``, regenerated row by row as :func:`~.perturb.lowrank_rows` does:
          per stream ``3 * rank`` cursors (one is the stream's generator, already counted) and
          ``rank`` factor registers, paid for in generator clocks instead of memory. An LFSR cursor
          is its 32-bit state and a 5-bit read position (5 B); a torch generator's restart point is a
          copy of its whole state, so ``"stored"`` wins there.

        The two phases never overlap, so ``bytes`` is the larger of the two.
        """
        names = self.writes(model)
        dense = [model.param(n)[0] for n in names if model.param(n)[0].ndim == 2]
        per_layer = [self.rank * sum(t.shape) for t in dense]  # a member's factor values: rank x (out + in)
        pairs = self.pairs
        cursor = LFSR_CURSOR_BYTES if self.source == "lfsr" else TORCH_GENERATOR_BYTES
        evaluation = FACTOR_BYTES * sum(per_layer)
        stored = FACTOR_BYTES * pairs * max(per_layer, default=0)
        restart = pairs * ((3 * self.rank - 1) * cursor + self.rank * FACTOR_BYTES) if dense else 0
        design = "restart" if restart < stored else "stored"
        update = min(stored, restart)
        return {"evaluation": evaluation, "update": update, "update_design": design, "bytes": max(evaluation, update)}


def _push(state: ESState, batch: Batch) -> ESState:
    """Write the batch into the ring buffer (oldest samples are overwritten)."""
    n = batch.x.shape[0]
    if n == 0:
        return state
    cap = state.buf_x.shape[0]
    if n > cap:
        batch = Batch(batch.x[-cap:], batch.y[-cap:])
        state = replace(state, seen=state.seen + n - cap)
        n = cap
    idx = (torch.arange(n) + state.seen) % cap
    buf_x, buf_y = state.buf_x.clone(), state.buf_y.clone()
    buf_x[idx] = batch.x.to(torch.int64)
    buf_y[idx] = batch.y
    return replace(state, buf_x=buf_x, buf_y=buf_y, seen=state.seen + n)


def _write(state: ESState, new: dict[str, torch.Tensor]) -> tuple[DeployedModel, WriteCounter, int]:
    """Store the new values; count the cells that changed."""
    writes, written = state.writes, 0
    for n, t in new.items():
        old = state.model.param(n)[0]
        written += int((old != t).sum())
        writes = record_writes(writes, n, old, t)
    return state.model.with_params(new), writes, written

"""Analytic size of the ES training unit on an FPGA, next to the part's totals.

AbdulQader et al. (arXiv 2103.14007) report that the training logic beside an hls4ml inference
core takes under 1% of a Kintex UltraScale's resources. This module counts what our trainer's
settings need, unit by unit, from the design sketched below; it is an estimate from the
architecture (no synthesis run), and each row says how it was counted.

Design assumed (one clock domain, the inference core unchanged except for one adder per weight
input lane):

* **Perturbation lanes**: the core reads ``lanes = ceil(trained weights / reuse_factor)`` trained
  weights per clock (hls4ml's reuse factor); each lane adds ``round(sigma z)`` and saturates
  (an adder plus a saturation multiplexer: about ``2 W`` LUTs for a ``W``-bit weight).
* **Random bits**: leap-forward 32-bit Galois LFSRs emit 32 bits per clock each; the XOR network
  of one is counted exactly from the 32-step transition matrix (a LUT6 XORs 6 inputs, so an
  output bit that depends on ``w`` state bits needs ``ceil((w - 1) / 5)`` LUTs). Members are
  evaluated one after another, so evaluation needs ``ceil(lanes * bits per value / 32)`` LFSRs
  (one, filling a factor buffer, with low-rank perturbations); the update replays all ``P/2``
  antithetic streams (or the ``directions`` SPSA streams) in lockstep, one LFSR word per value
  each. The same registers serve both phases, so the count is the larger of the two.
* **Low-rank factors**: evaluation reads one member's factors from a register buffer; the update
  regenerates every stream's factors row by row (``perturb.lowrank_rows``): per stream and rank
  term, one LFSR walks ``a_k`` and one re-reads ``b_k`` from a saved restart point, and ``a_k b_k``
  is an XOR of signs (Rademacher) or one DSP multiply.
* **Fitness**: ``accuracy`` = an argmax comparator tree over the logits and a counter;
  ``ce`` = log-sum-exp with exp/log tables in block RAM and a 32-bit accumulator.
* **Estimator**: fitness registers (32 bits per member); centred ranks by serial comparison
  (antithetic); a subtract and multiply (SPSA); a comparator and sigma register (1+1).
* **Update**: serial, one weight per clock: an adder tree over the live streams, one DSP for the
  learning rate, rounding and saturation.
* **Buffers**: the sample buffer (and the shadow copy, if any) in 36 Kb block RAMs.
* **Control**: a fixed allowance of 300 LUTs and 300 flip-flops for the state machine and
  counters (an assumption).
"""

from __future__ import annotations

import functools
import math

from ...cost.memory import bytes_per_value
from ...device.profiles import FPGA
from ...model import DeployedModel
from .perturb import LFSR_BITS, lfsr_step, random_bits_per_value
from .trainer import ESTrainer

CONTROL_LUTS = 300
CONTROL_FFS = 300
BRAM_BITS = 36 * 1024


@functools.cache
def leap_xor_luts() -> int:
    """LUT6s of one leap-forward (32 clocks per cycle) LFSR's XOR network, from its transition
    matrix: column ``j`` is the state reached from the unit state ``1 << j``."""
    cols = []
    for j in range(LFSR_BITS):
        s = 1 << j
        for _ in range(LFSR_BITS):
            s = lfsr_step(s)
        cols.append(s)
    luts = 0
    for bit in range(LFSR_BITS):
        w = sum((c >> bit) & 1 for c in cols)  # state bits feeding next-state bit ``bit``
        luts += math.ceil((w - 1) / 5) if w > 1 else 0
    return luts


def _row(unit: str, luts: int, ffs: int, dsps: int, bram: int, basis: str) -> dict:
    return {"unit": unit, "luts": luts, "ffs": ffs, "dsps": dsps, "bram_36k": bram, "basis": basis}


def es_hardware(trainer: ESTrainer, model: DeployedModel, fpga: FPGA, reuse_factor: int = 1) -> dict:
    """Rows of estimated LUTs / FFs / DSPs / BRAMs per unit, their total and its share of ``fpga``."""
    if not isinstance(reuse_factor, int) or reuse_factor < 1:
        raise ValueError(f"reuse_factor must be an integer >= 1, got {reuse_factor!r}")
    names = trainer.writes(model)
    params = [model.param(n) for n in names]
    n_trained = sum(t.numel() for t, _ in params)
    width = max(f.bits for _, f in params)
    lanes = math.ceil(n_trained / reuse_factor)
    bits_per_value = random_bits_per_value(trainer.distribution)
    streams = trainer.pairs
    words_per_value = math.ceil(bits_per_value / LFSR_BITS)
    if trainer.rank:  # a member's factors are drawn once into the factor buffer, by one LFSR
        eval_lfsrs = 1
        basis_eval = "low-rank: one LFSR fills each member's factor buffer"
    else:  # members are evaluated one after another: one stream, lanes x bits per clock
        eval_lfsrs = math.ceil(lanes * bits_per_value / LFSR_BITS)
        basis_eval = f"evaluation: {lanes} lanes x {bits_per_value} bit(s) per clock"
    # update: one weight per clock, every stream replayed in lockstep; low-rank streams regenerate
    # their factors row by row (perturb.lowrank_rows): rank LFSRs walk the a_k, rank re-read the b_k
    update_lfsrs = streams * words_per_value * (2 * trainer.rank if trainer.rank else 1)
    lfsrs = max(eval_lfsrs, update_lfsrs)  # the same registers serve both phases
    rows = [
        _row("perturbation adders", lanes * 2 * width + (lanes * trainer.rank * width if trainer.rank else 0), 0, 0, 0,
             f"{lanes} lanes x (add + saturate) of {width}-bit weights, ~2 LUT per bit"
             + (f", plus a {trainer.rank}-term factor sum per lane" if trainer.rank else "")),
        _row("LFSRs (perturbation)", lfsrs * leap_xor_luts(), lfsrs * LFSR_BITS, 0, 0,
             f"{lfsrs} leap-forward 32-bit LFSR(s): max of {basis_eval} ({eval_lfsrs}) and the update's "
             f"{streams} stream(s) x {words_per_value} word(s) per value ({update_lfsrs}); "
             f"{leap_xor_luts()} LUT6 per XOR network (counted from the transition matrix)"),
    ]
    if trainer.rank:
        dense = [t for t, _ in params if t.ndim == 2]
        buffer_bits = 16 * trainer.rank * sum(sum(t.shape) for t in dense)
        restart_bits = streams * trainer.rank * (LFSR_BITS + 5 + 16)
        sign_only = trainer.distribution == "rademacher"
        rows.append(_row("low-rank factors", streams * trainer.rank * (1 if sign_only else 0),
                         buffer_bits + restart_bits, 0 if sign_only else streams * trainer.rank, 0,
                         f"evaluation: a member's factor buffer ({buffer_bits // 16} x 16 bits); update: per stream "
                         f"and rank term a saved b_k restart point (37 bits) and an a_k register (16 bits), and "
                         + ("an XOR for the sign product" if sign_only else "a DSP for a_k b_k")))
    n_out = model.output_shape[0]
    out_bits = model.output_fmt.bits
    if trainer.fitness == "accuracy":
        rows.append(_row("fitness: argmax + count", (n_out - 1) * out_bits, 16, 0, 0,
                         f"{n_out - 1} comparators of {out_bits} bits, a 16-bit counter"))
    else:
        rows.append(_row("fitness: log-sum-exp", 4 * 32, 3 * 32, 2, 2,
                         "exp and log tables (1 BRAM each), a 32-bit accumulator, adder, max register"))
    members = trainer.members
    rows.append(_row("fitness registers", 0, members * 32, 0, 0, f"{members} x 32-bit"))
    if trainer.estimator == "antithetic":
        rank_bits = max(1, math.ceil(math.log2(members)))
        rows.append(_row("centred ranks", 32 + 2 * rank_bits, members * rank_bits, 0, 0,
                         f"serial {members}x{members} comparisons: one 32-bit comparator, {members} rank counters"))
        acc_bits = width + rank_bits + 1
        rows.append(_row("update (serial)", (streams - 1) * acc_bits + 3 * width, acc_bits + width, 1, 0,
                         f"adder tree over {streams} streams ({acc_bits}-bit), one DSP for lr, round + saturate"))
    elif trainer.estimator == "spsa":
        rows.append(_row("update (serial)", 32 + max(0, streams - 1) * 32 + 3 * width, 64 + width, 2, 0,
                         "fitness difference, one DSP for lr*g, one for z scaling, round + saturate"))
    else:
        rows.append(_row("accept + 1/5 rule", 32 + 16, 32 + 16, 1, 0,
                         "fitness comparator, sigma register scaled by one DSP"))
    n_in = math.prod(model.input_shape)
    buf_bits = trainer.buffer * (n_in * bytes_per_value(model.input_fmt) * 8 + 8)
    rows.append(_row("sample buffer", 0, 0, 0, math.ceil(buf_bits / BRAM_BITS),
                     f"{trainer.buffer} samples x {n_in} inputs in block RAM"))
    if trainer.shadow:
        rows.append(_row("shadow copy", 0, 0, 0, math.ceil(n_trained * 32 / BRAM_BITS),
                         f"{n_trained} x float32 in block RAM"))
    rows.append(_row("control", CONTROL_LUTS, CONTROL_FFS, 0, 0, "assumed allowance for FSM and counters"))
    total = {k: sum(r[k] for r in rows) for k in ("luts", "ffs", "dsps", "bram_36k")}
    avail = {"luts": fpga.luts, "ffs": fpga.ffs, "dsps": fpga.dsps, "bram_36k": fpga.bram_36k}
    share = {k: total[k] / avail[k] for k in total}
    return {"device": fpga.name, "part": fpga.part, "reuse_factor": reuse_factor, "lanes": lanes,
            "rows": rows, "total": total, "available": avail, "fraction": share,
            "max_fraction": max(share.values())}

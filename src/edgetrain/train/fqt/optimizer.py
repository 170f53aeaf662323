"""FQT optimizers: turn a layer's (summed) gradient into a real-valued update of the rows it trains.

Three rules, each an ``init`` / ``update`` pair over explicit per-layer state (as optax does):

* ``standardize`` (the default; Deutel et al., arXiv 2407.10734, sec. IV-C): per output row (dense
  row, conv filter) the gradient is centred and scaled, ``(g - mu) / sigma``, where ``mu`` and
  ``sigma^2`` are moving averages (rate ``stat_rate``) of the row gradient's mean and variance; the
  first update of a row starts them at its own statistics. The bias moves by ``g_b / max(sigma, |g_b|)``
  of its row (a single value cannot be centred, and the bound keeps a row with a constant weight
  gradient from dividing by ~0; our choice). This makes the step size independent of the
  very different gradient scales of uint8 layers.
* ``sgd``: plain SGD on the mean gradient, with optional momentum ``v <- momentum v + g``.
* ``qas``: Quantization-Aware Scaling (Lin et al., "On-device training under 256KB memory", NeurIPS
  2022, sec. 3.1): SGD on the *integer* weights with the gradient scaled by ``s_w^-2``
  (``s_w^-2 s_x^-2`` for biases). Written in real units the step is ``-lr g`` (the scaling cancels the
  quantization scale in the chain rule), so the update returned here is SGD's; what makes QAS differ
  is that the trainer applies it to the stored integers in place, without re-ranging the format.

Updates touch only ``rows`` (the structures that dynamic partial updates kept); the statistics of
the other rows do not move. The state is what the device keeps: ``2`` floats per row for
``standardize``, one value per weight for momentum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

OPTIMIZERS = ("standardize", "sgd", "qas")


@dataclass(frozen=True)
class Optimizer:
    """Settings of the update rule (see the module docstring)."""

    kind: str = "standardize"
    lr: float = 0.01
    momentum: float = 0.0
    stat_rate: float = 0.1
    eps: float = 1e-12

    def __post_init__(self) -> None:
        if self.kind not in OPTIMIZERS:
            raise ValueError(f"unknown FQT optimizer {self.kind!r}; expected one of {OPTIMIZERS}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"learning rate must be a finite number > 0, got {self.lr!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum!r}")
        if self.momentum and self.kind == "standardize":
            raise ValueError("momentum applies to the 'sgd' and 'qas' optimizers, not to 'standardize'")
        if not 0.0 < self.stat_rate <= 1.0:
            raise ValueError(f"stat_rate must lie in (0, 1], got {self.stat_rate!r}")
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"eps must be a finite number > 0, got {self.eps!r}")


@dataclass(frozen=True, eq=False)
class LayerOptState:
    """One layer's optimizer state: moving row statistics (standardize) or velocities (momentum)."""

    mean: torch.Tensor | None = None
    var: torch.Tensor | None = None
    seen: torch.Tensor | None = None
    velocity_w: torch.Tensor | None = None
    velocity_b: torch.Tensor | None = None


def opt_init(opt: Optimizer, weight_shape: tuple[int, ...]) -> LayerOptState:
    """Fresh state for a layer whose weight has ``weight_shape`` (rows first)."""
    rows = int(weight_shape[0])
    if opt.kind == "standardize":
        return LayerOptState(torch.zeros(rows, dtype=torch.float64), torch.ones(rows, dtype=torch.float64),
                             torch.zeros(rows, dtype=torch.bool))
    if opt.momentum:
        return LayerOptState(velocity_w=torch.zeros(weight_shape, dtype=torch.float64),
                             velocity_b=torch.zeros(rows, dtype=torch.float64))
    return LayerOptState()


def opt_update(
    opt: Optimizer,
    state: LayerOptState,
    grad_w: torch.Tensor | None,
    grad_b: torch.Tensor,
    rows: torch.Tensor,
) -> tuple[torch.Tensor | None, torch.Tensor, LayerOptState]:
    """Real-valued updates ``(delta_w, delta_b)`` to *add* to the weight and bias (zero outside
    ``rows``), and the new state. ``grad_w`` / ``grad_b`` are the mini-batch mean gradients; ``grad_w``
    is ``None`` when only the bias trains."""
    grad_b = grad_b.to(torch.float64)
    delta_b = torch.zeros_like(grad_b)
    delta_w = None if grad_w is None else torch.zeros(grad_w.shape, dtype=torch.float64)
    if rows.numel() == 0:
        return delta_w, delta_b, state
    if opt.kind == "standardize":
        mean, var, seen = state.mean.clone(), state.var.clone(), state.seen.clone()
        if grad_w is not None:
            g = grad_w.to(torch.float64).reshape(grad_w.shape[0], -1)[rows]
            m_now, v_now = g.mean(1), g.var(1, unbiased=False)
            first = ~seen[rows]
            r = opt.stat_rate
            mean[rows] = torch.where(first, m_now, (1 - r) * mean[rows] + r * m_now)
            var[rows] = torch.where(first, v_now, (1 - r) * var[rows] + r * v_now)
            seen[rows] = True
            sigma = (var[rows] + opt.eps).sqrt()
            delta_w.reshape(grad_w.shape[0], -1)[rows] = -opt.lr * (g - mean[rows, None]) / sigma[:, None]
            # a row whose weight gradient is (nearly) constant has sigma ~ 0 while its bias gradient need
            # not be: bound the bias step by lr, the size of a standardized weight step
            delta_b[rows] = -opt.lr * grad_b[rows] / torch.maximum(sigma, grad_b[rows].abs())
        else:  # bias only: no row of weights to take statistics from; standardize across the kept biases
            g = grad_b[rows]
            sigma = g.std(unbiased=False) if g.numel() > 1 else g.abs().max()
            delta_b[rows] = -opt.lr * g / (sigma + math.sqrt(opt.eps)) if float(sigma) > 0 else 0.0
        return delta_w, delta_b, LayerOptState(mean, var, seen)
    # sgd and qas: the same real-valued step (see the module docstring)
    vw, vb = state.velocity_w, state.velocity_b
    if opt.momentum:
        vb = vb.clone()
        vb[rows] = opt.momentum * vb[rows] + grad_b[rows]
        delta_b[rows] = -opt.lr * vb[rows]
        if grad_w is not None:
            vw = vw.clone()
            vw[rows] = opt.momentum * vw[rows] + grad_w.to(torch.float64)[rows]
            delta_w[rows] = -opt.lr * vw[rows]
    else:
        delta_b[rows] = -opt.lr * grad_b[rows]
        if grad_w is not None:
            delta_w[rows] = -opt.lr * grad_w.to(torch.float64)[rows]
    return delta_w, delta_b, LayerOptState(velocity_w=vw, velocity_b=vb)


def opt_state_bytes(opt: Optimizer, weight_shape: tuple[int, ...], bias_only: bool = False) -> int:
    """Bytes the device keeps for this layer's optimizer state (float32 values)."""
    rows = int(weight_shape[0])
    if opt.kind == "standardize":
        return 0 if bias_only else 2 * 4 * rows
    if opt.momentum:
        return 4 * (rows + (0 if bias_only else math.prod(weight_shape)))
    return 0


__all__ = ["OPTIMIZERS", "LayerOptState", "Optimizer", "opt_init", "opt_state_bytes", "opt_update"]

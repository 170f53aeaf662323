"""Integer backward kernels of fully quantized training (Deutel et al., arXiv 2407.10734, sec. III-IV).

Weights, activations and errors (gradients with respect to activations) are uint8 with one scale
and zero point per tensor (``quant.Affine``). Every product is of two centred 8-bit values and
accumulates exactly in a signed 32-bit accumulator (a kernel raises if a sum would leave it, as the
device would wrap there); an error that feeds the next layer down is requantized to uint8 with the
same fixed-point multiplier and rounding as the forward (``quant.requantize``). Weight and bias
gradients are returned as the int32 accumulator plus its real scale, for the optimizer to use as a
per-element float temporary.

Zero error is the error format's zero point: a pruned or masked element holds ``z_e``, so it
contributes nothing to any sum. Internally, sums of centred integers run in float64 (exact: every
partial sum is far below 2**53) so BLAS and the convolution kernels do the work.

Dense (``y = W a``): ``e_a = W^T e_y``, ``dW = e_y a^T``, ``db = sum e_y``. Convolution:
``e_a`` is the transposed convolution of ``e_y`` with ``W``; ``dW`` correlates the zero-padded input
(padding is the real value 0) with ``e_y``. ReLU passes the error where its output was above its
zero point. MaxPool routes each window's error to the first maximum in scan order (non-overlapping
windows). GlobalAvgPool spreads ``e / positions``. ``rows`` selects the output channels (dense rows,
conv filters) whose weight gradient is computed; the rest are not computed (and not counted).

The ``*_samples`` twins of the weight and bias gradients keep the batch axis (each sample's own int32
accumulator, vectorized over the batch): the int16 block-float gradient buffer (``blockfloat``) adds
them one sample at a time. The batch-summed kernels are what the default int32 buffer uses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...quant import Affine, affine_from_range, dequantize, multipliers, quantize, requantize

ACC_MIN, ACC_MAX = -(1 << 31), (1 << 31) - 1


def error_format(lo: float = -1.0, hi: float = 1.0) -> Affine:
    """uint8 error format covering ``[lo, hi]`` (the fixed-range mode uses ``[-1, 1]``)."""
    return affine_from_range(lo, hi, bits=8, signed=False)


def _per_tensor(fmt, what: str) -> None:
    if not isinstance(fmt, Affine) or fmt.per_channel:
        raise ValueError(f"{what} must be a per-tensor affine format (uint8 FQT), got {getattr(fmt, 'name', fmt)}")


def _centred(q: torch.Tensor, fmt: Affine) -> torch.Tensor:
    _per_tensor(fmt, "an error or activation format")
    if q.is_floating_point():
        raise TypeError(f"expected raw integer values, got {q.dtype}")
    return (q.to(torch.int64) - fmt.zero_point[0]).to(torch.float64)


def _acc32(acc: torch.Tensor, what: str) -> torch.Tensor:
    """float64 exact sums -> int64, refusing a value a 32-bit accumulator cannot hold."""
    out = acc.round().to(torch.int64)
    if out.numel() and (int(out.min()) < ACC_MIN or int(out.max()) > ACC_MAX):
        raise OverflowError(f"{what}: a sum left the signed 32-bit accumulator range")
    return out


def _requant(acc: torch.Tensor, scale: float, out_fmt: Affine) -> torch.Tensor:
    _per_tensor(out_fmt, "the output error format")
    m, s = multipliers(torch.tensor(scale, dtype=torch.float64), out_fmt)
    return requantize(acc, m, s, out_fmt)


def quantize_error(e: torch.Tensor, e_fmt: Affine) -> torch.Tensor:
    """Real errors -> raw uint8 (rounded to nearest, saturated at the format's range)."""
    _per_tensor(e_fmt, "the error format")
    if not torch.isfinite(torch.as_tensor(e)).all():
        raise ValueError("quantize_error: the errors hold non-finite values")
    return quantize(e, e_fmt)


def exp_table(logit_fmt: Affine) -> torch.Tensor:
    """``exp(-s k)`` for ``k = 0 .. raw_max - raw_min`` (float64), ``s`` the logits' scale.

    The uint8 loss head reads its exponentials from this table instead of calling ``exp``: the
    logits are raw integers with one scale, so ``exp(real - max) = table[q_max - q]`` exactly as
    the table holds it. A device (and the generated C) gets the same 256 constants, so the loss
    error is bit-identical on every target whatever its ``exp`` (a libm ``exp`` differs in the
    last bit between C libraries and from PyTorch's vectorized one)."""
    _per_tensor(logit_fmt, "the logit format")
    s = logit_fmt.scale[0]
    return torch.tensor([math.exp(-s * k) for k in range(logit_fmt.raw_max - logit_fmt.raw_min + 1)],
                        dtype=torch.float64)


def softmax_minus_onehot_table(logits: torch.Tensor, logit_fmt: Affine, y: torch.Tensor,
                               table: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax(logits) - onehot(y)`` of raw logits ``[B, classes]`` with every operation an IEEE
    double operation in a fixed order (what the C export computes): ``t_c = table[max - q_c]``,
    ``sum`` over classes left to right, ``p_c = t_c / sum``, minus 1 at the label."""
    y = torch.as_tensor(y, dtype=torch.int64).reshape(-1)
    if y.shape[0] != logits.shape[0] or (y.numel() and (int(y.min()) < 0 or int(y.max()) >= logits.shape[1])):
        raise ValueError(f"labels must be {logits.shape[0]} values in 0..{logits.shape[1] - 1}")
    table = exp_table(logit_fmt) if table is None else table
    q = logits.to(torch.int64)
    t = table[q.max(dim=1, keepdim=True).values - q]
    total = t[:, 0].clone()
    for c in range(1, t.shape[1]):  # left to right, as the device sums
        total = total + t[:, c]
    g = t / total[:, None]
    g[torch.arange(y.shape[0]), y] -= 1.0
    return g


def softmax_ce_error(logits: torch.Tensor, logit_fmt: Affine, y: torch.Tensor, e_fmt: Affine) -> torch.Tensor:
    """The loss head: ``softmax(logits) - onehot(y)`` from raw uint8 logits (float per-element
    temporaries), quantized to ``e_fmt``. Returns raw ``[B, classes]``."""
    return quantize_error(softmax_minus_onehot(logits, logit_fmt, y), e_fmt)


def softmax_minus_onehot(logits: torch.Tensor, logit_fmt: Affine, y: torch.Tensor) -> torch.Tensor:
    """The real per-element temporaries of the loss head, before quantization: ``[B, classes]``."""
    real = dequantize(logits, logit_fmt)
    y = torch.as_tensor(y, dtype=torch.int64).reshape(-1)
    if y.shape[0] != real.shape[0] or (y.numel() and (int(y.min()) < 0 or int(y.max()) >= real.shape[1])):
        raise ValueError(f"labels must be {real.shape[0]} values in 0..{real.shape[1] - 1}")
    g = torch.softmax(real.to(torch.float64), dim=1)
    g[torch.arange(y.shape[0]), y] -= 1.0
    return g


# -- dense ----------------------------------------------------------------------------------------------


def dense_input_acc(e: torch.Tensor, e_fmt: Affine, w: torch.Tensor, w_fmt: Affine) -> tuple[torch.Tensor, float]:
    """``W^T e_y`` as the int32 accumulator ``[B, in]`` and its real scale ``s_e s_w``, before the
    requantization to the input's error format (the moving-average range mode reads its range here)."""
    _per_tensor(w_fmt, "the weight format")
    acc = _acc32(_centred(e, e_fmt) @ _centred(w, w_fmt), "dense input gradient")
    return acc, e_fmt.scale[0] * w_fmt.scale[0]


def dense_input_grad(e: torch.Tensor, e_fmt: Affine, w: torch.Tensor, w_fmt: Affine, out_fmt: Affine) -> torch.Tensor:
    """``e_a = W^T e_y``: raw ``[B, out]`` errors and ``[out, in]`` weights -> raw ``[B, in]``."""
    return requant_error(*dense_input_acc(e, e_fmt, w, w_fmt), out_fmt)


def requant_error(acc: torch.Tensor, scale: float, out_fmt: Affine) -> torch.Tensor:
    """An int32 error accumulator of real scale ``scale`` -> raw values of the error format ``out_fmt``."""
    return _requant(acc, scale, out_fmt)


def dense_weight_grad(e: torch.Tensor, e_fmt: Affine, a: torch.Tensor, a_fmt: Affine,
                      rows: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """``dW = sum_b e_y a^T`` as an int32 accumulator ``[out, in]`` (zero outside ``rows``) and its
    real scale ``s_e s_a``."""
    ec, ac = _centred(e, e_fmt), _centred(a, a_fmt)
    acc = torch.zeros(ec.shape[1], ac.shape[1], dtype=torch.float64)
    if rows is None:
        acc = ec.T @ ac
    elif rows.numel():
        acc[rows] = ec[:, rows].T @ ac
    return _acc32(acc, "dense weight gradient"), e_fmt.scale[0] * a_fmt.scale[0]


def bias_grad(e: torch.Tensor, e_fmt: Affine, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """``db = sum e_y`` over the batch (and positions) per output channel: int32 ``[out]`` and ``s_e``."""
    ec = _centred(e, e_fmt)
    acc = ec.transpose(0, 1).reshape(ec.shape[1], -1).sum(1)
    if rows is not None:
        keep = torch.zeros_like(acc, dtype=torch.bool)
        keep[rows] = True
        acc = torch.where(keep, acc, torch.zeros_like(acc))
    return _acc32(acc, "bias gradient"), e_fmt.scale[0]


def dense_weight_grad_samples(e: torch.Tensor, e_fmt: Affine, a: torch.Tensor, a_fmt: Affine,
                              rows: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """Each sample's ``dW = e_y a^T`` on its own: int32 accumulators ``[B, out, in]`` (zero outside
    ``rows``) and the real scale ``s_e s_a``. Summed over the batch they are ``dense_weight_grad``'s;
    the int16 block-float buffer (``blockfloat``) adds them one sample at a time."""
    ec, ac = _centred(e, e_fmt), _centred(a, a_fmt)
    acc = torch.zeros(ec.shape[0], ec.shape[1], ac.shape[1], dtype=torch.float64)
    if rows is None:
        acc = ec.unsqueeze(2) * ac.unsqueeze(1)
    elif rows.numel():
        acc[:, rows] = ec[:, rows].unsqueeze(2) * ac.unsqueeze(1)
    return _acc32(acc, "dense weight gradient of one sample"), e_fmt.scale[0] * a_fmt.scale[0]


def bias_grad_samples(e: torch.Tensor, e_fmt: Affine, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """Each sample's ``db`` (its error summed over positions per output channel): int32 ``[B, out]``
    (zero outside ``rows``) and ``s_e``; summed over the batch they are ``bias_grad``'s."""
    ec = _centred(e, e_fmt)
    acc = ec.reshape(ec.shape[0], ec.shape[1], -1).sum(2)
    if rows is not None:
        keep = torch.zeros(acc.shape[1], dtype=torch.bool)
        keep[rows] = True
        acc = torch.where(keep, acc, torch.zeros_like(acc))
    return _acc32(acc, "bias gradient of one sample"), e_fmt.scale[0]


# -- convolution ----------------------------------------------------------------------------------------


def _as2d(t: torch.Tensor, conv1d: bool) -> torch.Tensor:
    return t.unsqueeze(2) if conv1d else t


def _geometry(stride, padding, conv1d: bool) -> tuple[tuple[int, int], tuple[int, int]]:
    if conv1d:
        return (1, int(stride)), (0, int(padding))
    return tuple(stride), tuple(padding)


def conv_input_grad(e: torch.Tensor, e_fmt: Affine, w: torch.Tensor, w_fmt: Affine, out_fmt: Affine,
                    in_shape: tuple[int, ...], stride, padding) -> torch.Tensor:
    """Transposed convolution of the raw output errors ``[B, C_out, ...]`` with the raw weights:
    raw input errors of shape ``(B, *in_shape)``. 2-D (``[C, H, W]``) or 1-D (``[C, L]``)."""
    return requant_error(*conv_input_acc(e, e_fmt, w, w_fmt, in_shape, stride, padding), out_fmt)


def conv_input_acc(e: torch.Tensor, e_fmt: Affine, w: torch.Tensor, w_fmt: Affine, in_shape: tuple[int, ...],
                   stride, padding) -> tuple[torch.Tensor, float]:
    """The int32 accumulator of ``conv_input_grad`` (shape ``(B, *in_shape)``) and its real scale."""
    _per_tensor(w_fmt, "the weight format")
    conv1d = w.ndim == 3
    st, pad = _geometry(stride, padding, conv1d)
    full = (e.shape[0], *in_shape)
    shape2d = full if not conv1d else (full[0], full[1], 1, full[2])
    acc = torch.nn.grad.conv2d_input(shape2d, _as2d(_centred(w, w_fmt), conv1d), _as2d(_centred(e, e_fmt), conv1d),
                                     stride=st, padding=pad)
    return _acc32(acc.reshape(full), "convolution input gradient"), e_fmt.scale[0] * w_fmt.scale[0]


def _conv_grad_operands(e: torch.Tensor, e_fmt: Affine, a: torch.Tensor, a_fmt: Affine, kernel: tuple[int, ...],
                        stride, padding) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred errors ``[B, C_out, P]`` and the unfolded zero-padded centred input ``[B, C_in*k, P]``."""
    conv1d = len(kernel) == 1
    st, pad = _geometry(stride, padding, conv1d)
    k2 = (1, kernel[0]) if conv1d else tuple(kernel)
    ec = _as2d(_centred(e, e_fmt), conv1d)
    cols = F.unfold(_as2d(_centred(a, a_fmt), conv1d), k2, padding=pad, stride=st)
    return ec.flatten(2), cols


def conv_weight_grad(e: torch.Tensor, e_fmt: Affine, a: torch.Tensor, a_fmt: Affine, kernel: tuple[int, ...],
                     stride, padding, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """``dW`` of a convolution as an int32 accumulator ``[C_out, C_in, *kernel]`` (zero outside
    ``rows``) and its real scale: the correlation of the zero-padded centred input with the errors."""
    ec, cols = _conv_grad_operands(e, e_fmt, a, a_fmt, kernel, stride, padding)
    c_out = ec.shape[1]
    acc = torch.zeros(c_out, cols.shape[1], dtype=torch.float64)
    if rows is None:
        acc = torch.einsum("bop,bkp->ok", ec, cols)
    elif rows.numel():
        acc[rows] = torch.einsum("bop,bkp->ok", ec[:, rows], cols)
    shape = (c_out, a.shape[1], *kernel)
    return _acc32(acc.reshape(shape), "convolution weight gradient"), e_fmt.scale[0] * a_fmt.scale[0]


def conv_weight_grad_samples(e: torch.Tensor, e_fmt: Affine, a: torch.Tensor, a_fmt: Affine, kernel: tuple[int, ...],
                             stride, padding, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """Each sample's convolution ``dW`` on its own: int32 accumulators ``[B, C_out, C_in, *kernel]``
    (zero outside ``rows``) and the real scale; summed over the batch they are ``conv_weight_grad``'s
    (the same correlation with the batch axis kept: ``bop,bkp->bok``)."""
    ec, cols = _conv_grad_operands(e, e_fmt, a, a_fmt, kernel, stride, padding)
    b, c_out = ec.shape[0], ec.shape[1]
    acc = torch.zeros(b, c_out, cols.shape[1], dtype=torch.float64)
    if rows is None:
        acc = torch.einsum("bop,bkp->bok", ec, cols)
    elif rows.numel():
        acc[:, rows] = torch.einsum("bop,bkp->bok", ec[:, rows], cols)
    shape = (b, c_out, a.shape[1], *kernel)
    return _acc32(acc.reshape(shape), "convolution weight gradient of one sample"), e_fmt.scale[0] * a_fmt.scale[0]


# -- element-wise and pooling -----------------------------------------------------------------------------


def saturation_grad(e: torch.Tensor, e_fmt: Affine, out_q: torch.Tensor, out_fmt: Affine) -> torch.Tensor:
    """Zero the error (``z_e``) where the layer's raw output sits at an end of its range and the error
    would push it further out: at ``raw_max`` with a negative error (descent raises the output) and at
    ``raw_min`` with a positive one. The requantization clamps there, so that step would be lost, and
    following it anyway grows the weights without bound (our variant of the clipped straight-through
    estimator: unlike the plain one it keeps the error that brings a saturated output back in range)."""
    ec = e.to(torch.int64) - e_fmt.zero_point[0]
    out = (ec < 0) & (out_q >= out_fmt.raw_max) | (ec > 0) & (out_q <= out_fmt.raw_min)
    return torch.where(out, torch.full_like(e, e_fmt.zero_point[0]), e)


def relu_grad(e: torch.Tensor, e_fmt: Affine, out_q: torch.Tensor, act_fmt) -> torch.Tensor:
    """Pass the error where the ReLU's raw output is above its zero point, else zero error (``z_e``)."""
    if isinstance(act_fmt, Affine):
        _per_tensor(act_fmt, "the activation format")
    _per_tensor(e_fmt, "the error format")
    z_act = act_fmt.zero_point[0] if isinstance(act_fmt, Affine) else 0
    return torch.where(out_q > z_act, e, torch.full_like(e, e_fmt.zero_point[0]))


def maxpool_grad(e: torch.Tensor, e_fmt: Affine, a_q: torch.Tensor, kernel: tuple[int, ...],
                 stride: tuple[int, ...]) -> torch.Tensor:
    """Route each window's error to its first maximum (scan order) of the raw input ``a_q``; every
    other input position gets zero error. Windows must not overlap (``stride >= kernel``)."""
    if any(s < k for s, k in zip(stride, kernel, strict=True)):
        raise ValueError(f"maxpool_grad needs non-overlapping windows, got kernel {kernel} stride {stride}")
    conv1d = len(kernel) == 1
    k2 = (1, kernel[0]) if conv1d else tuple(kernel)
    s2 = (1, stride[0]) if conv1d else tuple(stride)
    a2 = _as2d(a_q.to(torch.float64), conv1d)
    cols = F.unfold(a2, k2, stride=s2)  # [B, C*k, P]
    b, c = a2.shape[0], a2.shape[1]
    k = k2[0] * k2[1]
    cols = cols.reshape(b, c, k, -1)
    first = cols.argmax(dim=2, keepdim=True)  # first maximum in scan order
    e_flat = _as2d(e, conv1d).reshape(b, c, 1, -1).to(torch.float64)
    z = float(e_fmt.zero_point[0])
    routed = torch.full_like(cols, z).scatter(2, first, e_flat)
    out = F.fold(routed.reshape(b, c * k, -1) - z, a2.shape[2:], k2, stride=s2) + z
    out = out.reshape(a_q.shape)
    return out.round().to(torch.int64)


def global_avg_pool_acc(e: torch.Tensor, e_fmt: Affine, in_shape: tuple[int, ...]) -> tuple[torch.Tensor, float]:
    """The centred errors ``[B, C]`` and their real scale ``s_e / positions`` (one per input position)."""
    positions = math.prod(in_shape[1:])
    return _centred(e, e_fmt).to(torch.int64), e_fmt.scale[0] / positions


def global_avg_pool_grad(e: torch.Tensor, e_fmt: Affine, in_shape: tuple[int, ...], out_fmt: Affine) -> torch.Tensor:
    """``e_a[c, p] = e[c] / positions`` for every position: raw ``[B, C]`` -> raw ``(B, *in_shape)``."""
    q = requant_error(*global_avg_pool_acc(e, e_fmt, in_shape), out_fmt)
    return q.reshape(*q.shape, *([1] * (len(in_shape) - 1))).expand(e.shape[0], *in_shape).clone()


# -- dynamic partial updates ------------------------------------------------------------------------------


def channel_error(e: torch.Tensor, e_fmt: Affine) -> torch.Tensor:
    """Mean |centred error| per output channel over batch and positions (float, ``[C]``)."""
    ec = _centred(e, e_fmt).abs()
    return ec.transpose(0, 1).reshape(ec.shape[1], -1).mean(1)


def dynamic_k(e_mean: float, e_max: float, n: int, lam_min: float, lam_max: float) -> int:
    """Structures to update: ``max(floor((lam_min + |e / e_max| (lam_max - lam_min)) n), 1)``
    (Deutel et al., eq. for dynamic partial updates). ``e_max = 0`` (nothing seen yet) gives ``lam_max``."""
    if not (0.0 <= lam_min <= lam_max <= 1.0):
        raise ValueError(f"need 0 <= lam_min <= lam_max <= 1, got {lam_min}, {lam_max}")
    ratio = 1.0 if e_max <= 0 else min(abs(e_mean / e_max), 1.0)
    # a hair above floor's edge: 0.7 * 0.1 * 100 is 6.999... in doubles and must give 7
    return max(math.floor((lam_min + ratio * (lam_max - lam_min)) * n + 1e-9), 1)


def sample_channel_error(e: torch.Tensor, e_fmt: Affine) -> torch.Tensor:
    """Mean |error| per sample and output channel over positions, in real units (float, ``[B, C]``):
    the exact integer sum of ``|e - z_e|``, divided by the positions, times the scale (in that
    order, so the C export gets the same doubles)."""
    sums, positions = sample_channel_abs_sum(e, e_fmt)
    return sums.to(torch.float64) / positions * e_fmt.scale[0]


def sample_channel_abs_sum(e: torch.Tensor, e_fmt: Affine) -> tuple[torch.Tensor, int]:
    """Exact integer sums of ``|e - z_e|`` per sample and output channel (int64 ``[B, C]``) and the
    number of positions each sum runs over."""
    _per_tensor(e_fmt, "an error format")
    ec = (e.to(torch.int64) - e_fmt.zero_point[0]).abs()
    return ec.reshape(ec.shape[0], ec.shape[1], -1).sum(2), math.prod(e.shape[2:])


def sample_error_level(e: torch.Tensor, e_fmt: Affine) -> torch.Tensor:
    """Each sample's mean |error| over channels and positions in real units (``[B]``): the exact
    integer total divided by ``channels * positions``, times the scale."""
    sums, positions = sample_channel_abs_sum(e, e_fmt)
    return sums.sum(1).to(torch.float64) / (positions * e.shape[1]) * e_fmt.scale[0]


def partial_mask(scores: torch.Tensor, e_max: float, lam_min: float, lam_max: float,
                 levels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Dynamic partial updates for a batch, one sample after another as the device does them.

    ``scores`` is ``[B, C]``: each sample's mean |error| per output channel (real units). Sample ``b``'s
    level is its mean over channels; the running maximum ``e_max`` takes it in first, then
    ``k_b = dynamic_k(level_b, e_max_b, C, lam_min, lam_max)`` channels with the largest scores are
    kept (ties keep the lower index). Returns the keep mask ``[B, C]``, ``k`` ``[B]`` and the new
    running maximum. ``levels`` (``[B]``) replaces the mean of the scores as each sample's level
    (the uint8 backward passes ``sample_error_level``, computed from exact integer sums).
    """
    scores = scores.to(torch.float64)
    b, c = scores.shape
    if levels is None:
        levels = scores.mean(1) if c else torch.zeros(b, dtype=torch.float64)
    levels = levels.to(torch.float64)
    running = torch.cummax(torch.cat([torch.tensor([float(e_max)], dtype=torch.float64), levels]), 0).values[1:]
    if not (0.0 <= lam_min <= lam_max <= 1.0):
        raise ValueError(f"need 0 <= lam_min <= lam_max <= 1, got {lam_min}, {lam_max}")
    # dynamic_k for every sample at once (same arithmetic, same guard at floor's edge)
    ratio = torch.where(running > 0, (levels / running.clamp_min(1e-300)).abs().clamp_max(1.0),
                        torch.ones_like(levels))
    k = torch.floor((lam_min + ratio * (lam_max - lam_min)) * c + 1e-9).to(torch.int64).clamp_min(1)
    order = torch.argsort(-scores, dim=1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(c).expand(b, c).contiguous())
    new_max = float(running[-1]) if b else float(e_max)
    return rank < k.unsqueeze(1), k, new_max


def prune_error_per_sample(e: torch.Tensor, e_fmt: Affine, keep: torch.Tensor) -> torch.Tensor:
    """Zero error (``z_e``) wherever ``keep`` (``[B, C]``) is False."""
    view = list(keep.shape) + [1] * (e.ndim - 2)
    return torch.where(keep.reshape(view), e, torch.full_like(e, e_fmt.zero_point[0]))


def top_k_rows(e: torch.Tensor, e_fmt: Affine, k: int) -> torch.Tensor:
    """Indices (ascending) of the ``k`` output channels with the largest mean |error|; ties keep the
    lower index."""
    score = channel_error(e, e_fmt)
    k = max(1, min(int(k), score.numel()))
    order = torch.argsort(-score, stable=True)[:k]
    return torch.sort(order).values


def prune_error(e: torch.Tensor, e_fmt: Affine, rows: torch.Tensor) -> torch.Tensor:
    """Zero error (``z_e``) for every output channel not in ``rows``: their backward work is skipped."""
    keep = torch.zeros(e.shape[1], dtype=torch.bool)
    keep[rows] = True
    return prune_error_per_sample(e, e_fmt, keep.expand(e.shape[0], -1))


__all__ = ["ACC_MAX", "ACC_MIN", "bias_grad", "bias_grad_samples", "channel_error", "conv_input_acc",
           "conv_input_grad", "conv_weight_grad", "conv_weight_grad_samples", "dense_input_acc", "dense_input_grad",
           "dense_weight_grad", "dense_weight_grad_samples", "dynamic_k",
           "error_format", "global_avg_pool_acc", "global_avg_pool_grad", "maxpool_grad", "partial_mask",
           "prune_error", "prune_error_per_sample", "quantize_error", "relu_grad", "requant_error", "saturation_grad",
           "sample_channel_abs_sum", "sample_channel_error", "sample_error_level", "softmax_ce_error",
           "softmax_minus_onehot", "softmax_minus_onehot_table", "exp_table", "top_k_rows"]

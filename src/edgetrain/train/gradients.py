"""Per-sample gradients of the deployed network, from the integer forward's own activations.

Methods that learn by gradient on a device whose forward is integer (low-rank accumulation, SGD on
stored 8-bit weights) need, for every dense or convolution layer, the error ``dz`` at its output and
the input it saw. Here the forward is the integer-exact one (``forward_int`` with a trace, what the
device computed), and the backward runs in float on the dequantized activations and weights, treating
every requantization as the identity (the straight-through estimator of quantization-aware training;
Gural et al., arXiv 2009.03887, train their 8-bit networks the same way).

For one sample the weight gradient of layer ``l`` is ``sum_p dz[:, p] a[:, p]^T``: one rank-1 term
per output position ``p`` (a dense layer has one position). :class:`LayerGrad` keeps the factors, not
the product, so a Kronecker-sum accumulator can take the terms as they are.

Loss: softmax cross-entropy on the real-valued logits, summed over the batch (each sample's gradient
is its own: nothing is averaged).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..model import DeployedModel
from ..model.forward import ForwardTrace, forward_int
from ..model.layers import Conv1d, Conv2d, Dense, Flatten, GlobalAvgPool, MaxPool, ReLU
from ..quant import dequantize, zero_point_of

LINEAR = (Dense, Conv2d, Conv1d)


@dataclass(frozen=True)
class LayerGrad:
    """Gradient factors of deployed layer ``index`` for a batch of ``B`` samples.

    ``dz`` is ``[B, n, P]`` (error at the layer's output, ``n`` outputs or channels, ``P`` positions)
    and ``a`` is ``[B, m, P]`` (the matching input patches, ``m`` = inputs x kernel size), so that the
    weight gradient of sample ``b`` is ``dz[b] @ a[b].T`` reshaped to the weight's shape, and the bias
    gradient is ``dz[b].sum(-1)``.
    """

    index: int
    dz: torch.Tensor
    a: torch.Tensor

    def weight_grad(self) -> torch.Tensor:
        """``[B, n, m]``: each sample's weight gradient as a matrix."""
        return self.dz @ self.a.transpose(1, 2)

    def bias_grad(self) -> torch.Tensor:
        """``[B, n]``."""
        return self.dz.sum(-1)


def _real(raw: torch.Tensor, fmt, dtype: torch.dtype) -> torch.Tensor:
    return dequantize(raw, fmt).to(dtype)


def _patches(layer: Conv2d | Conv1d, a: torch.Tensor) -> torch.Tensor:
    """im2col: ``[B, C, H, W]`` (or ``[B, C, L]``) -> ``[B, C*kernel, positions]``."""
    if isinstance(layer, Conv1d):
        return F.unfold(a.unsqueeze(2), (1, layer.weight.shape[2]), padding=(0, layer.padding),
                        stride=(1, layer.stride))
    return F.unfold(a, tuple(layer.weight.shape[2:]), padding=layer.padding, stride=layer.stride)


def _input_grad(layer: Dense | Conv2d | Conv1d, g: torch.Tensor, in_shape: torch.Size,
                w: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, Dense):
        return g @ w
    if isinstance(layer, Conv2d):
        return torch.nn.grad.conv2d_input(in_shape, w, g, stride=layer.stride, padding=layer.padding)
    return torch.nn.grad.conv1d_input(in_shape, w, g, stride=layer.stride, padding=layer.padding)


def backward_trace(
    model: DeployedModel,
    q: torch.Tensor,
    y: torch.Tensor,
    trace: ForwardTrace | None = None,
    layers: set[int] | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, list[LayerGrad]]:
    """Cross-entropy loss per sample ``[B]`` and the gradient factors of the dense/conv layers in
    ``layers`` (all of them if ``None``), lowest layer first.

    ``q`` is the raw integer input batch; ``trace`` is its ``forward_int(..., trace=True)`` (computed
    here, with 32-bit wrap-around, if not given). The backward stops below the lowest requested layer.
    """
    y = torch.as_tensor(y, dtype=torch.int64).reshape(-1)
    if trace is None:
        trace = forward_int(model, q, overflow="wrap", trace=True)
    if len(trace.outputs) != len(model.layers):
        raise ValueError(f"trace holds {len(trace.outputs)} layer outputs; the model has {len(model.layers)} layers")
    if y.shape[0] != q.shape[0]:
        raise ValueError(f"{q.shape[0]} inputs but {y.shape[0]} labels")
    linear = [i for i, lay in enumerate(model.layers) if isinstance(lay, LINEAR)]
    wanted = set(linear) if layers is None else set(layers)
    bad = sorted(wanted - set(linear))
    if bad:
        raise ValueError(f"layers {bad} are not dense or convolution layers; those are {linear}")
    n_cls = model.output_shape[0]
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_cls):
        raise ValueError(f"labels must lie in 0..{n_cls - 1}, got {int(y.min())}..{int(y.max())}")
    logits = _real(trace.outputs[-1], model.output_fmt, dtype)
    loss = F.cross_entropy(logits, y, reduction="none")
    g = torch.softmax(logits, dim=1)
    g[torch.arange(y.shape[0]), y] -= 1.0
    lowest = min(wanted) if wanted else len(model.layers)
    grads: list[LayerGrad] = []
    for i in range(len(model.layers) - 1, lowest - 1, -1):
        layer = model.layers[i]
        raw_in = q if i == 0 else trace.outputs[i - 1]
        if isinstance(layer, LINEAR):
            a_in = _real(raw_in, layer.in_fmt, dtype)
            if i in wanted:
                if isinstance(layer, Dense):
                    grads.append(LayerGrad(i, g.unsqueeze(2), a_in.unsqueeze(2)))
                else:
                    grads.append(LayerGrad(i, g.flatten(2), _patches(layer, a_in)))
            if i > lowest:
                g = _input_grad(layer, g, a_in.shape, _real(layer.weight, layer.w_fmt, dtype))
        elif isinstance(layer, ReLU):
            g = g * (trace.outputs[i] > zero_point_of(layer.fmt)).to(dtype)
        elif isinstance(layer, MaxPool):
            a_in = raw_in.to(dtype)
            if len(layer.kernel) == 2:
                _, idx = F.max_pool2d(a_in, layer.kernel, layer.stride, return_indices=True)
                g = F.max_unpool2d(g, idx, layer.kernel, layer.stride, output_size=a_in.shape[-2:])
            else:
                _, idx = F.max_pool1d(a_in, layer.kernel[0], layer.stride[0], return_indices=True)
                g = F.max_unpool1d(g, idx, layer.kernel[0], layer.stride[0], output_size=a_in.shape[-1:])
        elif isinstance(layer, GlobalAvgPool):
            shape = raw_in.shape
            positions = 1
            for d in shape[2:]:
                positions *= d
            g = (g / positions).reshape(*g.shape, *([1] * (len(shape) - 2))).expand(shape)
        elif isinstance(layer, Flatten):
            g = g.reshape(raw_in.shape)
        else:
            raise TypeError(f"no backward for layer type {type(layer).__name__}")
    grads.reverse()
    return loss, grads


__all__ = ["LINEAR", "LayerGrad", "backward_trace"]

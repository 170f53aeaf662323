"""``DeployedModel`` -> float ``torch.nn.Sequential``: the deployed network as an ordinary,
differentiable PyTorch module, for float references (backprop fine-tuning of the same layers).

The mapping is one module per deployed layer, in the same order, so deployed layer ``i`` is module
``i`` and the deployed parameter ``"i.weight"`` is exactly the float net's ``"i.weight"`` (the
name ``net.named_parameters()`` gives it). Parameters are the dequantized stored values and
activations are never rounded, so in float64 the net computes what
:func:`~edgetrain.model.forward.forward_float` computes.
"""

from __future__ import annotations

import torch
from torch import nn

from ..quant import dequantize
from .deployed import DeployedModel
from .layers import Conv1d, Conv2d, Dense, Flatten, GlobalAvgPool, Layer, MaxPool, ReLU


class GlobalAvgPoolFloat(nn.Module):
    """Mean over every position after the channel axis: ``[N, C, ...] -> [N, C]``.

    One module (rather than an adaptive pool followed by a flatten) keeps the one-module-per-layer
    correspondence with the deployed model.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).mean(dim=2)


def _linear_module(layer: Dense | Conv2d | Conv1d, dtype: torch.dtype) -> nn.Module:
    """A float Linear/Conv holding the layer's dequantized weight and bias."""
    w = dequantize(layer.weight, layer.w_fmt)
    b = dequantize(layer.bias, layer.b_fmt).reshape(-1)
    if isinstance(layer, Dense):
        module: nn.Module = nn.Linear(w.shape[1], w.shape[0], dtype=dtype)
    elif isinstance(layer, Conv2d):
        module = nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), stride=layer.stride,
                           padding=layer.padding, dtype=dtype)
    else:
        module = nn.Conv1d(w.shape[1], w.shape[0], w.shape[2], stride=layer.stride, padding=layer.padding,
                           dtype=dtype)
    with torch.no_grad():
        module.weight.copy_(w.to(dtype))
        module.bias.copy_(b.to(dtype))
    return module


def layer_to_module(layer: Layer, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The float module computing ``layer`` (with dequantized parameters, in ``dtype``)."""
    if isinstance(layer, (Dense, Conv2d, Conv1d)):
        return _linear_module(layer, dtype)
    if isinstance(layer, ReLU):
        return nn.ReLU()
    if isinstance(layer, MaxPool):
        if len(layer.kernel) == 2:
            return nn.MaxPool2d(tuple(layer.kernel), tuple(layer.stride))
        return nn.MaxPool1d(layer.kernel[0], layer.stride[0])
    if isinstance(layer, GlobalAvgPool):
        return GlobalAvgPoolFloat()
    if isinstance(layer, Flatten):
        return nn.Flatten()
    raise TypeError(f"unknown layer type {type(layer).__name__}")


def to_float_net(model: DeployedModel, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """A float network equal to ``model``'s float reference, one module per deployed layer.

    ``dtype`` is the parameter dtype (float32 for training; float64 reproduces
    ``forward_float`` to rounding error). The net is returned in eval mode; it has no layer whose
    behaviour depends on the mode.
    """
    if not dtype.is_floating_point:
        raise TypeError(f"to_float_net needs a floating dtype, got {dtype}")
    net = nn.Sequential(*(layer_to_module(layer, dtype) for layer in model.layers))
    return net.eval()


__all__ = ["GlobalAvgPoolFloat", "layer_to_module", "to_float_net"]

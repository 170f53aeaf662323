"""The deployed network's layers: plain frozen dataclasses of raw integer tensors and formats.

Each layer holds exactly what an inference engine (or generated C, or an hls4ml-style FPGA core)
needs: static shapes, raw integer parameters (int64 tensors holding values of the stated format)
and the number format of its input, parameters and output. Layouts follow PyTorch: activations are
``[N, C, H, W]`` (2-D) or ``[N, C, L]`` (1-D); dense weights ``[out, in]``; conv weights
``[out, in, kh, kw]`` / ``[out, in, k]``. Nothing here computes; see ``forward.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..quant import Format


@dataclass(frozen=True, eq=False)
class Dense:
    """``y = W x + b`` then requantize to ``out_fmt``. Weight ``[out, in]``, bias ``[out]``."""

    weight: torch.Tensor
    bias: torch.Tensor
    in_fmt: Format
    w_fmt: Format
    b_fmt: Format
    out_fmt: Format
    kind: ClassVar[str] = "dense"
    params: ClassVar[tuple[str, ...]] = ("weight", "bias")

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(in_shape) != 1 or in_shape[0] != self.weight.shape[1]:
            raise ValueError(f"dense layer expects input shape ({self.weight.shape[1]},), got {in_shape}")
        return (self.weight.shape[0],)


@dataclass(frozen=True, eq=False)
class Conv2d:
    """2-D convolution (cross-correlation, as PyTorch), zero padding, then requantize."""

    weight: torch.Tensor
    bias: torch.Tensor
    in_fmt: Format
    w_fmt: Format
    b_fmt: Format
    out_fmt: Format
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    kind: ClassVar[str] = "conv2d"
    params: ClassVar[tuple[str, ...]] = ("weight", "bias")

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        c_out, c_in, kh, kw = self.weight.shape
        if len(in_shape) != 3 or in_shape[0] != c_in:
            raise ValueError(f"conv2d layer expects input shape ({c_in}, H, W), got {in_shape}")
        h = (in_shape[1] + 2 * self.padding[0] - kh) // self.stride[0] + 1
        w = (in_shape[2] + 2 * self.padding[1] - kw) // self.stride[1] + 1
        if h < 1 or w < 1:
            raise ValueError(f"conv2d kernel {kh}x{kw} does not fit input {in_shape}")
        return (c_out, h, w)


@dataclass(frozen=True, eq=False)
class Conv1d:
    """1-D convolution (cross-correlation), zero padding, then requantize."""

    weight: torch.Tensor
    bias: torch.Tensor
    in_fmt: Format
    w_fmt: Format
    b_fmt: Format
    out_fmt: Format
    stride: int = 1
    padding: int = 0
    kind: ClassVar[str] = "conv1d"
    params: ClassVar[tuple[str, ...]] = ("weight", "bias")

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        c_out, c_in, k = self.weight.shape
        if len(in_shape) != 2 or in_shape[0] != c_in:
            raise ValueError(f"conv1d layer expects input shape ({c_in}, L), got {in_shape}")
        length = (in_shape[1] + 2 * self.padding - k) // self.stride + 1
        if length < 1:
            raise ValueError(f"conv1d kernel {k} does not fit input {in_shape}")
        return (c_out, length)


@dataclass(frozen=True, eq=False)
class ReLU:
    """``max(x, 0)`` in the input's format (for affine formats: ``max(q, zero_point)``)."""

    fmt: Format
    kind: ClassVar[str] = "relu"
    params: ClassVar[tuple[str, ...]] = ()

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        return in_shape

    @property
    def in_fmt(self) -> Format:
        return self.fmt

    @property
    def out_fmt(self) -> Format:
        return self.fmt


@dataclass(frozen=True, eq=False)
class MaxPool:
    """Max pooling over 1-D (``kernel=(k,)``) or 2-D (``kernel=(kh, kw)``) windows, no padding."""

    fmt: Format
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    kind: ClassVar[str] = "maxpool"
    params: ClassVar[tuple[str, ...]] = ()

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        d = len(self.kernel)
        if len(in_shape) != d + 1:
            raise ValueError(f"{d}-D max pool expects a ({d + 1})-D input shape, got {in_shape}")
        sp = tuple((n - k) // s + 1 for n, k, s in zip(in_shape[1:], self.kernel, self.stride, strict=True))
        if min(sp) < 1:
            raise ValueError(f"max pool window {self.kernel} does not fit input {in_shape}")
        return (in_shape[0], *sp)

    @property
    def in_fmt(self) -> Format:
        return self.fmt

    @property
    def out_fmt(self) -> Format:
        return self.fmt


@dataclass(frozen=True, eq=False)
class GlobalAvgPool:
    """Mean over all spatial positions: an exact integer sum, then requantize by ``1/positions``."""

    in_fmt: Format
    out_fmt: Format
    kind: ClassVar[str] = "globalavgpool"
    params: ClassVar[tuple[str, ...]] = ()

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(in_shape) < 2:
            raise ValueError(f"global average pool expects (C, ...spatial) input, got {in_shape}")
        return (in_shape[0],)


@dataclass(frozen=True, eq=False)
class Flatten:
    """Flatten ``[N, C, ...]`` to ``[N, C * ...]`` in PyTorch (channel-major) order."""

    fmt: Format
    kind: ClassVar[str] = "flatten"
    params: ClassVar[tuple[str, ...]] = ()

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        n = 1
        for d in in_shape:
            n *= d
        return (n,)

    @property
    def in_fmt(self) -> Format:
        return self.fmt

    @property
    def out_fmt(self) -> Format:
        return self.fmt


Layer = Dense | Conv2d | Conv1d | ReLU | MaxPool | GlobalAvgPool | Flatten
LAYER_TYPES: dict[str, type] = {
    cls.kind: cls for cls in (Dense, Conv2d, Conv1d, ReLU, MaxPool, GlobalAvgPool, Flatten)
}

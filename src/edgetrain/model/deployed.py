"""``DeployedModel``: the network as it sits on the device, an ordered tuple of layers.

It is immutable: a trainer that changes weights returns a new model (``with_param``), so a step is
``model -> model`` and nothing is updated behind the caller's back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from ..quant import Format, in_range
from .layers import Layer


@dataclass(frozen=True, eq=False)
class DeployedModel:
    """A quantized network: input shape (without batch), input format, layers, and metadata
    (``arch``, ``dataset``, ``classes``, training notes) as a JSON-able dict."""

    input_shape: tuple[int, ...]
    input_fmt: Format
    layers: tuple[Layer, ...]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        object.__setattr__(self, "layers", tuple(self.layers))
        self.shapes()  # validates that the layer chain is consistent

    def shapes(self) -> list[tuple[int, ...]]:
        """Activation shapes (without batch): ``[input, after layer 0, after layer 1, ...]``."""
        shapes = [self.input_shape]
        for i, layer in enumerate(self.layers):
            try:
                shapes.append(layer.out_shape(shapes[-1]))
            except ValueError as e:
                raise ValueError(f"layer {i} ({layer.kind}): {e}") from None
        return shapes

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.shapes()[-1]

    @property
    def output_fmt(self) -> Format:
        return self.layers[-1].out_fmt if self.layers else self.input_fmt

    def params(self) -> Iterator[tuple[str, torch.Tensor, Format]]:
        """Every stored parameter as ``(name, raw int64 tensor, format)``; names are
        ``"<layer index>.<weight|bias>"``."""
        for i, layer in enumerate(self.layers):
            for p in layer.params:
                fmt = layer.w_fmt if p == "weight" else layer.b_fmt
                yield f"{i}.{p}", getattr(layer, p), fmt

    def param(self, name: str) -> tuple[torch.Tensor, Format]:
        for n, t, f in self.params():
            if n == name:
                return t, f
        raise KeyError(f"model has no parameter {name!r}; it has {[n for n, _, _ in self.params()]}")

    def with_param(self, name: str, raw: torch.Tensor) -> DeployedModel:
        """A new model with parameter ``name`` replaced by ``raw`` (same shape, in range)."""
        old, fmt = self.param(name)
        raw = torch.as_tensor(raw)
        if raw.shape != old.shape:
            raise ValueError(f"parameter {name}: expected shape {tuple(old.shape)}, got {tuple(raw.shape)}")
        if raw.is_floating_point():
            raise TypeError(f"parameter {name}: raw values must be integers, got {raw.dtype}")
        raw = raw.to(torch.int64)
        if not in_range(raw, fmt):
            raise ValueError(f"parameter {name}: values outside the range of {fmt.name} "
                             f"[{fmt.raw_min}, {fmt.raw_max}]")
        idx, p = name.split(".")
        layers = list(self.layers)
        layers[int(idx)] = dataclasses.replace(layers[int(idx)], **{p: raw})
        return dataclasses.replace(self, layers=tuple(layers))

    def with_params(self, updates: dict[str, torch.Tensor]) -> DeployedModel:
        model = self
        for name, raw in updates.items():
            model = model.with_param(name, raw)
        return model

    def num_params(self) -> int:
        return sum(t.numel() for _, t, _ in self.params())

    def describe(self) -> list[dict]:
        """One row per layer: kind, output shape, parameter count and formats (for tables)."""
        rows = []
        shapes = self.shapes()
        for i, layer in enumerate(self.layers):
            n = sum(getattr(layer, p).numel() for p in layer.params)
            rows.append({"index": i, "kind": layer.kind, "out_shape": shapes[i + 1], "params": n,
                         "in_fmt": layer.in_fmt.name, "out_fmt": layer.out_fmt.name})
        return rows

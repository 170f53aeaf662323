"""Which parameters a trainer may change: ``"last"``, ``"last:2"``, ``"bias"``, ``"bias:last:2"``,
``"all"`` or explicit names / layer indices (``"5"``, ``"3.bias,5"``).

Layers are counted among those that *have* parameters (dense and convolution layers), so
``last:2`` of the ``mlp`` means its two last dense layers whatever ReLU/Flatten sit between them.
"""

from __future__ import annotations

from ..model import DeployedModel


def trainable_layers(model: DeployedModel) -> list[int]:
    """Indices of the layers that hold parameters, in order."""
    return [i for i, layer in enumerate(model.layers) if layer.params]


def select_params(model: DeployedModel, spec: str) -> tuple[str, ...]:
    """Parameter names (in model order) picked by ``spec``; see the module docstring."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"trained-parameter spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    names = [n for n, _, _ in model.params()]
    layers = trainable_layers(model)
    bias_only = spec == "bias" or spec.startswith("bias:")
    rest = spec[len("bias:"):] if spec.startswith("bias:") else ("all" if spec == "bias" else spec)
    if rest == "all":
        chosen = set(layers)
    elif rest == "last" or rest.startswith("last:"):
        k_s = rest[len("last:"):] if rest.startswith("last:") else "1"
        try:
            k = int(k_s)
        except ValueError:
            raise ValueError(f"trained-parameter spec {spec!r}: 'last:K' needs an integer K, got {k_s!r}") from None
        if not 1 <= k <= len(layers):
            raise ValueError(f"trained-parameter spec {spec!r}: K must be in 1..{len(layers)} "
                             f"(the model has {len(layers)} layers with parameters)")
        chosen = set(layers[-k:])
    else:
        picked: list[str] = []
        for item in (s.strip() for s in rest.split(",")):
            if item.isdigit():
                idx = int(item)
                if idx not in layers:
                    raise ValueError(f"trained-parameter spec {spec!r}: layer {idx} has no parameters; "
                                     f"layers with parameters: {layers}")
                picked += [n for n in names if n.split(".")[0] == item]
            elif item in names:
                picked.append(item)
            else:
                raise ValueError(f"trained-parameter spec {spec!r}: unknown item {item!r}; expected "
                                 f"'last', 'last:K', 'bias', 'all', a layer index in {layers} or one of {names}")
        chosen_names = [n for n in names if n in set(picked)]
        if bias_only:
            chosen_names = [n for n in chosen_names if n.endswith(".bias")]
        return tuple(chosen_names)
    out = [n for n in names if int(n.split(".")[0]) in chosen]
    if bias_only:
        out = [n for n in out if n.endswith(".bias")]
    return tuple(out)

"""Float ``torch.nn.Sequential`` -> :class:`DeployedModel`, as an ordered list of small passes.

1. :func:`drop_noops`: remove modules that are the identity at inference (Dropout, Identity).
2. :func:`fold_batchnorm`: fold each BatchNorm into the Linear/Conv before it
   (``w' = w * g / sqrt(v + eps)``, ``b' = (b - mu) * g / sqrt(v + eps) + beta``; Jacob et al. 2018,
   sec. 3.2), so the deployed network has no normalization layer.
3. :func:`calibrate`: run calibration data through the folded float network and record each
   tensor's range.
4. :func:`quantize_modules`: choose formats (``scheme.py``) and quantize the parameters.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from ..quant import Affine, FixedPoint, Format, affine_from_range, dequantize, quantize, round_real
from .deployed import DeployedModel
from .layers import Conv1d, Conv2d, Dense, Flatten, GlobalAvgPool, Layer, MaxPool, ReLU
from .scheme import FixedScheme, Scheme, parse_scheme

NOOPS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity)
SUPPORTED = (nn.Linear, nn.Conv2d, nn.Conv1d, nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d,
             nn.MaxPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool1d, nn.Flatten)
LINEAR = (nn.Linear, nn.Conv2d, nn.Conv1d)


@dataclass
class ConversionReport:
    """What conversion did and what it cost in range: per tensor, the calibration range and the
    fraction of values outside the chosen format (which wrap or saturate on the device)."""

    scheme: str
    rows: list[dict] = field(default_factory=list)

    def worst_out_of_range(self) -> float:
        return max((r["out_of_range"] for r in self.rows), default=0.0)


def _check_modules(net: nn.Sequential) -> list[nn.Module]:
    if not isinstance(net, nn.Sequential):
        raise TypeError(f"convert() takes a torch.nn.Sequential, got {type(net).__name__}")
    mods = []
    for i, m in enumerate(net):
        if isinstance(m, nn.Sequential):
            mods.extend(_check_modules(m))
        elif isinstance(m, NOOPS) or isinstance(m, SUPPORTED):
            mods.append(m)
        else:
            raise TypeError(f"module {i} ({type(m).__name__}) is not supported; supported: "
                            f"{', '.join(t.__name__ for t in SUPPORTED)}")
    return mods


def drop_noops(mods: list[nn.Module]) -> list[nn.Module]:
    """Pass 1: drop modules that do nothing at inference."""
    return [m for m in mods if not isinstance(m, NOOPS)]


def fold_batchnorm(mods: list[nn.Module]) -> list[nn.Module]:
    """Pass 2: fold every BatchNorm into the Linear/Conv directly before it (new modules)."""
    out: list[nn.Module] = []
    for i, m in enumerate(mods):
        if not isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            out.append(m)
            continue
        if not out or not isinstance(out[-1], LINEAR):
            raise ValueError(f"batch norm at position {i} does not follow a Linear/Conv layer; "
                             "only batch norm directly after one can be folded")
        prev = out.pop()
        if m.running_mean is None or m.running_var is None:
            raise ValueError(f"batch norm at position {i} has no running statistics to fold")
        with torch.no_grad():
            g = (m.weight if m.affine else torch.ones_like(m.running_var)) / torch.sqrt(m.running_var + m.eps)
            beta = m.bias if m.affine else torch.zeros_like(m.running_mean)
            b = prev.bias if prev.bias is not None else torch.zeros_like(m.running_mean)
            folded = _clone_with_bias(prev)
            folded.weight.copy_(prev.weight * g.reshape([-1] + [1] * (prev.weight.ndim - 1)))
            folded.bias.copy_((b - m.running_mean) * g + beta)
        out.append(folded)
    return out


def _clone_with_bias(m: nn.Module) -> nn.Module:
    if isinstance(m, nn.Linear):
        c = nn.Linear(m.in_features, m.out_features, bias=True)
    else:
        cls = type(m)
        c = cls(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                dilation=m.dilation, groups=m.groups, padding_mode=m.padding_mode, bias=True)
    return c.to(torch.float64)


def _validate_module(m: nn.Module, i: int) -> None:
    if isinstance(m, (nn.Conv2d, nn.Conv1d)):
        if m.groups != 1 or any(d != 1 for d in m.dilation) or m.padding_mode != "zeros":
            raise ValueError(f"conv at position {i}: only groups=1, dilation=1, zero padding are supported")
        if isinstance(m.padding, str):
            raise ValueError(f"conv at position {i}: give padding as integers, not {m.padding!r}")
    if isinstance(m, (nn.MaxPool2d, nn.MaxPool1d)):
        pads = m.padding if isinstance(m.padding, tuple) else (m.padding,)
        dil = m.dilation if isinstance(m.dilation, tuple) else (m.dilation,)
        if any(pads) or any(d != 1 for d in dil) or m.ceil_mode:
            raise ValueError(f"max pool at position {i}: padding, dilation and ceil_mode are not supported")
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool1d)):
        size = m.output_size if isinstance(m.output_size, tuple) else (m.output_size,)
        if any(s != 1 for s in size):
            raise ValueError(f"adaptive average pool at position {i}: only output size 1 (global) "
                             "is supported")
    if isinstance(m, nn.Flatten) and m.start_dim != 1:
        raise ValueError(f"flatten at position {i}: only start_dim=1 is supported")


def calibrate(mods: list[nn.Module], x: torch.Tensor, relu_fused: bool = False) -> list[torch.Tensor]:
    """Pass 3: the input and every module's output on the calibration batch (float64).

    With ``relu_fused`` (affine schemes) the output of a Linear/Conv followed by ReLU is replaced by
    the ReLU's: the requantization clamp then implements the ReLU and no codes go to negatives.
    Fixed-point formats keep the pre-ReLU range, since a wrapped negative would pass the ReLU.
    """
    if not torch.isfinite(x).all():
        raise ValueError("calibration data contains non-finite values")
    acts = [x.to(torch.float64)]
    with torch.no_grad():
        for m in mods:
            acts.append(m.to(torch.float64)(acts[-1]))
            if not torch.isfinite(acts[-1]).all():
                raise ValueError(f"non-finite activations after {type(m).__name__} during calibration")
    for i, m in enumerate(mods[:-1]):
        if relu_fused and isinstance(m, LINEAR) and isinstance(mods[i + 1], nn.ReLU):
            acts[i + 1] = acts[i + 2]
    return acts


def _act_format(scheme: Scheme, lo: float, hi: float) -> Format:
    if isinstance(scheme, FixedScheme):
        return scheme.fmt
    return affine_from_range(lo, hi, bits=scheme.bits, signed=scheme.signed)


def _weight_format(scheme: Scheme, w: torch.Tensor) -> Format:
    if isinstance(scheme, FixedScheme):
        return scheme.fmt
    if scheme.per_channel_weights:
        flat = w.reshape(w.shape[0], -1)
        return affine_from_range(flat.min(1).values, flat.max(1).values, bits=scheme.bits,
                                 signed=True, symmetric=True, axis=0)
    return affine_from_range(float(w.min()), float(w.max()), bits=scheme.bits, signed=scheme.signed)


def _bias_format(scheme: Scheme, in_fmt: Format, w_fmt: Format) -> Format:
    if isinstance(scheme, FixedScheme):
        return scheme.fmt
    scales = tuple(in_fmt.scale[0] * s for s in w_fmt.scale)
    return Affine(32, True, scales, (0,) * len(scales), axis=0 if len(scales) > 1 else None)


def _out_of_range(x: torch.Tensor, fmt: Format) -> float:
    """Fraction of real values ``x`` that ``fmt`` cannot hold after its own rounding (they would
    wrap or saturate on the device)."""
    if not x.numel():
        return 0.0
    if isinstance(fmt, FixedPoint):
        q = round_real(x * 2.0**fmt.frac_bits, fmt.rounding)
    else:
        q = round_real(x / fmt.scale_tensor(x.ndim), fmt.rounding) + fmt.zero_point_tensor(x.ndim)
    return float(((q < fmt.raw_min) | (q > fmt.raw_max)).double().mean())


def quantize_modules(
    mods: list[nn.Module], scheme: Scheme, acts: list[torch.Tensor], report: ConversionReport,
) -> tuple[Format, list[Layer]]:
    """Pass 4: deployed layers with quantized parameters and chosen formats."""
    in_fmt = _act_format(scheme, float(acts[0].min()), float(acts[0].max()))
    report.rows.append(_row(-1, None, "input", acts[0], in_fmt))
    input_fmt = in_fmt
    layers: list[Layer] = []
    for i, m in enumerate(mods):
        _validate_module(m, i)
        lo, hi = float(acts[i + 1].min()), float(acts[i + 1].max())
        if isinstance(m, LINEAR):
            w = m.weight.detach().to(torch.float64)
            b = (m.bias.detach() if m.bias is not None else torch.zeros(w.shape[0])).to(torch.float64)
            w_fmt = _weight_format(scheme, w)
            b_fmt = _bias_format(scheme, in_fmt, w_fmt)
            out_fmt = _act_format(scheme, lo, hi)
            qw, qb = quantize(w, w_fmt), quantize(b, b_fmt)
            report.rows.append(_row(i, m, "weight", w, w_fmt))
            report.rows.append(_row(i, m, "bias", b, b_fmt))
            report.rows.append(_row(i, m, "output", acts[i + 1], out_fmt))
            common = dict(weight=qw, bias=qb, in_fmt=in_fmt, w_fmt=w_fmt, b_fmt=b_fmt, out_fmt=out_fmt)
            if isinstance(m, nn.Linear):
                layers.append(Dense(**common))
            elif isinstance(m, nn.Conv2d):
                layers.append(Conv2d(**common, stride=tuple(m.stride), padding=tuple(m.padding)))
            else:
                layers.append(Conv1d(**common, stride=m.stride[0], padding=m.padding[0]))
            in_fmt = out_fmt
        elif isinstance(m, nn.ReLU):
            layers.append(ReLU(in_fmt))
        elif isinstance(m, (nn.MaxPool2d, nn.MaxPool1d)):
            d = 2 if isinstance(m, nn.MaxPool2d) else 1
            k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,) * d
            s = m.stride if isinstance(m.stride, tuple) else (m.stride,) * d
            layers.append(MaxPool(in_fmt, tuple(k), tuple(s)))
        elif isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool1d)):
            out_fmt = _act_format(scheme, lo, hi)
            layers.append(GlobalAvgPool(in_fmt, out_fmt))
            in_fmt = out_fmt
        elif isinstance(m, nn.Flatten):
            layers.append(Flatten(in_fmt))
    return input_fmt, layers


def _row(i: int, m: nn.Module | None, tensor: str, x: torch.Tensor, fmt: Format) -> dict:
    q = quantize(x, fmt)
    err = (dequantize(q, fmt) - x).abs().max().item() if x.numel() else 0.0
    module = type(m).__name__ if m is not None else "input"
    return {"layer": i, "module": module, "tensor": tensor, "min": float(x.min()), "max": float(x.max()),
            "format": fmt.name, "out_of_range": _out_of_range(x, fmt),
            "max_abs_error": err}


def convert(
    net: nn.Sequential,
    calibration: torch.Tensor,
    scheme: str | Scheme = "fixed16_6",
    meta: dict | None = None,
) -> tuple[DeployedModel, ConversionReport]:
    """Convert a trained float network into a deployed quantized model.

    ``calibration`` is a batch of real inputs ``[N, *input_shape]`` (a few hundred training
    samples); its first dimension is the batch. Returns the model and a :class:`ConversionReport`.
    """
    scheme = parse_scheme(scheme) if isinstance(scheme, str) else scheme
    if calibration.ndim < 2 or calibration.shape[0] == 0:
        raise ValueError("calibration must be a non-empty batch [N, *input_shape]")
    was_training = net.training
    net.eval()
    try:
        # copy (never cast the caller's net) and fold in float64, so folding adds no float32 rounding
        mods = fold_batchnorm([copy.deepcopy(m).to(torch.float64) for m in drop_noops(_check_modules(net))])
        report = ConversionReport(scheme.name)
        acts = calibrate(mods, calibration, relu_fused=not isinstance(scheme, FixedScheme))
        input_fmt, layers = quantize_modules(mods, scheme, acts, report)
    finally:
        net.train(was_training)
    info = {"format": scheme.name, **(meta or {})}
    model = DeployedModel(tuple(calibration.shape[1:]), input_fmt, tuple(layers), info)
    return model, report

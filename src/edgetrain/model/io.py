"""One-file model format (``.etm``): a JSON spec and the raw arrays, guarded by a checksum.

Layout (all integers little-endian)::

    b"EDGETRAINM"  magic (10 bytes)
    u16            file format version
    32 bytes       SHA-256 of everything after this field
    u64            length of the JSON spec in bytes
    spec           UTF-8 JSON: input shape and format, layers (kind, formats, hyper-parameters,
                   and for each array its dtype, shape and byte offset), metadata
    payload        the arrays, back to back, in the dtype the spec names

Loading checks magic, version, length and checksum before it parses anything, then checks every
array's shape and range against its layer and format, so a truncated, altered or hand-edited
file is refused with a message that says what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..files import atomic_write
from ..quant import Format, format_from_dict, in_range
from .deployed import DeployedModel
from .layers import LAYER_TYPES, Layer

MAGIC = b"EDGETRAINM"
VERSION = 1
_HEAD = struct.Struct("<10sH32sQ")
_FMT_FIELDS = ("in_fmt", "w_fmt", "b_fmt", "out_fmt", "fmt")
_HYPER_FIELDS = ("stride", "padding", "kernel")


class ModelFileError(ValueError):
    """A model file is missing, truncated, altered or not an edgetrain model."""


def _dtype_for(fmt: Format) -> np.dtype:
    """Smallest little-endian integer dtype that holds every raw value of ``fmt``."""
    for bits in (8, 16, 32):
        if fmt.bits <= bits:
            return np.dtype(f"<{'i' if fmt.signed else 'u'}{bits // 8}")
    raise ValueError(f"format {fmt.name} is wider than 32 bits")


def _layer_spec(layer: Layer, arrays: list[bytes], offset: int) -> tuple[dict, int]:
    fields = layer.__dataclass_fields__
    spec: dict = {"kind": layer.kind}
    spec.update({n: getattr(layer, n).to_dict() for n in _FMT_FIELDS if n in fields})
    for n in _HYPER_FIELDS:
        if n in fields:
            v = getattr(layer, n)
            spec[n] = list(v) if isinstance(v, tuple) else v
    spec["arrays"] = {}
    for p in layer.params:
        raw = getattr(layer, p)
        fmt = layer.w_fmt if p == "weight" else layer.b_fmt
        if not in_range(raw, fmt):
            raise ValueError(f"{layer.kind} {p}: values outside the range of {fmt.name}; "
                             "refusing to write them (they would be stored wrapped)")
        dt = _dtype_for(fmt)
        data = raw.numpy().astype(dt).tobytes()
        spec["arrays"][p] = {"dtype": dt.str, "shape": list(raw.shape), "offset": offset, "nbytes": len(data)}
        arrays.append(data)
        offset += len(data)
    return spec, offset


def model_to_bytes(model: DeployedModel) -> bytes:
    """Serialize ``model`` to the ``.etm`` byte layout."""
    arrays: list[bytes] = []
    offset, layers = 0, []
    for layer in model.layers:
        spec, offset = _layer_spec(layer, arrays, offset)
        layers.append(spec)
    spec = {"edgetrain": __version__, "input_shape": list(model.input_shape),
            "input_fmt": model.input_fmt.to_dict(), "layers": layers, "meta": model.meta,
            "payload_bytes": offset}
    spec_bytes = json.dumps(spec, sort_keys=True).encode()
    body = struct.pack("<Q", len(spec_bytes)) + spec_bytes + b"".join(arrays)
    return MAGIC + struct.pack("<H", VERSION) + hashlib.sha256(body).digest() + body


def save_model(model: DeployedModel, path: str | Path) -> Path:
    """Write ``model`` to ``path`` atomically (a crash never leaves half a file behind)."""
    return atomic_write(path, model_to_bytes(model))


def _array(spec: dict, payload: bytes, where: str) -> torch.Tensor:
    try:
        dt = np.dtype(spec["dtype"])
        shape, off, nbytes = tuple(int(d) for d in spec["shape"]), int(spec["offset"]), int(spec["nbytes"])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"{where}: malformed array entry ({e})") from None
    count = int(np.prod(shape)) if shape else 1
    if count * dt.itemsize != nbytes or off < 0 or off + nbytes > len(payload):
        raise ModelFileError(f"{where}: array of shape {list(shape)} ({dt}) does not fit the payload")
    arr = np.frombuffer(payload, dtype=dt, count=count, offset=off).reshape(shape)
    return torch.from_numpy(arr.astype(np.int64))


def _build_layer(spec: dict, payload: bytes, index: int) -> Layer:
    where = f"layer {index}"
    kind = spec.get("kind")
    if kind not in LAYER_TYPES:
        raise ModelFileError(f"{where}: unknown layer kind {kind!r}")
    cls = LAYER_TYPES[kind]
    kwargs: dict = {}
    for name in cls.__dataclass_fields__:
        if name in _FMT_FIELDS:
            kwargs[name] = format_from_dict(spec[name])
        elif name in _HYPER_FIELDS and name in spec:
            v = spec[name]
            kwargs[name] = tuple(v) if isinstance(v, list) else v
    for p in cls.params:
        raw = _array(spec["arrays"][p], payload, f"{where} {p}")
        fmt = kwargs["w_fmt" if p == "weight" else "b_fmt"]
        if not in_range(raw, fmt):
            raise ModelFileError(f"{where} {p}: values outside the range of {fmt.name}")
        kwargs[p] = raw
    return cls(**kwargs)


def model_from_bytes(data: bytes, source: str = "<bytes>") -> DeployedModel:
    """Parse and verify the ``.etm`` byte layout; ``source`` names the file in errors."""
    if len(data) < _HEAD.size:
        raise ModelFileError(f"{source}: file is {len(data)} bytes, too short for an edgetrain model "
                             "(truncated, or not a .etm file)")
    magic, version, digest, spec_len = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise ModelFileError(f"{source}: not an edgetrain model file (bad magic bytes)")
    if version != VERSION:
        raise ModelFileError(f"{source}: file format version {version}; this edgetrain reads {VERSION}")
    if hashlib.sha256(data[_HEAD.size - 8:]).digest() != digest:
        raise ModelFileError(f"{source}: checksum mismatch: the file was altered or truncated after it "
                             "was written; write it again with 'edgetrain pretrain'")
    try:
        spec = json.loads(data[_HEAD.size:_HEAD.size + spec_len].decode())
        payload = data[_HEAD.size + spec_len:]
        if len(payload) != spec["payload_bytes"]:
            raise ModelFileError(f"{source}: payload is {len(payload)} bytes, the spec says "
                                 f"{spec['payload_bytes']}")
        layers = tuple(_build_layer(s, payload, i) for i, s in enumerate(spec["layers"]))
        return DeployedModel(tuple(spec["input_shape"]), format_from_dict(spec["input_fmt"]), layers,
                             spec.get("meta", {}))
    except ModelFileError:
        raise
    except (KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{source}: malformed model spec ({type(e).__name__}: {e})") from None


def load_model(path: str | Path) -> DeployedModel:
    """Read and verify a ``.etm`` file written by :func:`save_model`."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist (write one with 'edgetrain pretrain')")
    return model_from_bytes(path.read_bytes(), str(path))

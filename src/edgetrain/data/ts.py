"""Time-series classification sets in the ``.ts`` text format of the UEA & UCR archives.

Archives: A. Bagnall et al., "The UEA multivariate time series classification archive, 2018",
arXiv:1811.00075; H. A. Dau et al., "The UCR time series archive", IEEE/CAA J. Autom. Sinica 6(6),
2019. The format (as written by sktime): ``#`` comment lines, ``@`` header lines ending with
``@data``, then one case per line with channels separated by ``:``, values by ``,`` and the class
label as the last ``:`` field. ``@classLabel true <labels...>`` declares the labels.

Small sensor series of this kind (accelerometer, gyroscope, power readings) are what a
microcontroller actually sees, so they complement the image sets. The parser is strict: a missing
value, an undeclared label, a wrong channel count or a malformed number is an error naming file,
line and what was expected, never a silently dropped case.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .dataset import Dataset, Split

PAD_MODES = (None, "edge")


@dataclass(frozen=True)
class TsFile:
    """One parsed ``.ts`` file: per case a ``(C, L_i)`` float64 array and a class index, plus the
    declared labels and the header (keys lower-cased, values as written)."""

    path: Path
    series: tuple[np.ndarray, ...]
    y: np.ndarray
    classes: tuple[str, ...]
    header: dict[str, str]
    lines: tuple[int, ...]  # 1-based line number of each case


def _parse_header(path: Path, lineno: int, line: str, header: dict[str, str]) -> None:
    key, _, value = line[1:].partition(" ")
    key = key.lower()
    header[key] = value.strip()
    if key == "timestamps" and value.strip().lower() == "true":
        raise ValueError(f"{path}:{lineno}: time-stamped series are not supported")
    if key == "classlabel":
        flag, *labels = value.split()
        if flag.lower() != "true" or not labels:
            raise ValueError(f"{path}:{lineno}: expected '@classLabel true <label> ...' "
                             f"(a classification problem with its labels), got {line!r}")


def _parse_case(path: Path, lineno: int, line: str, n_channels: int | None,
                label_index: dict[str, int]) -> tuple[np.ndarray, int]:
    """One data line -> ``((C, L) array, class index)``; channels must share one length."""
    *fields, label = line.split(":")
    label = label.strip()
    if not fields:
        raise ValueError(f"{path}:{lineno}: expected channel values followed by ':<label>', "
                         f"got {line[:60]!r}")
    if label not in label_index:
        raise ValueError(f"{path}:{lineno}: label {label!r} is not among the declared class "
                         f"labels {list(label_index)}")
    if n_channels is not None and len(fields) != n_channels:
        raise ValueError(f"{path}:{lineno}: expected {n_channels} channel(s), found {len(fields)}")
    channels = []
    for c, field in enumerate(fields):
        tokens = field.split(",")
        if "?" in field:
            t = next(i for i, tok in enumerate(tokens) if "?" in tok)
            raise ValueError(f"{path}:{lineno}: missing value '?' in channel {c} at position {t}; "
                             f"expected complete series (missing values are not supported)")
        try:
            channels.append(np.array(tokens, dtype=np.float64))
        except ValueError:
            bad = next(tok for tok in tokens if not _is_number(tok))
            raise ValueError(f"{path}:{lineno}: channel {c}: {bad!r} is not a number; expected "
                             f"comma-separated values") from None
    lengths = {ch.size for ch in channels}
    if len(lengths) > 1:
        raise ValueError(f"{path}:{lineno}: channels have different lengths {sorted(lengths)}; "
                         f"expected all channels of a case to have one length")
    return np.stack(channels), label_index[label]


def _declared_int(path: Path, header: dict[str, str], key: str) -> int | None:
    """A positive integer header value (``@dimensions``, ``@seriesLength``), ``None`` if absent."""
    if key not in header:
        return None
    value = header[key]
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{path}: @{key} must be a positive integer, got {value!r}")
    return int(value)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def read_ts(path: str | Path) -> TsFile:
    """Parse one ``.ts`` file (cases may differ in length; see ``load_ts`` for padding)."""
    path = Path(path)
    header: dict[str, str] = {}
    series, labels, lines = [], [], []
    label_index: dict[str, int] | None = None
    n_channels: int | None = None
    length: int | None = None
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if label_index is None:  # still in the header
                if not line.startswith("@"):
                    raise ValueError(f"{path}:{lineno}: expected a '@' header line or '#' comment "
                                     f"before @data, got {line[:60]!r}")
                if line.lower() == "@data":
                    if "classlabel" not in header:
                        raise ValueError(f"{path}:{lineno}: no '@classLabel true <labels>' line "
                                         f"before @data")
                    label_index = {lb: i for i, lb in enumerate(header["classlabel"].split()[1:])}
                    n_channels = _declared_int(path, header, "dimensions")
                    if n_channels is None and header.get("univariate", "").lower() == "true":
                        n_channels = 1
                    if header.get("equallength", "").lower() == "true":
                        length = _declared_int(path, header, "serieslength")
                    continue
                _parse_header(path, lineno, line, header)
                continue
            x, y = _parse_case(path, lineno, line, n_channels, label_index)
            if length is not None and x.shape[1] != length:
                raise ValueError(f"{path}:{lineno}: series of length {x.shape[1]}, expected "
                                 f"{length} (declared by @seriesLength)")
            if n_channels is None:
                n_channels = x.shape[0]
            series.append(x)
            labels.append(y)
            lines.append(lineno)
    if label_index is None:
        raise ValueError(f"{path}: no '@data' line; expected a .ts header ending with @data")
    if not series:
        raise ValueError(f"{path}: no cases after @data")
    return TsFile(path, tuple(series), np.array(labels, dtype=np.int64), tuple(label_index),
                  header, tuple(lines))


def _describe_lengths(ts: TsFile) -> str:
    lengths = np.array([s.shape[1] for s in ts.series])
    lo, hi = int(lengths.min()), int(lengths.max())
    return f"{ts.path}: lengths {lo} to {hi} (line {ts.lines[int(lengths.argmin())]} has {lo}, " \
           f"line {ts.lines[int(lengths.argmax())]} has {hi})"


def _stack(ts: TsFile, length: int, pad: str | None) -> tuple[np.ndarray, np.ndarray]:
    """``(N, C, length)`` array (edge-padded if asked) and a ``(N, length)`` real-value mask."""
    n, c = len(ts.series), ts.series[0].shape[0]
    out = np.empty((n, c, length), dtype=np.float64)
    mask = np.zeros((n, length), dtype=bool)
    for i, s in enumerate(ts.series):
        k = s.shape[1]
        out[i, :, :k] = s
        if pad == "edge" and k < length:
            out[i, :, k:] = s[:, -1:]
        mask[i, :k] = True
    return out, mask


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_ts(train_path: str | Path, test_path: str | Path, pad: str | None = None,
            normalize: bool = True, name: str | None = None) -> Dataset:
    """Load a UEA/UCR problem from its ``_TRAIN.ts`` and ``_TEST.ts`` files.

    x is ``(N, C, L)`` float32, y int64 indices into the labels declared by ``@classLabel`` (which
    become ``classes``, as written). All series must share one length; otherwise a ``ValueError``
    names the file and the lengths found, unless ``pad="edge"``, which extends every series to the
    longest (over train and test) by repeating its last value. With ``normalize`` each channel is
    standardised with the mean and standard deviation of the *training* series (real values only,
    not padding), so no test statistics leak in; both are recorded in ``meta["normalization"]``.
    """
    if pad not in PAD_MODES:
        raise ValueError(f"pad must be one of {PAD_MODES}, got {pad!r}")
    train_ts, test_ts = read_ts(train_path), read_ts(test_path)
    if train_ts.classes != test_ts.classes:
        raise ValueError(f"{test_ts.path}: class labels {list(test_ts.classes)} differ from "
                         f"{list(train_ts.classes)} declared in {train_ts.path}")
    c_train, c_test = train_ts.series[0].shape[0], test_ts.series[0].shape[0]
    if c_train != c_test:
        raise ValueError(f"{test_ts.path}: {c_test} channel(s), expected {c_train} like "
                         f"{train_ts.path}")
    lengths = {s.shape[1] for ts in (train_ts, test_ts) for s in ts.series}
    if len(lengths) > 1 and pad is None:
        raise ValueError("unequal series lengths: " + "; ".join(
            _describe_lengths(ts) for ts in (train_ts, test_ts)) + ". Pass pad='edge' (ts_pad="
            "'edge' in load_dataset) to pad every series to the longest by repeating its last value")
    length = max(lengths)
    x_train, m_train = _stack(train_ts, length, pad)
    x_test, _ = _stack(test_ts, length, pad)
    meta: dict = {
        "source": "UEA & UCR time series classification archive (.ts)",
        "citation": "Bagnall et al. 2018, arXiv:1811.00075; Dau et al. 2019, IEEE/CAA JAS 6(6)",
        "files": {"train": str(train_ts.path), "test": str(test_ts.path)},
        "sha256": {"train": _sha256(train_ts.path), "test": _sha256(test_ts.path)},
        "lengths": {"min": min(lengths), "max": length},
        "pad": pad,
        "split": {"kind": "official"},
    }
    if normalize:
        w = np.broadcast_to(m_train[:, None, :], x_train.shape)
        count = w.sum(axis=(0, 2))
        mean = (x_train * w).sum(axis=(0, 2)) / count
        var = (((x_train - mean[None, :, None]) ** 2) * w).sum(axis=(0, 2)) / count
        std = np.sqrt(var)
        std = np.where(std > 0, std, 1.0)
        x_train = (x_train - mean[None, :, None]) / std[None, :, None]
        x_test = (x_test - mean[None, :, None]) / std[None, :, None]
        meta["normalization"] = {"kind": "per-channel standardization", "stats_from": "train",
                                 "mean": mean.tolist(), "std": std.tolist()}
    problem = name or train_ts.header.get("problemname") or train_ts.path.stem.rsplit("_", 1)[0]
    return Dataset(
        name=problem,
        train=Split(torch.from_numpy(x_train.astype(np.float32)), torch.from_numpy(train_ts.y)),
        test=Split(torch.from_numpy(x_test.astype(np.float32)), torch.from_numpy(test_ts.y)),
        input_shape=(c_train, length),
        classes=train_ts.classes,
        meta=meta,
    )

"""MNIST-format IDX files for tests, written in ``tmp_path`` in the real format (gzip-compressed IDX).

``write_digits_as_mnist`` builds them from real images: scikit-learn's bundled 8x8 digits (Alpaydin &
Kaynak, UCI), each scaled bilinearly to 20x20 and centred in a 28x28 frame with a 4-pixel border, as
MNIST centres its digits in a 20x20 box, with their real labels. ``trust`` makes the loader's checksum
table expect exactly the files written, so no test needs the network or the published MNIST files.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from edgetrain.data import IDX_SOURCES
from edgetrain.data.digits import digits_in_mnist_frame
from edgetrain.threads import torch_threads

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"
DIGITS_IMAGES = 1797
"""Images in scikit-learn's digits set."""


def idx_bytes(arr: np.ndarray, code: int, magic: int | None = None) -> bytes:
    """Real-format IDX bytes for ``arr`` (big-endian header + payload)."""
    dtype = {0x08: ">u1", 0x0B: ">i2", 0x0D: ">f4"}[code]
    magic = (code << 8) | arr.ndim if magic is None else magic
    dims = np.array(arr.shape, dtype=">u4").tobytes()
    return magic.to_bytes(4, "big") + dims + arr.astype(dtype).tobytes()


def write_gz(path: Path, data: bytes) -> str:
    """Write ``data`` gzip-compressed (fixed mtime, so the bytes are reproducible); return the file's md5."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0))
    return hashlib.md5(path.read_bytes()).hexdigest()


def trust(monkeypatch, files: dict, name: str = "mnist") -> None:
    """Make the md5 table of ``name`` expect exactly these files (``{filename: (md5, array)}``)."""
    source = IDX_SOURCES[name]
    md5 = {fn: m for fn, (m, _) in files.items()}
    monkeypatch.setitem(IDX_SOURCES, name, dataclasses.replace(source, md5=md5))


def isolate_data_dirs(monkeypatch, cache_root: Path) -> None:
    """An empty download cache under ``cache_root`` and no ``$EDGETRAIN_DATA``, so the user's files never
    leak into a test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_root))
    monkeypatch.delenv("EDGETRAIN_DATA", raising=False)


def forbid_network(monkeypatch) -> None:
    """Make any attempt to open a URL fail the test (``download=False`` must never reach the network)."""
    def no_network(*args, **kwargs):
        raise AssertionError(f"a test opened a URL: {args[:1]}")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)


def digits_as_mnist_arrays(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` of scikit-learn's digits as MNIST-like ``uint8`` images ``(n, 28, 28)`` in 0..255
    (``data.digits.digits_in_mnist_frame``: 8x8 scaled bilinearly to 20x20, zero border of 4 pixels) and
    their labels ``uint8`` ``(n,)``."""
    from sklearn.datasets import load_digits

    if not 0 < n <= DIGITS_IMAGES:
        raise ValueError(f"need 1..{DIGITS_IMAGES} images, got {n}")
    digits = load_digits()
    x = torch.from_numpy(digits.images[:n]).to(torch.float32).unsqueeze(1) / 16.0  # values 0..16
    images = (digits_in_mnist_frame(x)[:, 0] * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
    return images, digits.target[:n].astype(np.uint8)


def write_digits_as_mnist(folder: Path, n_train: int = 300, n_test: int = 100) -> dict:
    """The four MNIST files in ``folder``, from real digit images: the first ``n_train`` digits are the
    training split, the next ``n_test`` the test split (the set cycles through the classes, so both
    hold every class). Returns ``{filename: (md5, array)}`` like ``test_data.write_mnist``."""
    images, labels = digits_as_mnist_arrays(n_train + n_test)
    arrays = {
        TRAIN_IMAGES: images[:n_train], TRAIN_LABELS: labels[:n_train],
        TEST_IMAGES: images[n_train:], TEST_LABELS: labels[n_train:],
    }
    folder = Path(folder)
    return {fn: (write_gz(folder / fn, idx_bytes(arr, 0x08)), arr) for fn, arr in arrays.items()}


def listing(folder: Path) -> list[str]:
    """Every file and folder under ``folder`` (relative, sorted); empty when it does not exist."""
    folder = Path(folder)
    if not folder.exists():
        return []
    return sorted(os.path.relpath(p, folder) for p in folder.rglob("*"))


def check_missing_mnist_refused(command: str, tiny_args: list[str], tmp_path: Path, monkeypatch, capsys) -> None:
    """Run ``edgetrain COMMAND --dataset mnist`` against a data dir that does not exist, offline: it must
    exit 2 naming every missing file with its published md5, where it looked and how to fix it, and leave
    nothing behind (no output folder, no data dir, nothing in the cache, no URL opened)."""
    from edgetrain.cli import main

    isolate_data_dirs(monkeypatch, tmp_path / "cache")
    forbid_network(monkeypatch)
    missing, out = tmp_path / "no-such-dir", tmp_path / "out"
    argv = [command, *tiny_args, "--data-dir", str(missing), "--out", str(out), "--json", str(out / "r.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"edgetrain {command}: error: mnist: missing file(s) ")
    for filename, md5 in IDX_SOURCES["mnist"].md5.items():  # each file with its published checksum
        assert f"{filename} (expected md5 {md5})" in err
    assert f"Searched: {missing / 'mnist'}, {missing}, {tmp_path / 'cache' / 'edgetrain' / 'mnist'}." in err
    for hint in ("--data-dir", "EDGETRAIN_DATA", "--download"):
        assert hint in err
    assert not out.exists() and not missing.exists() and listing(tmp_path / "cache" / "edgetrain") == []


def run_on_digits_as_mnist(command: str, root: Path, args: list[str], n_train: int, n_test: int) -> tuple[Path, list]:
    """Run ``edgetrain COMMAND ARGS --data-dir ROOT/data --out ROOT/out --json ...`` on MNIST files written
    from the real digits (:func:`write_digits_as_mnist`), offline, with an empty cache and one torch
    thread (tiny tensors: faster on 2 cores, and deterministic). Returns the output folder and records."""
    from edgetrain.cli import main

    files = write_digits_as_mnist(root / "data" / "mnist", n_train=n_train, n_test=n_test)
    out = root / "out"
    argv = [command, *args, "--data-dir", str(root / "data"), "--out", str(out), "--json", str(out / "records.json")]
    with pytest.MonkeyPatch.context() as mp, torch_threads(1):
        isolate_data_dirs(mp, root / "cache")
        forbid_network(mp)
        trust(mp, files)
        assert main(argv) == 0
    return out, json.loads((out / "records.json").read_text())

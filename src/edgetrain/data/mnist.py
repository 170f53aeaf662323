"""MNIST and its drop-in replacements, loaded from their four standard IDX ``.gz`` files.

- MNIST: Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, "Gradient-based learning applied to document
  recognition", Proc. IEEE 86(11), 1998.
- Fashion-MNIST: H. Xiao, K. Rasul, R. Vollgraf, "Fashion-MNIST: a novel image dataset for
  benchmarking machine learning algorithms", arXiv:1708.07747, 2017.
- Kuzushiji-MNIST: T. Clanuwat, M. Bober-Irizar, A. Kitamoto, A. Lamb, K. Yamamoto, D. Ha, "Deep
  learning for classical Japanese literature", arXiv:1812.01718, 2018.

All three share the file names, the IDX layout (60000 train and 10000 test 28x28 ubyte images,
labels 0..9) and differ in content, so one table (``IDX_SOURCES``) of mirrors and md5 checksums
drives one loader. Files are looked for in an explicit directory, ``$EDGETRAIN_DATA``, then the
cache; they are downloaded (into the cache) only when asked, and every file is checked against its
published md5 before it is parsed, so a partial download or another dataset's file is caught.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from .dataset import Dataset, Split
from .idx import idx_magic, md5_file, read_idx_gz
from .locate import ENV_VAR, cache_dir, user_dirs

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
IMAGES_MAGIC = idx_magic(0x08, 3)  # unsigned bytes, (N, rows, cols)
LABELS_MAGIC = idx_magic(0x08, 1)  # unsigned bytes, (N,)


@dataclass(frozen=True)
class IdxSource:
    """Where an IDX dataset comes from: mirrors (tried in order), the md5 of each file, class
    names and the paper to cite."""

    mirrors: tuple[str, ...]
    md5: dict[str, str]
    classes: tuple[str, ...]
    citation: str


# Checksums and mirrors as published by the dataset authors and listed in torchvision's
# datasets/mnist.py (checked against that file and several independent copies).
IDX_SOURCES: dict[str, IdxSource] = {
    "mnist": IdxSource(
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "http://yann.lecun.com/exdb/mnist/"),
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        classes=tuple(str(d) for d in range(10)),
        citation="LeCun, Bottou, Bengio, Haffner 1998, Proc. IEEE 86(11)",
    ),
    "fashion-mnist": IdxSource(
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"),
        citation="Xiao, Rasul, Vollgraf 2017, arXiv:1708.07747",
    ),
    "kmnist": IdxSource(
        mirrors=("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
        md5={
            "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
            "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
            "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
            "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
        },
        classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        citation="Clanuwat et al. 2018, arXiv:1812.01718",
    ),
}


def _how_to_supply(name: str, source: IdxSource) -> str:
    return (f"Supply the files with --data-dir DIR or the {ENV_VAR} environment variable (files "
            f"directly in DIR or in DIR/{name}/), or pass --download (download=True) to fetch them "
            f"from {source.mirrors[0]} into {cache_dir(name)}.")


def _find(name: str, filename: str, dirs: list[Path], md5: str) -> tuple[Path | None, list[str]]:
    """The first copy of ``filename`` in ``dirs`` whose md5 matches, and a note per bad copy."""
    bad = []
    for d in dirs:
        path = d / filename
        if path.is_file():
            found = md5_file(path)
            if found == md5:
                return path, bad
            bad.append(f"{path} (md5 {found})")
    return None, bad


def _download(source: IdxSource, filename: str, dest: Path) -> str | None:
    """Fetch ``filename`` from each mirror in turn into ``dest`` (temp file, md5 check, atomic
    rename). Returns ``None`` on success, else a description of every failed attempt."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for mirror in source.mirrors:
        url = mirror + filename
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{filename}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
                shutil.copyfileobj(resp, out, 1 << 20)
            got = md5_file(tmp)
            if got != source.md5[filename]:
                failures.append(f"{url}: md5 {got}, expected {source.md5[filename]}")
                continue
            os.replace(tmp, dest)
            return None
        except (urllib.error.URLError, OSError) as e:
            failures.append(f"{url}: {e}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return "; ".join(failures)


def locate_idx_files(name: str, data_dir: str | Path | None = None,
                     download: bool = False) -> dict[str, Path]:
    """Paths of the four verified files of IDX dataset ``name``, keyed by file name.

    Looks in ``data_dir`` (and ``data_dir/<name>``), ``$EDGETRAIN_DATA`` (likewise), then the
    cache; a copy counts only if its md5 matches. With ``download=True`` files still missing are
    fetched into the cache. Raises ``FileNotFoundError`` when files are absent, ``ValueError`` when
    only corrupt copies exist, each message naming the files, the expected md5s, the places
    searched and how to supply the files.
    """
    source = IDX_SOURCES[name]
    cache = cache_dir(name)
    dirs = user_dirs(name, data_dir) + [cache]
    paths: dict[str, Path] = {}
    missing, corrupt, failed = [], [], []
    for filename, md5 in source.md5.items():
        path, bad = _find(name, filename, dirs, md5)
        if path is None and download:
            error = _download(source, filename, cache / filename)
            if error is None:
                path = cache / filename
            else:
                failed.append(f"{filename}: {error}")
        if path is not None:
            paths[filename] = path
        elif bad:
            corrupt.append(f"{filename}: expected md5 {md5}, found " + ", ".join(bad))
        else:
            missing.append(f"{filename} (expected md5 {md5})")
    searched = "Searched: " + ", ".join(str(d) for d in dirs) + "."
    if failed:
        raise OSError(f"{name}: download failed for " + "; ".join(failed))
    if corrupt:
        raise ValueError(f"{name}: corrupt or wrong file(s) (md5 mismatch): " + "; ".join(corrupt)
                         + f". {searched} Delete them and supply good copies. "
                         + _how_to_supply(name, source))
    if missing:
        raise FileNotFoundError(f"{name}: missing file(s) " + ", ".join(missing) + f". {searched} "
                                + _how_to_supply(name, source))
    return paths


def _read_pair(images: Path, labels: Path, n_classes: int) -> Split:
    x = read_idx_gz(images, IMAGES_MAGIC)
    y = read_idx_gz(labels, LABELS_MAGIC)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{images}: holds {x.shape[0]} images but {labels} holds {y.shape[0]} "
                         f"labels; expected the same count")
    if y.size and int(y.max()) >= n_classes:
        raise ValueError(f"{labels}: label {int(y.max())} out of range, expected 0..{n_classes - 1}")
    xt = torch.from_numpy(x).to(torch.float32).div_(255.0).unsqueeze(1)
    return Split(xt, torch.from_numpy(y).to(torch.int64))


def load_idx_dataset(name: str, data_dir: str | Path | None = None,
                     download: bool = False) -> Dataset:
    """Load ``mnist``, ``fashion-mnist`` or ``kmnist`` with its official train/test split.

    Images become ``(N, 1, rows, cols)`` float32 in [0, 1] (pixel / 255), labels int64. The md5 of
    every file and its path are recorded in ``meta``.
    """
    if name not in IDX_SOURCES:
        raise ValueError(f"unknown IDX dataset {name!r}; known: {sorted(IDX_SOURCES)}")
    source = IDX_SOURCES[name]
    paths = locate_idx_files(name, data_dir, download)
    f = IDX_FILES
    n = len(source.classes)
    train = _read_pair(paths[f["train_images"]], paths[f["train_labels"]], n)
    test = _read_pair(paths[f["test_images"]], paths[f["test_labels"]], n)
    if train.x.shape[1:] != test.x.shape[1:]:
        raise ValueError(f"{paths[f['test_images']]}: images are {tuple(test.x.shape[2:])}, "
                         f"expected {tuple(train.x.shape[2:])} like the training images")
    return Dataset(
        name=name,
        train=train,
        test=test,
        input_shape=tuple(train.x.shape[1:]),
        classes=source.classes,
        meta={
            "source": source.mirrors[0],
            "citation": source.citation,
            "files": {fn: str(p) for fn, p in paths.items()},
            "md5": dict(source.md5),
            "scale": "x / 255",
            "split": {"kind": "official"},
        },
    )

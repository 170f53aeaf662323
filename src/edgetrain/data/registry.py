"""``load_dataset``: one entry point from a dataset name to a validated ``Dataset``.

Names: ``digits`` (built in, always offline), ``digits28`` (the same images in MNIST's 28x28
frame, also offline), the IDX sets ``mnist``, ``fashion-mnist`` and
``kmnist``, and any UEA/UCR problem whose ``<Name>/<Name>_TRAIN.ts`` and ``_TEST.ts`` files can be
found (optionally written ``ts:<Name>``).
"""

from __future__ import annotations

from pathlib import Path

from .dataset import Dataset
from .digits import load_digits
from .locate import ENV_VAR, shared_data_dirs, user_dirs
from .mnist import IDX_SOURCES, load_idx_dataset
from .ts import load_ts

# The UEA/UCR problems shipped in the project's shared/data folder (any other one loads too when
# its files are found).
TS_SHIPPED = ("BasicMotions", "GunPoint", "ItalyPowerDemand", "JapaneseVowels")
DATASETS: tuple[str, ...] = ("digits", "digits28", *IDX_SOURCES, *TS_SHIPPED)


def ts_dirs(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """Folders searched for ``<name>_TRAIN.ts``: under ``data_dir``, ``$EDGETRAIN_DATA``, then the
    project's ``shared/data`` (each as ``<dir>/<name>/`` and, for the first two, ``<dir>/``)."""
    return user_dirs(name, data_dir) + [d / name for d in shared_data_dirs()]


def find_ts(name: str, data_dir: str | Path | None = None) -> tuple[Path, Path]:
    """The ``_TRAIN.ts`` and ``_TEST.ts`` files of UEA/UCR problem ``name`` (first folder holding
    both), or ``FileNotFoundError`` listing the folders searched."""
    dirs = ts_dirs(name, data_dir)
    for d in dirs:
        train, test = d / f"{name}_TRAIN.ts", d / f"{name}_TEST.ts"
        if train.is_file() and test.is_file():
            return train, test
    raise FileNotFoundError(
        f"no UEA/UCR files {name}_TRAIN.ts and {name}_TEST.ts found. Searched: "
        + ", ".join(str(d) for d in dirs)
        + f". Supply them with --data-dir DIR or {ENV_VAR} (as DIR/{name}/{name}_TRAIN.ts). "
        + f"Built-in names: {', '.join(DATASETS)}")


def load_dataset(name: str, data_dir: str | Path | None = None, download: bool = False,
                 seed: int = 0, *, ts_pad: str | None = None, test_fraction: float = 0.3
                 ) -> Dataset:
    """Load dataset ``name`` as a validated ``Dataset``.

    - ``digits``: scikit-learn's 8x8 digits; ``seed`` and ``test_fraction`` pick the stratified
      train/test split. ``digits28``: the same images and split, resampled into MNIST's 28x28 frame.
    - ``mnist``, ``fashion-mnist``, ``kmnist``: the official split from the four IDX files, found
      in ``data_dir``, ``$EDGETRAIN_DATA`` or the cache, and fetched into the cache only when
      ``download=True``.
    - anything else (or ``ts:<Name>``): a UEA/UCR ``.ts`` problem, official split, channels
      standardised with training statistics; ``ts_pad="edge"`` admits unequal-length series.

    ``seed`` only affects ``digits`` and ``digits28``; the other sets come with a fixed split.
    """
    key = name.strip()
    low = key.lower().replace("_", "-")
    if low.startswith("ts:"):
        return load_ts(*find_ts(key[3:], data_dir), pad=ts_pad, name=key[3:])
    if low == "digits":
        return load_digits(seed=seed, test_fraction=test_fraction)
    if low == "digits28":
        return load_digits(seed=seed, test_fraction=test_fraction, size=28)
    idx_names = {k.replace("-", ""): k for k in IDX_SOURCES}  # also "fashion_mnist", "kmnist"
    if low.replace("-", "") in idx_names:
        canonical = idx_names[low.replace("-", "")]
        return load_idx_dataset(canonical, data_dir=data_dir, download=download)
    return load_ts(*find_ts(key, data_dir), pad=ts_pad, name=key)

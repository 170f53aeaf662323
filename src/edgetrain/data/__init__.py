"""Datasets as validated tensors plus provenance, and the online stream a deployed model learns from.

- ``load_dataset(name)``: ``digits`` (built in; ``digits28`` in MNIST's 28x28 frame), ``mnist`` /
  ``fashion-mnist`` / ``kmnist`` (IDX files, md5-checked, downloaded only on request), UEA/UCR ``.ts``
  problems by name.
- ``with_online(ds)``: hold back a stratified part of the training data for on-device adaptation.
- ``stream(split)``: one labelled sample at a time, in a seeded or given order.
"""

from .dataset import Dataset, Split, stratified_split, with_online
from .digits import load_digits
from .idx import parse_idx, read_idx_gz
from .mnist import IDX_SOURCES, load_idx_dataset
from .registry import DATASETS, load_dataset
from .stream import Sample, stream
from .ts import load_ts, read_ts

__all__ = [
    "DATASETS",
    "IDX_SOURCES",
    "Dataset",
    "Sample",
    "Split",
    "load_dataset",
    "load_digits",
    "load_idx_dataset",
    "load_ts",
    "parse_idx",
    "read_idx_gz",
    "read_ts",
    "stratified_split",
    "stream",
    "with_online",
]

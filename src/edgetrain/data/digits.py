"""The built-in default dataset: scikit-learn's bundled 8x8 handwritten digits.

It ships inside scikit-learn (no download), is small enough to train on in seconds on a laptop CPU,
and its 8x8 images fit the memory of the smallest microcontrollers, which makes it the dataset
every test, demo and first experiment can rely on.
"""

from __future__ import annotations

import torch

from .dataset import Dataset, Split, stratified_split, take

DIGITS_CITATION = (
    "E. Alpaydin, C. Kaynak, Optical Recognition of Handwritten Digits, UCI Machine Learning "
    "Repository, 1998 (as bundled by scikit-learn: sklearn.datasets.load_digits)"
)


def load_digits(seed: int = 0, test_fraction: float = 0.3) -> Dataset:
    """The 1797 8x8 digit images scaled from 0..16 to [0, 1], shaped ``(N, 1, 8, 8)`` float32.

    Train and test are a stratified split (``test_fraction`` of each class goes to test) drawn
    from ``seed``: the same seed always gives the same split, another seed a different one.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    full = Split(x, y)
    train_idx, test_idx = stratified_split(y, test_fraction, seed)
    return Dataset(
        name="digits",
        train=take(full, train_idx),
        test=take(full, test_idx),
        input_shape=(1, 8, 8),
        classes=tuple(str(d) for d in range(10)),
        meta={
            "source": "sklearn.datasets.load_digits",
            "citation": DIGITS_CITATION,
            "scale": "x / 16",
            "split": {"kind": "stratified", "test_fraction": test_fraction, "seed": seed},
        },
    )

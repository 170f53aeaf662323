"""The built-in default dataset: scikit-learn's bundled 8x8 handwritten digits.

It ships inside scikit-learn (no download), is small enough to train on in seconds on a laptop CPU,
and its 8x8 images fit the memory of the smallest microcontrollers, which makes it the dataset
every test, demo and first experiment can rely on.

``digits28`` is the same images laid out as MNIST lays out its digits: each 8x8 image resampled
bilinearly to 20x20 and centred in a 28x28 frame with a 4-pixel zero border. It is still the real
digits set (no new information, nothing downloaded), at MNIST's input size, so that costs which
grow with the image (a convolution's output pixels, its per-pixel weight-update terms) can be
measured at that size on any machine.
"""

from __future__ import annotations

import torch

from .dataset import Dataset, Split, stratified_split, take

DIGITS_CITATION = (
    "E. Alpaydin, C. Kaynak, Optical Recognition of Handwritten Digits, UCI Machine Learning "
    "Repository, 1998 (as bundled by scikit-learn: sklearn.datasets.load_digits)"
)


MNIST_BOX, MNIST_SIDE = 20, 28
"""MNIST centres each digit's 20x20 box in a 28x28 image."""


def digits_in_mnist_frame(x: torch.Tensor) -> torch.Tensor:
    """8x8 images ``(N, 1, 8, 8)`` in [0, 1] -> ``(N, 1, 28, 28)``: bilinear resampling to 20x20
    (``align_corners=False``), then a 4-pixel zero border, as MNIST frames its digits."""
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
        raise ValueError(f"expected 8x8 digit images shaped (N, 1, 8, 8), got {tuple(x.shape)}")
    box = torch.nn.functional.interpolate(x, size=(MNIST_BOX, MNIST_BOX), mode="bilinear", align_corners=False)
    border = (MNIST_SIDE - MNIST_BOX) // 2
    return torch.nn.functional.pad(box, (border, border, border, border))


def load_digits(seed: int = 0, test_fraction: float = 0.3, size: int = 8) -> Dataset:
    """The 1797 digit images scaled from 0..16 to [0, 1], float32, shaped ``(N, 1, 8, 8)`` (``size=8``,
    the dataset ``digits``) or ``(N, 1, 28, 28)`` in MNIST's frame (``size=28``, ``digits28``; see the
    module docstring).

    Train and test are a stratified split (``test_fraction`` of each class goes to test) drawn
    from ``seed``: the same seed always gives the same split, another seed a different one, and
    both sizes split the same way.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    if size not in (8, MNIST_SIDE):
        raise ValueError(f"digits come at size 8 (as bundled) or {MNIST_SIDE} (in MNIST's frame), got {size!r}")
    bunch = sklearn_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    meta = {}
    if size == MNIST_SIDE:
        x = digits_in_mnist_frame(x)
        meta["resampled"] = (f"bilinear 8x8 -> {MNIST_BOX}x{MNIST_BOX}, centred in {MNIST_SIDE}x{MNIST_SIDE} "
                             "with a zero border (MNIST's layout)")
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    full = Split(x, y)
    train_idx, test_idx = stratified_split(y, test_fraction, seed)
    return Dataset(
        name="digits" if size == 8 else f"digits{size}",
        train=take(full, train_idx),
        test=take(full, test_idx),
        input_shape=(1, size, size),
        classes=tuple(str(d) for d in range(10)),
        meta={
            "source": "sklearn.datasets.load_digits",
            "citation": DIGITS_CITATION,
            "scale": "x / 16",
            **meta,
            "split": {"kind": "stratified", "test_fraction": test_fraction, "seed": seed},
        },
    )

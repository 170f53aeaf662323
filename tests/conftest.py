"""Shared test fixtures."""

from __future__ import annotations

import pytest

from edgetrain.threads import torch_threads


@pytest.fixture
def one_torch_thread():
    """The tensors in these tests are tiny: one intra-op thread beats several contending for 2 cores."""
    with torch_threads(1):
        yield


DIGITS_CNN_SAMPLES = 800


@pytest.fixture(scope="session")
def digits_cnn_uint8():
    """A uint8 CNN for digits pre-trained briefly in float (2 epochs, seed 0, one thread), and its first
    DIGITS_CNN_SAMPLES raw training samples and labels: the model the C-export tests train on device."""
    from edgetrain.data import load_dataset
    from edgetrain.experiments.deploy import pretrain_and_deploy
    from edgetrain.model.forward import quantize_input

    with torch_threads(1):  # module fixtures start before the per-test one-thread fixture
        ds = load_dataset("digits", seed=0)
        dep = pretrain_and_deploy(ds, "cnn", "uint8", epochs=2, seed=0, show_progress=False)
        m = DIGITS_CNN_SAMPLES
        return dep.model, quantize_input(dep.model, ds.train.x[:m]), ds.train.y[:m]

"""The torch thread count a run uses: fixed, so that a seed gives the same result on any machine.

Float training (pre-training a model before deployment, the backprop references, float32 FQT)
adds its partial sums in an order set by how many intra-op threads share the work, not by how many
cores run them. Measured on the digits cnn (30 epochs, seed 0): 1, 2 and 4 threads pre-train three
different networks, and 2 threads pinned to one core (``taskset -c 0``) pre-train the same network as
2 threads on two cores. So inheriting the machine's default (one thread per core) would make the
same command give different numbers on a laptop, a CI runner and a workstation. Every entry point
fixes the count instead: the command line runs at ``--threads`` (default :data:`DEFAULT_THREADS`,
the count the README's demo figures were measured at), each trial of ``edgetrain run`` at
:data:`TRIAL_THREADS`, whether it runs in-process, in a worker or on Ray, and the benchmarks
pre-train at :data:`DEFAULT_THREADS` (``bench_fqt`` and ``bench_mcu`` run everything at one).

The integer-exact forward does not depend on the thread count (its float64 sums of integers are
exact). Results can still differ between CPUs whose math libraries pick different kernels (an AVX2
against an AVX-512 machine).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

DEFAULT_THREADS = 2
"""Threads of the command-line tools unless ``--threads`` says otherwise."""

TRIAL_THREADS = 1
"""Threads of one ``edgetrain run`` trial: workers share the cores, one thread each."""


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block at ``n`` torch intra-op threads; the previous count is restored afterwards."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"thread count must be an integer >= 1, got {n!r}")
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


__all__ = ["DEFAULT_THREADS", "TRIAL_THREADS", "torch_threads"]

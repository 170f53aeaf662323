"""Stream scenarios: the order in which a deployed model meets its samples, and when the world changes.

On a device, data arrives one sample at a time and is rarely shuffled: a sensor sees one activity
for minutes, a camera one kind of object for a while. ``class_clustered_order`` reproduces that
(runs of one class), which is what makes online training forget. ``Schedule`` switches between
shifts every so many stream samples, e.g. clean / noisy / clean, to measure how fast a method
adapts and whether it recovers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .input import GeneratorLike, Shift, as_generator


def class_clustered_order(
    y: torch.Tensor, run_length: int, generator: GeneratorLike
) -> torch.Tensor:
    """A permutation of ``range(len(y))`` that shows the classes in runs of ``run_length`` samples.

    Each class's samples are shuffled and cut into runs of ``run_length`` (the last run of a class
    holds the remainder), and the runs of all classes are then put in a random order. Every sample
    appears exactly once. Two runs of the same class may end up adjacent, as in a real stream;
    ``run_length=1`` is a plain shuffle. Labels may be any integers (not only ``0..K-1``).
    """
    y = torch.as_tensor(y)
    if y.ndim != 1 or y.is_floating_point() or y.is_complex():
        raise ValueError(f"class_clustered_order expects a 1-D integer label tensor, got "
                         f"{y.dtype} of shape {tuple(y.shape)}")
    if not (isinstance(run_length, int) and run_length >= 1):
        raise ValueError(f"run_length must be an integer >= 1, got {run_length!r}")
    g = as_generator(generator, "class_clustered_order")
    n = y.numel()
    _, labels, counts = torch.unique(y.cpu(), return_inverse=True, return_counts=True)
    # Shuffle, then group by class (stable sort keeps the shuffled order inside each class).
    shuffle = torch.randperm(n, generator=g, device=g.device).cpu()
    by_class = shuffle[torch.argsort(labels[shuffle], stable=True)]
    cls = labels[by_class]
    class_start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - class_start[cls]  # position of each sample within its class
    runs_per_class = (counts + run_length - 1) // run_length
    run_id = (torch.cumsum(runs_per_class, 0) - runs_per_class)[cls] + rank // run_length
    run_order = torch.randperm(int(runs_per_class.sum()), generator=g, device=g.device).cpu()
    key = run_order[run_id] * run_length + rank % run_length
    return by_class[torch.argsort(key)].to(y.device)


@dataclass(frozen=True)
class Schedule:
    """Shifts that take turns along a stream: ``shifts[0]`` for the first ``every`` samples, then
    ``shifts[1]``, ..., cycling back to the first. Spec ``none|noise:0.3@500`` (see
    ``parse_schedule``)."""

    shifts: tuple[Shift, ...]
    every: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "shifts", tuple(self.shifts))
        if not self.shifts:
            raise ValueError("a Schedule needs at least one shift")
        if not (isinstance(self.every, int) and self.every >= 1):
            raise ValueError(f"Schedule.every must be an integer >= 1, got {self.every!r}")

    @property
    def name(self) -> str:
        return "|".join(s.name for s in self.shifts) + f"@{self.every}"

    def segment(self, t: int) -> int:
        """Index of the segment (``every`` samples each) that stream position ``t`` falls in."""
        if t < 0:
            raise ValueError(f"stream position must be >= 0, got {t}")
        return t // self.every

    def shift_at(self, t: int) -> Shift:
        """The shift in force at stream position ``t`` (0-based)."""
        return self.shifts[self.segment(t) % len(self.shifts)]

    def switch_points(self, n: int) -> list[int]:
        """Stream positions ``0 < t < n`` where the shift in force changes (for plots)."""
        return list(range(self.every, n, self.every)) if len(self.shifts) > 1 else []

    def apply_stream(
        self, x_one_sample: torch.Tensor, t: int, generator: GeneratorLike | None = None
    ) -> torch.Tensor:
        """Apply the shift in force at position ``t`` to one sample, ``(C, H, W)`` or ``(C, L)``
        (no batch dimension); returns a new tensor of the same shape."""
        if x_one_sample.ndim not in (2, 3):
            raise ValueError(f"apply_stream expects one sample of shape (C, H, W) or (C, L), got "
                             f"{tuple(x_one_sample.shape)}")
        return self.shift_at(t).apply(x_one_sample.unsqueeze(0), generator)[0]

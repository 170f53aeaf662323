"""Input shifts: how the samples a deployed model sees can differ from the ones it was trained on.

Each shift is a pure function of a float batch, ``(N, C, H, W)`` images or ``(N, C, L)`` series,
that returns a new tensor and leaves its input untouched. Shifts that draw random numbers take an
explicit ``torch.Generator`` (or an integer seed), so the same seed gives the same batch bit for bit.
Everything is vectorized over the batch: one call draws the noise or builds the sampling grids of
all samples at once.

The ``Shift`` objects at the bottom wrap these functions as frozen dataclasses with a canonical
``name`` (the spec string that ``parse_shift`` reads back) and ``apply(x, generator)``, so that an
experiment can carry "what changed" as plain data and write it into its result record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

GeneratorLike = torch.Generator | int


def as_generator(generator: GeneratorLike | None, what: str = "this shift") -> torch.Generator:
    """Return ``generator`` itself, or a fresh CPU generator seeded with it if it is an int.

    Raises ValueError for ``None``: there is no hidden global random state to fall back on.
    """
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(generator)
    raise ValueError(f"{what} draws random numbers and needs a torch.Generator or an int seed, "
                     f"got {generator!r}")


def _check_batch(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{what} expects a floating-point tensor, got "
                        f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.ndim not in (3, 4):
        raise ValueError(f"{what} expects a batch of shape (N, C, H, W) or (N, C, L), "
                         f"got shape {tuple(x.shape)}")


def _uniform(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) draws made on the generator's device, then moved next to ``like``."""
    u = torch.rand(shape, generator=generator, dtype=like.dtype, device=generator.device)
    return u.to(like.device)


def gaussian_noise(x: torch.Tensor, sigma: float, generator: GeneratorLike) -> torch.Tensor:
    """``x + N(0, sigma^2)`` elementwise, ``sigma`` in input units (sensor or channel noise)."""
    _check_batch(x, "gaussian_noise")
    if not sigma >= 0:
        raise ValueError(f"gaussian_noise: sigma must be >= 0, got {sigma}")
    g = as_generator(generator, "gaussian_noise")
    noise = torch.randn(x.shape, generator=g, dtype=x.dtype, device=g.device).to(x.device)
    return x + sigma * noise


def white_noise(x: torch.Tensor, amplitude: float, generator: GeneratorLike) -> torch.Tensor:
    """``x + U[-amplitude, amplitude)`` elementwise: bounded, zero-mean noise of variance a^2/3."""
    _check_batch(x, "white_noise")
    if not amplitude >= 0:
        raise ValueError(f"white_noise: amplitude must be >= 0, got {amplitude}")
    g = as_generator(generator, "white_noise")
    return x + amplitude * (2.0 * _uniform(tuple(x.shape), g, x) - 1.0)


def contrast_offset(x: torch.Tensor, contrast: float = 1.0, offset: float = 0.0) -> torch.Tensor:
    """Scale each sample's deviation from its own mean by ``contrast`` and add ``offset``.

    ``x' = contrast * (x - m) + m + offset`` where ``m`` is the mean of the sample over all its
    channels and positions. Scaling about the sample mean changes contrast without moving the
    overall brightness (which is what ``offset`` is for), so the two shifts are independent; a
    single mean per sample (not per channel) keeps colour or sensor-channel balance unchanged.
    It is evaluated as ``contrast * x + (1 - contrast) * m + offset`` so that ``contrast=1`` is an
    exact ``x + offset`` and ``contrast=0`` an exact ``m + offset``.
    """
    _check_batch(x, "contrast_offset")
    if not contrast >= 0:
        raise ValueError(f"contrast_offset: contrast must be >= 0, got {contrast}")
    m = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
    return contrast * x + (1.0 - contrast) * m + offset


def _affine_thetas(
    n: int, h: int, w: int, angle_deg: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    """``affine_grid`` matrices (N, 2, 3), float64, for per-sample angle/translation/scale.

    In pixel coordinates centred on the image (x right, y down) the forward map is
    ``p_out = s * R(angle) p_in + t`` with ``R`` a counter-clockwise rotation as displayed.
    ``affine_grid`` wants the inverse (output position -> input position) in normalized
    coordinates; with ``align_corners=False`` a pixel offset ``u`` from the centre is ``u * 2 / size``
    there, hence the ``D A^-1 D^-1`` conjugation, which keeps rotations right on non-square images.
    """
    a = torch.deg2rad(angle_deg)
    cos, sin = torch.cos(a) / scale, torch.sin(a) / scale
    # A^-1 = R(-angle) / s in (x right, y down) pixel coordinates.
    inv = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    d = torch.tensor([2.0 / w, 2.0 / h], dtype=torch.float64)
    lin = d[:, None] * inv / d[None, :]
    shift = -(d * (inv @ torch.stack([tx, ty], -1)[..., None])[..., 0])
    return torch.cat([lin, shift[..., None]], dim=-1).expand(n, 2, 3)


def affine_transform(
    x: torch.Tensor,
    angle_deg: float = 0.0,
    translate: tuple[float, float] = (0.0, 0.0),
    scale: float = 1.0,
    *,
    random: bool = False,
    generator: GeneratorLike | None = None,
) -> torch.Tensor:
    """Rotate, scale and translate each image of an ``(N, C, H, W)`` batch about its centre.

    ``angle_deg`` is counter-clockwise as displayed (row 0 at the top), ``translate = (dx, dy)``
    moves the content right/down by that many pixels, ``scale > 1`` enlarges it. Sampling is
    bilinear, positions outside the image read as zero (``grid_sample`` zeros padding), and the grid
    is computed in float64 so whole-pixel translations and the identity reproduce the input to
    float tolerance.

    With ``random=True`` each sample draws its own transform (with ``generator``): angle uniform in
    ``[-angle_deg, angle_deg]``, shift uniform in ``[-dx, dx] x [-dy, dy]`` (sub-pixel), and scale
    log-uniform between ``1/scale`` and ``scale`` (so zooming in and out are equally likely).
    Time series have no spatial transform: a 3-D input is an error.
    """
    if isinstance(x, torch.Tensor) and x.ndim == 3:
        raise ValueError("affine_transform applies to images (N, C, H, W); got a 3-D batch "
                         f"{tuple(x.shape)}, which reads as time series (N, C, L) -- use noise or "
                         "contrast/offset shifts for series")
    _check_batch(x, "affine_transform")
    if not scale > 0:
        raise ValueError(f"affine_transform: scale must be > 0, got {scale}")
    n, _, h, w = x.shape
    f64 = torch.float64
    if random:
        g = as_generator(generator, "affine_transform(random=True)")
        u = 2.0 * torch.rand((n, 4), generator=g, dtype=f64, device=g.device).cpu() - 1.0
        angles = u[:, 0] * angle_deg
        tx, ty = u[:, 1] * translate[0], u[:, 2] * translate[1]
        scales = torch.exp(u[:, 3] * math.log(scale))
    else:
        angles = torch.tensor(float(angle_deg), dtype=f64)
        tx = torch.tensor(float(translate[0]), dtype=f64)
        ty = torch.tensor(float(translate[1]), dtype=f64)
        scales = torch.tensor(float(scale), dtype=f64)
    theta = _affine_thetas(n, h, w, angles, tx, ty, scales).to(x.device)
    grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
    out = F.grid_sample(x.to(f64), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.to(x.dtype)


# --- Shift objects ----------------------------------------------------------------------------


@runtime_checkable
class Shift(Protocol):
    """What every shift offers: a canonical spec ``name`` and ``apply(x, generator) -> x``."""

    @property
    def name(self) -> str: ...

    def apply(self, x: torch.Tensor, generator: GeneratorLike | None = None) -> torch.Tensor: ...


def format_number(v: float) -> str:
    """Shortest exact text for a number in a spec: ``15`` rather than ``15.0``, ``0.3``, ``1e-05``."""
    v = float(v)
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


def _nonnegative(kind: str, field: str, v: float) -> None:
    if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
        raise ValueError(f"{kind}: {field} must be a finite number >= 0, got {v!r}")


@dataclass(frozen=True)
class NoShift:
    """The identity: the deployed model sees the distribution it was trained on."""

    kind: ClassVar[str] = "none"

    @property
    def name(self) -> str:
        return "none"

    def apply(self, x: torch.Tensor, generator: GeneratorLike | None = None) -> torch.Tensor:
        return x.clone()


@dataclass(frozen=True)
class GaussianNoise:
    """Additive Gaussian noise of standard deviation ``sigma`` (input units). Spec ``noise:0.3``."""

    sigma: float
    kind: ClassVar[str] = "noise"

    def __post_init__(self) -> None:
        _nonnegative(self.kind, "sigma", self.sigma)

    @property
    def name(self) -> str:
        return f"{self.kind}:{format_number(self.sigma)}"

    def apply(self, x: torch.Tensor, generator: GeneratorLike | None = None) -> torch.Tensor:
        return gaussian_noise(x, self.sigma, as_generator(generator, self.name))


@dataclass(frozen=True)
class WhiteNoise:
    """Additive uniform noise in ``[-amplitude, amplitude]``. Spec ``white:0.3``."""

    amplitude: float
    kind: ClassVar[str] = "white"

    def __post_init__(self) -> None:
        _nonnegative(self.kind, "amplitude", self.amplitude)

    @property
    def name(self) -> str:
        return f"{self.kind}:{format_number(self.amplitude)}"

    def apply(self, x: torch.Tensor, generator: GeneratorLike | None = None) -> torch.Tensor:
        return white_noise(x, self.amplitude, as_generator(generator, self.name))


def _random_suffix(random: bool) -> str:
    return ":random" if random else ""


@dataclass(frozen=True)
class Rotate:
    """Rotation by ``angle`` degrees (counter-clockwise); with ``random``, uniform in
    ``[-angle, angle]`` per sample. Specs ``rotate:15``, ``rotate:15:random``."""

    angle: float
    random: bool = False
    kind: ClassVar[str] = "rotate"

    def __post_init__(self) -> None:
        if not (isinstance(self.angle, int | float) and math.isfinite(self.angle)):
            raise ValueError(f"rotate: angle must be a finite number, got {self.angle!r}")

    @property
    def name(self) -> str:
        return f"{self.kind}:{format_number(self.angle)}{_random_suffix(self.random)}"

    def apply(self, x: torch.Tensor, generator: GeneratorLike | None = None) -> torch.Tensor:
        return affine_transform(x, angle_deg=self.angle, random=self.random, generator=generator)


@dataclass(frozen=True)
class Translate:
    """Translation by ``(dx, dy)`` pixels (right, down), ``dy`` defaulting to ``dx``; with
    ``random``, uniform in ``[-dx, dx] x [-dy, dy]`` per sample. Specs ``translate:1``
    (dx = dy = 1), ``translate:2,-1``, ``translate:2:random``."""

    dx: float
    dy: float | None = None
    random: bool = False
    kind: ClassVar[str] = "translate"

    def __post_init__(self) -> None:
        if self.dy is None:
            object.__setattr__(self, "dy", self.dx)
        for field, v in (("dx", self.dx), ("dy", self.dy)):
            if not (isinstance(v, int | float) and math.isfinite(v)):
                raise ValueError(f"translate: {field} must be a finite number, got {v!r}")

    @property
    def name(self) -> str:
        amount = format_number(self.dx)
        if self.dy != self.dx:
            amount += "," + format_number(self.dy)
        return f"{self.kind}:{amount}{_random_suffix(self.random)}"

    def apply(self, x: torch.Tensor, generator: GeneratorLike | None = None) -> torch.Tensor:
        return affine_transform(x, translate=(self.dx, self.dy), random=self.random,
                                generator=generator)


@dataclass(frozen=True)
class Scale:
    """Zoom about the image centre by ``factor`` (> 1 enlarges); with ``random``, log-uniform
    between ``1/factor`` and ``factor`` per sample. Specs ``scale:1.2``, ``scale:1.2:random``."""

    factor: float
    random: bool = False
    kind: ClassVar[str] = "scale"

    def __post_init__(self) -> None:
        if not (isinstance(self.factor, int | float) and math.isfinite(self.factor)
                and self.factor > 0):
            raise ValueError(f"scale: factor must be a finite number > 0, got {self.factor!r}")

    @property
    def name(self) -> str:
        return f"{self.kind}:{format_number(self.factor)}{_random_suffix(self.random)}"

    def apply(self, x: torch.Tensor, generator: GeneratorLike | None = None) -> torch.Tensor:
        return affine_transform(x, scale=self.factor, random=self.random, generator=generator)


@dataclass(frozen=True)
class Contrast:
    """Contrast scaled by ``factor`` about each sample's mean (see ``contrast_offset``).
    Spec ``contrast:0.5``."""

    factor: float
    kind: ClassVar[str] = "contrast"

    def __post_init__(self) -> None:
        _nonnegative(self.kind, "factor", self.factor)

    @property
    def name(self) -> str:
        return f"{self.kind}:{format_number(self.factor)}"

    def apply(self, x: torch.Tensor, generator: GeneratorLike | None = None) -> torch.Tensor:
        return contrast_offset(x, contrast=self.factor)


@dataclass(frozen=True)
class Offset:
    """A constant ``amount`` added to every input value (sensor bias). Spec ``offset:0.2``."""

    amount: float
    kind: ClassVar[str] = "offset"

    def __post_init__(self) -> None:
        if not (isinstance(self.amount, int | float) and math.isfinite(self.amount)):
            raise ValueError(f"offset: amount must be a finite number, got {self.amount!r}")

    @property
    def name(self) -> str:
        return f"{self.kind}:{format_number(self.amount)}"

    def apply(self, x: torch.Tensor, generator: GeneratorLike | None = None) -> torch.Tensor:
        return contrast_offset(x, offset=self.amount)


@dataclass(frozen=True)
class Compose:
    """Several shifts applied left to right, all drawing from the same generator in turn.
    Spec: their names joined with ``+``, e.g. ``rotate:10+noise:0.1``."""

    shifts: tuple[Shift, ...]

    def __post_init__(self) -> None:
        flat: list[Shift] = []
        for s in self.shifts:
            flat.extend(s.shifts if isinstance(s, Compose) else (s,))
        if not flat:
            raise ValueError("Compose needs at least one shift")
        object.__setattr__(self, "shifts", tuple(flat))

    @property
    def name(self) -> str:
        return "+".join(s.name for s in self.shifts)

    def apply(self, x: torch.Tensor, generator: GeneratorLike | None = None) -> torch.Tensor:
        if isinstance(generator, int) and not isinstance(generator, bool):
            generator = as_generator(generator)  # one stream for all parts, not one seed each
        for s in self.shifts:
            x = s.apply(x, generator)
        return x


def is_random(shift: Shift) -> bool:
    """Whether applying ``shift`` draws random numbers (and so needs a generator)."""
    if isinstance(shift, Compose):
        return any(is_random(s) for s in shift.shifts)
    if isinstance(shift, GaussianNoise | WhiteNoise):
        return True
    return bool(getattr(shift, "random", False))

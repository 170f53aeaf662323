"""Tests for edgetrain.shift: input shifts, specs, stream orders and schedules, weight drift."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgetrain.model import Dense, DeployedModel, ReLU
from edgetrain.quant import Affine, FixedPoint
from edgetrain.shift import (
    Compose,
    GaussianNoise,
    NoShift,
    Offset,
    Rotate,
    Schedule,
    Translate,
    WeightDrift,
    affine_transform,
    analog_drift,
    bit_flips,
    class_clustered_order,
    contrast_offset,
    drift_model,
    gaussian_noise,
    is_random,
    parse_drift,
    parse_schedule,
    parse_shift,
    white_noise,
)

FAST = settings(max_examples=40, deadline=None)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(seed: int = 0, shape: tuple[int, ...] = (3, 2, 7, 9)) -> torch.Tensor:
    return torch.randn(shape, generator=gen(seed))


# --- noise, contrast, offset --------------------------------------------------------------------


def test_gaussian_noise_has_the_requested_std_and_leaves_input_untouched():
    x = torch.full((40, 5, 1000), 2.0)
    y = gaussian_noise(x, 0.3, gen(1))
    d = y - x
    assert torch.equal(x, torch.full((40, 5, 1000), 2.0))
    assert abs(d.mean().item()) < 0.003  # 3 standard errors of the mean of 200k draws
    assert d.std().item() == pytest.approx(0.3, rel=0.01)


def test_white_noise_is_bounded_zero_mean_uniform():
    x = torch.zeros(20, 1, 100, 100)
    d = white_noise(x, 0.5, gen(2)) - x
    assert d.abs().max().item() <= 0.5
    assert abs(d.mean().item()) < 0.003
    assert d.var().item() == pytest.approx(0.5**2 / 3, rel=0.02)
    # each tenth of the interval holds about a tenth of the draws
    hist = torch.histc(d, bins=10, min=-0.5, max=0.5) / d.numel()
    assert torch.allclose(hist, torch.full((10,), 0.1), atol=0.005)


def test_noise_needs_a_generator_and_rejects_negative_amounts():
    x = torch.zeros(2, 1, 4)
    with pytest.raises(ValueError, match="Generator"):
        gaussian_noise(x, 0.1, None)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_noise(x, -0.1, gen())
    with pytest.raises(ValueError, match="amplitude"):
        white_noise(x, -1.0, gen())
    with pytest.raises(TypeError):
        gaussian_noise(torch.zeros(2, 1, 4, dtype=torch.int64), 0.1, gen())
    with pytest.raises(ValueError, match="shape"):
        gaussian_noise(torch.zeros(4, 4), 0.1, gen())


def test_contrast_offset_exact_on_hand_made_images():
    x = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]], [[[0.0, 0.0], [0.0, 4.0]]]])  # means 4 and 1
    y = contrast_offset(x, contrast=0.5, offset=0.25)
    expected = torch.tensor([[[[2.75, 3.75], [4.75, 5.75]]], [[[0.75, 0.75], [0.75, 2.75]]]])
    assert torch.equal(y, expected)
    assert torch.equal(contrast_offset(x), x)
    assert torch.equal(contrast_offset(x, offset=-1.0), x - 1.0)
    assert torch.equal(contrast_offset(x, contrast=0.0)[0], torch.full((1, 2, 2), 4.0))


def test_contrast_uses_one_mean_over_all_channels_of_a_series():
    x = torch.tensor([[[0.0, 2.0], [4.0, 6.0]]])  # (N=1, C=2, L=2), mean 3
    y = contrast_offset(x, contrast=2.0)
    assert torch.equal(y, torch.tensor([[[-3.0, 1.0], [5.0, 9.0]]]))


def test_noise_and_contrast_work_on_time_series():
    x = torch.randn(4, 3, 50, generator=gen())
    assert gaussian_noise(x, 0.1, gen()).shape == x.shape
    assert white_noise(x, 0.1, gen()).shape == x.shape
    assert parse_shift("contrast:0.5+offset:1").apply(x).shape == x.shape


# --- spatial transforms -------------------------------------------------------------------------


def shifted_with_zeros(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Content moved right by dx and down by dy, vacated pixels zero (the reference)."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def test_affine_identity():
    x = images()
    torch.testing.assert_close(affine_transform(x), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(affine_transform(x, angle_deg=0.0, scale=1.0), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(affine_transform(x, 360.0), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dx,dy", [(1, 0), (0, 1), (-2, 1), (3, -2), (0, 0)])
def test_whole_pixel_translation_moves_content_exactly(dx: int, dy: int):
    x = images(shape=(2, 3, 6, 9))
    y = affine_transform(x, translate=(dx, dy))
    torch.testing.assert_close(y, shifted_with_zeros(x, dx, dy), atol=1e-6, rtol=0)
    assert Translate(dx, dy).apply(x).shape == x.shape


def test_rotation_matches_exact_quarter_turns():
    x = images(shape=(2, 3, 6, 6))
    # counter-clockwise as displayed, like torch.rot90 from the row axis towards the column axis
    torch.testing.assert_close(affine_transform(x, 90.0), torch.rot90(x, 1, (-2, -1)),
                               atol=1e-5, rtol=0)
    x = images(shape=(2, 1, 5, 8))  # non-square: a half turn still maps the image onto itself
    torch.testing.assert_close(affine_transform(x, 180.0), torch.rot90(x, 2, (-2, -1)),
                               atol=1e-5, rtol=0)


def test_scale_keeps_the_centre_and_zooms():
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 1.0
    x[0, 0, 4, 6] = 1.0  # two pixels right of the centre
    y = affine_transform(x, scale=2.0)
    assert y[0, 0, 4, 4].item() == pytest.approx(1.0)
    assert y[0, 0, 4, 8].item() == pytest.approx(1.0)  # now four pixels right
    assert y[0, 0, 4, 6].item() == pytest.approx(0.0)


def test_affine_transform_rejects_time_series_and_bad_args():
    with pytest.raises(ValueError, match="time series"):
        affine_transform(torch.zeros(2, 3, 10), 15.0)
    with pytest.raises(ValueError, match="time series"):
        parse_shift("rotate:15").apply(torch.zeros(2, 3, 10))
    with pytest.raises(ValueError, match="scale"):
        affine_transform(images(), scale=0.0)
    with pytest.raises(ValueError, match="Generator"):
        affine_transform(images(), 10.0, random=True)


def test_random_affine_draws_per_sample_and_is_reproducible():
    x = images(shape=(1, 1, 8, 8)).expand(6, 1, 8, 8)
    y = affine_transform(x, 20.0, (1.5, 1.5), 1.2, random=True, generator=gen(3))
    assert torch.equal(y, affine_transform(x, 20.0, (1.5, 1.5), 1.2, random=True, generator=3))
    assert not torch.allclose(y[0], y[1])  # each sample its own transform
    # zero ranges draw the identity
    z = affine_transform(x, 0.0, (0.0, 0.0), 1.0, random=True, generator=gen(3))
    torch.testing.assert_close(z, x, atol=1e-6, rtol=0)


# --- Shift objects and specs --------------------------------------------------------------------

CANONICAL = ["none", "noise:0.3", "white:0.3", "rotate:15", "translate:1", "scale:1.2",
             "contrast:0.5", "offset:0.2", "offset:-0.2", "noise:1e-05", "translate:2,-1",
             "rotate:15:random", "translate:2:random", "scale:1.2:random", "rotate:10+noise:0.1",
             "scale:0.9+rotate:-5+white:0.05+offset:0.1"]


@pytest.mark.parametrize("spec", CANONICAL)
def test_parse_shift_round_trips(spec: str):
    s = parse_shift(spec)
    assert s.name == spec
    assert parse_shift(s.name) == s


def test_parse_shift_values_and_normal_form():
    assert parse_shift("noise:0.3") == GaussianNoise(0.3)
    assert parse_shift("none") == NoShift()
    assert parse_shift(" Rotate:15.0 ") == Rotate(15.0)
    assert parse_shift("rotate:15.0").name == "rotate:15"
    assert parse_shift("translate:1,1").name == "translate:1"
    assert parse_shift("translate:2,-1") == Translate(2.0, -1.0)
    assert parse_shift("rotate:10 + noise:0.1") == Compose((Rotate(10.0), GaussianNoise(0.1)))
    assert parse_shift("noise:1e+3+offset:1") == Compose((GaussianNoise(1000.0), Offset(1.0)))


@pytest.mark.parametrize("spec", ["blur:1", "noise:abc", "noise:-0.1", "white:-1", "", "rotate",
                                  "rotate:1:2", "scale:0", "contrast:-1", "noise:inf", "none:1",
                                  "rotate:10+", "translate:1,2,3", "noise:0.1+foo:2"])
def test_parse_shift_errors_name_the_spec_and_list_kinds(spec: str):
    with pytest.raises(ValueError) as info:
        parse_shift(spec)
    msg = str(info.value)
    assert repr(spec) in msg
    assert "valid kinds" in msg and "noise:<sigma>" in msg and "rotate:<degrees>" in msg


def test_compose_applies_left_to_right():
    x = images(shape=(2, 1, 6, 6))
    both = parse_shift("rotate:90+translate:1,0").apply(x)
    manual = affine_transform(affine_transform(x, 90.0), translate=(1, 0))
    assert torch.equal(both, manual)
    other = affine_transform(affine_transform(x, translate=(1, 0)), 90.0)
    assert not torch.allclose(both, other)  # the order matters, and it is the written one


def test_shifts_are_deterministic_per_seed():
    x = images()
    s = parse_shift("rotate:10:random+noise:0.2+white:0.1")
    assert is_random(s) and not is_random(parse_shift("rotate:10+offset:1"))
    a, b = s.apply(x, gen(5)), s.apply(x, gen(5))
    assert torch.equal(a, b)
    assert torch.equal(a, s.apply(x, 5))  # an int seed means a generator seeded with it
    assert not torch.equal(a, s.apply(x, gen(6)))
    with pytest.raises(ValueError, match="Generator"):
        s.apply(x)


# --- stream orders and schedules ----------------------------------------------------------------


def runs_of(labels: list[int]) -> list[tuple[int, int]]:
    """Maximal runs of equal labels as (label, length)."""
    out: list[tuple[int, int]] = []
    for v in labels:
        if out and out[-1][0] == v:
            out[-1] = (v, out[-1][1] + 1)
        else:
            out.append((v, 1))
    return out


def test_class_clustered_order_aligned_runs():
    y = torch.arange(5).repeat_interleave(torch.tensor([20, 10, 30, 10, 40]))
    y = y[torch.randperm(len(y), generator=gen())]
    perm = class_clustered_order(y, 10, gen(1))
    assert torch.equal(torch.sort(perm).values, torch.arange(len(y)))
    blocks = y[perm].reshape(-1, 10)
    assert bool((blocks == blocks[:, :1]).all())  # each block of 10 is one class
    assert torch.bincount(blocks[:, 0]).tolist() == [2, 1, 3, 1, 4]
    assert len(runs_of(y[perm].tolist())) > 1


def test_class_clustered_order_general_labels_and_remainders():
    y = torch.tensor([7] * 23 + [-1] * 5 + [3] * 12)
    perm = class_clustered_order(y, 4, gen(2))
    assert torch.equal(torch.sort(perm).values, torch.arange(len(y)))
    runs = runs_of(y[perm].tolist())
    # 6 + 2 + 3 runs of at most 4 samples each; neighbouring runs may share a class
    assert len(runs) <= 11
    for label, length in runs:
        assert length <= {7: 23, -1: 5, 3: 12}[label]
    assert torch.equal(perm, class_clustered_order(y, 4, gen(2)))
    assert not torch.equal(perm, class_clustered_order(y, 4, gen(3)))
    assert sorted(class_clustered_order(y, 1, gen(0)).tolist()) == list(range(len(y)))


def test_class_clustered_order_rejects_bad_input():
    with pytest.raises(ValueError, match="run_length"):
        class_clustered_order(torch.tensor([0, 1]), 0, gen())
    with pytest.raises(ValueError, match="integer label"):
        class_clustered_order(torch.tensor([0.0, 1.0]), 2, gen())


def test_schedule_switch_points_and_cycling():
    clean, noisy = NoShift(), GaussianNoise(0.3)
    sch = Schedule((clean, noisy), every=3)
    assert [sch.shift_at(t) for t in range(8)] == [clean] * 3 + [noisy] * 3 + [clean] * 2
    assert sch.switch_points(10) == [3, 6, 9]
    assert Schedule((clean,), every=3).switch_points(10) == []
    assert sch.name == "none|noise:0.3@3"
    assert parse_schedule(sch.name) == sch
    with pytest.raises(ValueError, match="every"):
        Schedule((clean,), every=0)
    with pytest.raises(ValueError, match="@"):
        parse_schedule("none|noise:0.3")


def test_schedule_apply_stream_on_one_sample():
    sch = Schedule((NoShift(), Offset(1.0)), every=2)
    x = torch.randn(1, 5, 5, generator=gen())
    assert torch.equal(sch.apply_stream(x, 1), x)
    assert torch.equal(sch.apply_stream(x, 2), x + 1.0)
    series = torch.randn(3, 20, generator=gen())
    noisy = Schedule((GaussianNoise(0.1),), every=5)
    assert torch.equal(noisy.apply_stream(series, 0, gen(4)), noisy.apply_stream(series, 0, gen(4)))
    with pytest.raises(ValueError, match="one sample"):
        sch.apply_stream(torch.zeros(2, 1, 5, 5), 0)


# --- stored-weight drift ------------------------------------------------------------------------

formats = st.one_of(
    st.builds(FixedPoint, st.integers(2, 20), st.integers(-4, 8), st.just(True)),
    st.builds(FixedPoint, st.integers(1, 20), st.integers(-4, 8), st.just(False)),
    st.builds(lambda b, s: Affine(b, s, (0.1,), (0,)), st.integers(2, 20), st.booleans()),
)


@st.composite
def format_and_raw(draw: st.DrawFn) -> tuple:
    fmt = draw(formats)
    values = draw(st.lists(st.integers(fmt.raw_min, fmt.raw_max), min_size=1, max_size=30))
    return fmt, torch.tensor(values, dtype=torch.int64)


@FAST
@given(format_and_raw(), st.floats(0.0, 1.0), st.integers(0, 2**31))
def test_bit_flips_stay_in_range_and_p1_inverts_every_bit(fr, p, seed):
    fmt, raw = fr
    out = bit_flips(raw, fmt, p, gen(seed))
    assert out.dtype == torch.int64 and out.shape == raw.shape
    assert int(out.min()) >= fmt.raw_min and int(out.max()) <= fmt.raw_max
    assert torch.equal(out, bit_flips(raw, fmt, p, gen(seed)))
    assert torch.equal(bit_flips(raw, fmt, 0.0, gen(seed)), raw)
    inverted = bit_flips(raw, fmt, 1.0, gen(seed))
    expected = -raw - 1 if fmt.raw_min < 0 else fmt.raw_max - raw  # ~raw within the word
    assert torch.equal(inverted, expected)


def test_bit_flips_examples():
    s8, u8 = FixedPoint(8, 3), FixedPoint(8, 3, signed=False)
    raw = torch.tensor([5, 0, -128, 127])
    assert bit_flips(raw, s8, 1.0, gen()).tolist() == [-6, -1, 127, -128]
    assert bit_flips(torch.tensor([5, 0, 255]), u8, 1.0, gen()).tolist() == [250, 255, 0]


def test_bit_flip_rate_matches_p():
    fmt = FixedPoint(16, 6)
    raw = torch.randint(fmt.raw_min, fmt.raw_max + 1, (20000,), generator=gen())
    out = bit_flips(raw, fmt, 0.02, gen(1))
    mask = (1 << 16) - 1
    diff = (out & mask) ^ (raw & mask)
    flipped = sum(int(((diff >> k) & 1).sum()) for k in range(16))
    rate = flipped / (raw.numel() * 16)
    assert rate == pytest.approx(0.02, abs=0.001)  # ~5 standard errors of 320k Bernoulli draws


@FAST
@given(format_and_raw(), st.floats(0.0, 50.0), st.integers(0, 2**31))
def test_analog_drift_stays_in_range(fr, sigma, seed):
    fmt, raw = fr
    out = analog_drift(raw, fmt, sigma, gen(seed))
    assert out.dtype == torch.int64 and out.shape == raw.shape
    assert int(out.min()) >= fmt.raw_min and int(out.max()) <= fmt.raw_max
    assert torch.equal(out, analog_drift(raw, fmt, sigma, gen(seed)))
    assert torch.equal(analog_drift(raw, fmt, 0.0, gen(seed)), raw)


def test_analog_drift_is_unbiased_with_the_requested_spread():
    fmt = FixedPoint(16, 6)  # wrap overflow: drift must still saturate, never wrap
    raw = torch.randint(-1000, 1000, (50000,), generator=gen())
    d = (analog_drift(raw, fmt, 4.0, gen(1)) - raw).to(torch.float64)
    assert abs(d.mean().item()) < 0.06  # ~3 standard errors
    assert d.std().item() == pytest.approx(math.sqrt(16 + 1 / 12), rel=0.02)  # + rounding
    assert set(torch.unique(d).tolist()) <= set(range(-30, 31))


def test_analog_drift_saturates_at_the_range_ends():
    fmt = FixedPoint(8, 3)
    top = torch.full((10000,), fmt.raw_max)
    bottom = torch.full((10000,), fmt.raw_min)
    up, down = analog_drift(top, fmt, 4.0, gen(1)), analog_drift(bottom, fmt, 4.0, gen(2))
    assert int(up.max()) == fmt.raw_max and int(down.min()) == fmt.raw_min
    # about half the draws push past the end and pile up on it (plus those rounding onto it)
    assert 0.5 < (up == fmt.raw_max).float().mean().item() < 0.6
    assert 0.5 < (down == fmt.raw_min).float().mean().item() < 0.6


def test_drift_rejects_bad_arguments():
    fmt = FixedPoint(8, 3)
    with pytest.raises(ValueError, match="range"):
        bit_flips(torch.tensor([200]), fmt, 0.1, gen())
    with pytest.raises(ValueError, match="probability"):
        bit_flips(torch.tensor([1]), fmt, 1.5, gen())
    with pytest.raises(ValueError, match="sigma"):
        analog_drift(torch.tensor([1]), fmt, -1.0, gen())
    with pytest.raises(TypeError):
        analog_drift(torch.tensor([1.0]), fmt, 1.0, gen())


def tiny_model() -> DeployedModel:
    a8, w8, b32 = FixedPoint(8, 3), FixedPoint(8, 1), FixedPoint(32, 12)
    g = gen(9)
    d0 = Dense(torch.randint(-128, 128, (6, 4), generator=g), torch.randint(-500, 500, (6,), generator=g),
               a8, w8, b32, a8)
    d1 = Dense(torch.randint(-128, 128, (3, 6), generator=g), torch.randint(-500, 500, (3,), generator=g),
               a8, w8, b32, a8)
    return DeployedModel((4,), a8, (d0, ReLU(a8), d1))


def test_drift_model_changes_only_chosen_params():
    model = tiny_model()
    before = {n: t.clone() for n, t, _ in model.params()}
    drifted = drift_model(model, "digital", 0.2, gen(1), params={"2.weight"})
    after = {n: t for n, t, _ in drifted.params()}
    for n, t, _ in model.params():
        assert torch.equal(t, before[n])  # the original model is untouched
    assert not torch.equal(after["2.weight"], before["2.weight"])
    for n in ("0.weight", "0.bias", "2.bias"):
        assert torch.equal(after[n], before[n])
    everything = drift_model(model, "analog", 3.0, gen(1))
    assert all(not torch.equal(t, before[n]) for n, t, _ in everything.params())
    for _, t, fmt in everything.params():
        assert fmt.raw_min <= int(t.min()) and int(t.max()) <= fmt.raw_max
    again = drift_model(model, "analog", 3.0, gen(1))
    assert all(torch.equal(t, u) for (_, t, _), (_, u, _) in zip(everything.params(),
                                                                  again.params(), strict=True))
    with pytest.raises(KeyError, match="9.weight"):
        drift_model(model, "analog", 1.0, gen(), params={"9.weight"})
    with pytest.raises(ValueError, match="analog"):
        drift_model(model, "thermal", 1.0, gen())


@pytest.mark.parametrize("spec", ["analog:4", "digital:0.0001", "analog:1@1000", "none",
                                  "digital:1e-07@50"])
def test_parse_drift_round_trips(spec: str):
    d = parse_drift(spec)
    assert d.name == spec and parse_drift(d.name) == d


def test_weight_drift_spec_values_and_schedule():
    assert parse_drift("analog:4") == WeightDrift("analog", 4.0, 0)
    assert parse_drift("digital:1e-4") == WeightDrift("digital", 1e-4, 0)
    once, often = parse_drift("analog:4"), parse_drift("analog:1@100")
    assert [once.due(t) for t in (0, 1, 100)] == [True, False, False]
    assert [often.due(t) for t in (0, 1, 100, 150, 200)] == [True, False, True, False, True]
    model = tiny_model()
    assert parse_drift("none").apply(model, gen()) is model
    w = once.apply(model, gen(3), params={"0.bias"})
    assert not torch.equal(w.param("0.bias")[0], model.param("0.bias")[0])
    for bad in ["thermal:1", "analog:-1", "digital:2", "analog:x", "analog:1@x", "none:3"]:
        with pytest.raises(ValueError, match="drift spec"):
            parse_drift(bad)

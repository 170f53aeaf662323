"""Tests of ``edgetrain.model.population.forward_int_population``: for every member, bit for bit
the ``forward_int`` of the model with that member's parameters (overflow behaviour included), the
shared prefix run once, and clear errors for malformed members or input."""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgetrain.model import Dense, DeployedModel, ReLU
from edgetrain.model import population as population_module
from edgetrain.model.arch import build_float_net
from edgetrain.model.convert import convert
from edgetrain.model.forward import AccumulatorOverflowError, _constants, forward_int, quantize_input
from edgetrain.model.population import forward_int_population
from edgetrain.quant import FixedPoint

ARCHS = (("mlp", (1, 8, 8)), ("cnn", (1, 8, 8)), ("cnn", (3, 20)))
SCHEMES = ("fixed16_6", "int8", "uint8", "fixed32_16")  # fixed32_16: int64 fallback, accumulators wrap
# Which parameters vary, as a function of the model's parameter names (in layer order).
SUBSETS = {
    "last layer": lambda names: names[-2:],
    "last bias": lambda names: names[-1:],
    "middle layer": lambda names: names[2:4],
    "all": lambda names: names,
    "first weight, middle bias": lambda names: [names[0], names[3]],
    "weights only": lambda names: names[0::2],
    "biases only": lambda names: names[1::2],
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@functools.cache
def converted(arch: str, shape: tuple[int, ...], scheme: str) -> tuple[DeployedModel, torch.Tensor]:
    """A converted (untrained) model and a raw input batch of 5, built once per case."""
    g = torch.Generator().manual_seed(7)
    model, _ = convert(build_float_net(arch, shape, 10, seed=0), torch.rand((64, *shape), generator=g), scheme)
    return model, quantize_input(model, torch.rand((5, *shape), generator=g))


def overflow_policy(scheme: str) -> str:
    """fixed32_16 accumulators (32 fractional bits) leave the 32-bit range: emulate the wrap."""
    return "wrap" if scheme == "fixed32_16" else "raise"


def perturbed(model: DeployedModel, names: list[str], n_pop: int, seed: int, spread: int = 50) -> dict:
    """Members near the model's own parameters: original + U[-spread, spread], clamped to the format."""
    g = torch.Generator().manual_seed(seed)
    members = {}
    for name in names:
        raw, fmt = model.param(name)
        noise = torch.randint(-spread, spread + 1, (n_pop, *raw.shape), generator=g)
        members[name] = (raw + noise).clamp(fmt.raw_min, fmt.raw_max)
    return members


def one_by_one(model: DeployedModel, q: torch.Tensor, members: dict, overflow: str = "raise") -> torch.Tensor:
    """The specification: a plain forward per member."""
    n_pop = next(iter(members.values())).shape[0]
    return torch.stack([forward_int(model.with_params({n: t[p] for n, t in members.items()}), q, overflow)
                        for p in range(n_pop)])


# ----------------------------------------------------------------------------------------------
# bit-exact against the per-member loop


@pytest.mark.parametrize("n_pop", [1, 3])
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize(("arch", "shape"), ARCHS)
def test_matches_member_by_member(arch, shape, scheme, n_pop):
    model, q = converted(arch, shape, scheme)
    names = [n for n, _, _ in model.params()]
    overflow = overflow_policy(scheme)
    for k, (label, pick) in enumerate(SUBSETS.items()):
        members = perturbed(model, pick(names), n_pop, seed=k)
        out = forward_int_population(model, q, members, overflow)
        assert out.dtype == torch.int64 and out.shape == (n_pop, q.shape[0], 10), label
        assert torch.equal(out, one_by_one(model, q, members, overflow)), label


def test_wide_formats_take_the_int64_path_and_members_differ():
    """The fixed32_16 cases above exercise the int64 fallback; the comparisons are not vacuous."""
    for arch, shape in ARCHS:
        model, q = converted(arch, shape, "fixed32_16")
        assert not any(_constants(layer).exact_f64 for layer in model.layers if hasattr(layer, "weight"))
        model, q = converted(arch, shape, "fixed16_6")
        out = forward_int_population(model, q, perturbed(model, [n for n, _, _ in model.params()], 3, 0, 500))
        assert not torch.equal(out[0], out[1]) and not torch.equal(out[1], out[2])


@settings(max_examples=15, deadline=None)
@given(n_pop=st.integers(1, 5), spread=st.integers(0, 3000), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_random_members_bit_exact(n_pop, spread, seed, data):
    arch, shape = data.draw(st.sampled_from(ARCHS))
    scheme = data.draw(st.sampled_from(("fixed16_6", "int8", "uint8")))
    model, q = converted(arch, shape, scheme)
    names = data.draw(st.sets(st.sampled_from([n for n, _, _ in model.params()]), min_size=1))
    members = perturbed(model, sorted(names), n_pop, seed, spread)
    try:
        want = one_by_one(model, q, members)
    except AccumulatorOverflowError:
        want = None
    if want is None:
        with pytest.raises(AccumulatorOverflowError):
            forward_int_population(model, q, members)
        want = one_by_one(model, q, members, "wrap")
        assert torch.equal(forward_int_population(model, q, members, "wrap"), want)
    else:
        assert torch.equal(forward_int_population(model, q, members), want)


def test_shared_prefix_runs_once_on_the_batch(monkeypatch):
    """Layers before the first varied one see B rows; every later one sees P * B rows."""
    model, q = converted("cnn", (1, 8, 8), "fixed16_6")  # conv, relu, pool, conv(3), relu, pool, flatten, dense
    seen = []
    plain = population_module.layer_forward_int

    def spy(layer, h, index, *args, **kwargs):
        seen.append((index, h.shape[0]))
        return plain(layer, h, index, *args, **kwargs)

    monkeypatch.setattr(population_module, "layer_forward_int", spy)
    forward_int_population(model, q, perturbed(model, ["3.weight"], 4, seed=1))
    assert seen == [(0, 5), (1, 5), (2, 5), (4, 20), (5, 20), (6, 20), (7, 20)]


# ----------------------------------------------------------------------------------------------
# accumulator overflow

F16 = FixedPoint(16, 16)  # integers in [-32768, 32767]
F16_SAT = FixedPoint(16, 16, overflow="saturate")


def overflow_model() -> DeployedModel:
    """ReLU -> Dense(4 -> 4, identity) -> Dense(4 -> 2, first row 32767 on three inputs): layer 2's
    accumulator leaves the 32-bit range when three of layer 1's outputs average above 21846."""
    first = Dense(torch.eye(4, dtype=torch.int64), torch.zeros(4, dtype=torch.int64), F16, F16, F16, F16_SAT)
    second = Dense(torch.tensor([[32767, 32767, 32767, 0], [0, 0, 0, 1]]), torch.zeros(2, dtype=torch.int64),
                   F16, F16, F16, F16_SAT)
    return DeployedModel((4,), F16, (ReLU(F16), first, second))


OVERFLOW_CASES = [
    # member 1's own weights overflow the varied layer (4 * 20000 * 32767); member 0 stays in range
    (torch.tensor([[20000] * 4, [1, 2, 3, 4]]),
     {"1.weight": torch.stack([torch.eye(4, dtype=torch.int64), torch.full((4, 4), 32767)])},
     1, r"^population member\(s\) \[1\] of 2: layer 1 \(dense\): 4 accumulator"),
    # member 0's bias saturates layer 1's outputs, so the shared layer 2 overflows for it alone
    (torch.tensor([[1, 2, 3, 4]]), {"1.bias": torch.tensor([[32767] * 4, [0] * 4, [-5] * 4])},
     0, r"^population member\(s\) \[0\] of 3: layer 2 \(dense\): 1 accumulator"),
    # the shared layer 2 overflows for every member
    (torch.tensor([[30000] * 4]), {"1.bias": torch.zeros((2, 4), dtype=torch.int64)},
     0, r"^population member\(s\) \[0, 1\] of 2: layer 2 \(dense\): 1 accumulator"),
]


@pytest.mark.parametrize(("q", "members", "first", "pattern"), OVERFLOW_CASES)
def test_overflow_raises_naming_layer_and_members(q, members, first, pattern):
    model = overflow_model()
    assert torch.equal(forward_int(model, torch.tensor([[1, 2, 3, 4]])), torch.tensor([[32767, 4]]))
    with pytest.raises(AccumulatorOverflowError, match=pattern) as caught:
        forward_int_population(model, q, members)
    with pytest.raises(AccumulatorOverflowError) as own:  # the first overflowing member's own error
        forward_int(model.with_params({n: t[first] for n, t in members.items()}), q)
    assert str(caught.value).endswith(str(own.value))
    assert torch.equal(forward_int_population(model, q, members, "wrap"), one_by_one(model, q, members, "wrap"))


# ----------------------------------------------------------------------------------------------
# bad members and input


def _mlp() -> tuple[DeployedModel, torch.Tensor]:
    return converted("mlp", (1, 8, 8), "fixed16_6")


def _raw(name: str, n_pop: int = 2) -> torch.Tensor:
    raw, _ = _mlp()[0].param(name)
    return raw.expand(n_pop, *raw.shape).clone()


BAD_MEMBERS = [
    (lambda: {"9.weight": _raw("5.weight")}, KeyError, r"no parameter '9.weight'.*valid names are \['1.weight'"),
    (lambda: {"5.weight": _raw("5.weight")[0]}, ValueError, r"members\['5.weight'\]: expected shape \[P, 10, 32\]"),
    (lambda: {"5.weight": _raw("5.weight")[:, :, :16]}, ValueError, r"expected shape \[P, 10, 32\].*got \[2, 10, 16\]"),
    (lambda: {"5.weight": _raw("5.weight").double()}, TypeError, r"members\['5.weight'\].*integers.*float64"),
    (lambda: {"5.bias": _raw("5.bias").tolist()}, TypeError, r"members\['5.bias'\] must be a torch.Tensor"),
    (lambda: {"5.bias": _raw("5.bias", 0)}, ValueError, r"members\['5.bias'\]: .*P >= 1"),
    (lambda: {"5.weight": _raw("5.weight", 3), "5.bias": _raw("5.bias", 2)}, ValueError,
     r"members\['5.bias'\] has P = 2 .* members\['5.weight'\] has P = 3"),
    (lambda: {"5.bias": _raw("5.bias", 3).index_fill(0, torch.tensor([2]), 40000)}, ValueError,
     r"members\['5.bias'\]: member\(s\) \[2\] .* outside the range of fixed16_6 \[-32768, 32767\]"),
    (lambda: {}, ValueError, r"members is empty"),
    (lambda: [("5.bias", _raw("5.bias"))], TypeError, r"members must be a dict"),
]


@pytest.mark.parametrize(("make", "exc", "pattern"), BAD_MEMBERS)
def test_bad_members_are_refused_clearly(make, exc, pattern):
    model, q = _mlp()
    with pytest.raises(exc, match=pattern):
        forward_int_population(model, q, make())


@pytest.mark.parametrize(("q", "overflow", "exc", "pattern"), [
    (torch.zeros((3, 64), dtype=torch.int64), "raise", ValueError, r"input has shape \(3, 64\).*\(N, 1, 8, 8\)"),
    (torch.zeros((3, 1, 8, 8)), "raise", TypeError, r"raw integer input.*quantize_input"),
    (torch.zeros((3, 1, 8, 8), dtype=torch.int64), "saturate", ValueError, r"overflow must be one of"),
])
def test_bad_input_is_refused_clearly(q, overflow, exc, pattern):
    model, _ = _mlp()
    with pytest.raises(exc, match=pattern):
        forward_int_population(model, q, {"5.bias": _raw("5.bias")}, overflow)

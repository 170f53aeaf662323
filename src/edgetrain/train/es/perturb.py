"""Seed-reproducible perturbations for forward-only evolution strategies.

An ES trainer (AbdulQader et al., arXiv 2103.14007, retrain a fixed-point net on an FPGA) adds
noise to the weights, scores each noisy copy, and steps along the noise weighted by the scores. If
the noise is a pure function of a small integer seed, the device never stores a perturbation
vector: it stores seeds and regenerates the noise when it applies the update (the seed trick of
MeZO, Malladi et al. 2023, arXiv 2305.17333). This module is that function, with two sources:

* ``"lfsr"``: what a hardware unit would build, a 32-bit Galois LFSR with the maximal-length taps
  32, 22, 2, 1 from Xilinx XAPP052 (Alfke, 1996, table of taps), emitting one 32-bit word per
  clock of a "leap-forward" circuit (the 32 single-bit steps unrolled into one XOR network; see
  "Random Number Generator Using Leap-Forward Techniques", Planet Analog, 2005). Bits are
  consumed LSB first, so a shorter draw is always a prefix of a longer one.
* ``"torch"``: ``torch.Generator().manual_seed(seed)`` per row, the software baseline.

The LFSR is simulated without a per-clock loop: one clock is a linear map over GF(2), so the state
after ``k`` clocks is ``bits(state) @ A^k (mod 2)``. The matrices ``A^(32 (t+1))`` for every output
word ``t`` are built once by doubling and cached as byte tables (the images of each state byte's
256 values), so word ``t`` for any number of seeds is the XOR of four table reads: the same linear
map as the matmul, at a 32nd of the memory traffic. :func:`lfsr_step` is the plain scalar
reference the fast path is tested against.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch

SOURCES = ("lfsr", "torch")
DISTRIBUTIONS = ("rademacher", "uniform", "gaussian")
LFSR_BITS = 32
# x^32 + x^22 + x^2 + x + 1 (XAPP052 taps 32, 22, 2, 1): tap t is bit t - 1 of the Galois mask.
LFSR_TAPS = (1 << 31) | (1 << 21) | (1 << 1) | (1 << 0)

_MASK32 = (1 << 32) - 1
_MASK64 = (1 << 64) - 1
_BITS_PER_VALUE = {"rademacher": 1, "uniform": 16, "gaussian": 64}
_IRWIN_HALL_TERMS = 4
# Longest stream (in 32-bit words) served from one stack of leap matrices; longer streams first
# jump each block's start state ahead, then leap inside the block (keeps the tables at 8 MiB).
_BLOCK_WORDS = 1024

# Caches keyed by the number of matrices in the stack (a power of two): byte tables of the leap
# matrices A^(32 (t+1)), and the transposed block-jump matrices A^(32 * _BLOCK_WORDS * b).
_LEAP_TABLES: dict[int, torch.Tensor] = {}
_JUMP_STACKS: dict[int, torch.Tensor] = {}


def _splitmix64(x: int) -> int:
    """One splitmix64 output for the 64-bit input ``x`` (Steele, Lea & Flood, OOPSLA 2014).

    A golden-ratio increment followed by two xor-shift-multiply rounds: a bijection on 64-bit
    words whose outputs for consecutive inputs look independent.
    """
    z = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _check_seed(seed: int, name: str = "seed") -> int:
    """``seed`` as a Python int in ``[0, 2**64)``; ``ValueError`` naming ``name`` otherwise."""
    value = operator.index(seed)
    if not 0 <= value <= _MASK64:
        raise ValueError(f"{name} must be an integer in [0, 2**64), got {value}")
    return value


def seed_state(seed: int) -> int:
    """The nonzero 32-bit LFSR state a seed starts from.

    The seed is mixed with splitmix64 and the two 32-bit halves folded together, so nearby seeds
    (0, 1, 2, ...) start far apart in the LFSR cycle. The all-zero state is the one state a Galois
    LFSR never leaves, so the (2^-32 likely) zero fold is replaced by 1. Seeds are integers in
    ``[0, 2**64)``; negative seeds raise ``ValueError``.
    """
    z = _splitmix64(_check_seed(seed))
    state = (z ^ (z >> 32)) & _MASK32
    return state or 1


def derive_seed(seed: int, *keys: int) -> int:
    """A 31-bit non-negative seed mixed from ``seed`` and ``keys`` (e.g. step, member).

    Chained splitmix64, so the result depends on every key and on their order: a trainer derives
    one seed per ``(step, member)`` from its run seed and stores nothing else. 31 bits keep the
    value a non-negative int32 for a C runtime. All inputs are integers in ``[0, 2**64)``.
    """
    h = _splitmix64(_check_seed(seed))
    for key in keys:
        h = _splitmix64(h ^ _check_seed(key, "keys"))
    return h >> 33


def lfsr_step(state: int) -> int:
    """One clock of the 32-bit Galois LFSR: shift right, XOR :data:`LFSR_TAPS` if a 1 fell out.

    The scalar reference for everything else here (one line of hardware: a shift register and
    three XOR gates on the tapped bits).
    """
    if not 0 <= state <= _MASK32:
        raise ValueError(f"state must be a 32-bit unsigned integer, got {state}")
    out = state >> 1
    return out ^ LFSR_TAPS if state & 1 else out


def _step_matrix_t() -> torch.Tensor:
    """Transpose of the one-clock GF(2) matrix ``A``: row ``j`` of ``A`` is ``bits(lfsr_step(1 << j))``.

    With state bits as a row vector ``s`` (bit ``j`` in column ``j``), one clock is ``s @ A``;
    stacks keep ``A^T`` so that ``bits(state) @ stack.T`` reads contiguous rows.
    """
    a = torch.tensor([[(lfsr_step(1 << j) >> i) & 1 for i in range(LFSR_BITS)] for j in range(LFSR_BITS)],
                     dtype=torch.float64)
    return a.T.contiguous()


def _gf2_power_t(base_t: torch.Tensor, exponent: int) -> torch.Tensor:
    """``base_t ** exponent`` over GF(2) by square-and-multiply (float64 0/1 matrices)."""
    result = torch.eye(LFSR_BITS, dtype=torch.float64)
    square = base_t
    while exponent:
        if exponent & 1:
            result = (result @ square) % 2
        square = (square @ square) % 2
        exponent >>= 1
    return result


def _gf2_powers_t(base_t: torch.Tensor, count: int) -> torch.Tensor:
    """Stack ``[count, 32, 32]`` whose entry ``k`` is ``base_t ** (k + 1)`` over GF(2), by doubling.

    Given the first ``k`` powers, the next ``k`` are all of them times ``base_t ** k`` (the last
    one), one batched matmul per doubling, so ``count`` powers cost ``log2(count)`` matmuls.
    """
    powers = base_t.unsqueeze(0)
    while powers.shape[0] < count:
        powers = torch.cat([powers, (powers[-1] @ powers) % 2])
    return powers[:count]


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _pack_rows(matrices_t: torch.Tensor) -> torch.Tensor:
    """Int64 ``[T, 32]``: entry ``[t, j]`` is the 32-bit word that input bit ``j`` maps to under ``matrices_t[t].T``."""
    weights = torch.pow(2.0, torch.arange(LFSR_BITS, dtype=torch.float64)).view(1, LFSR_BITS, 1)
    return (matrices_t * weights).sum(dim=1).to(torch.int64)


def _byte_tables(images: torch.Tensor) -> torch.Tensor:
    """Int64 ``[4, 256, T]`` XOR tables from the images ``[T, 32]`` of the 32 unit state vectors.

    Entry ``[p, v, t]`` is the XOR of the images of the set bits of byte value ``v`` placed at byte
    ``p`` of the state, so a linear map of a whole state is the XOR of four table reads, the way a
    software CRC uses its tables. Built by doubling: values ``[2^k, 2^(k+1))`` are values
    ``[0, 2^k)`` with bit ``k`` added.
    """
    count = images.shape[0]
    tables = torch.zeros((4, 256, count), dtype=torch.int64)
    for p in range(4):
        for k in range(8):
            size = 1 << k
            tables[p, size: 2 * size] = tables[p, :size] ^ images[:, 8 * p + k]
    return tables


def _leap_tables(n_words: int) -> torch.Tensor:
    """Int64 ``[4, 256, T]`` byte tables of ``A^(32 (t+1))`` for ``t < T``, ``T >= n_words`` a power of two.

    The stack of GF(2) matrices is built by doubling and cached under ``T``; word ``t`` of the
    stream from state ``s`` is then ``XOR_p tables[p, byte_p(s), t]``.
    """
    count = _pow2_at_least(n_words)
    tables = _LEAP_TABLES.get(count)
    if tables is None:
        leap_t = _gf2_power_t(_step_matrix_t(), LFSR_BITS)
        tables = _byte_tables(_pack_rows(_gf2_powers_t(leap_t, count)))
        _LEAP_TABLES[count] = tables
    return tables


def _jump_stack(n_blocks: int) -> torch.Tensor:
    """Float32 ``[B * 32, 32]`` with rows ``32 b .. 32 b + 31`` = ``(A^(32 * _BLOCK_WORDS * b))^T``.

    Entry 0 is the identity (the first block starts at the seed state); ``B >= n_blocks`` is a power
    of two, the cache key.
    """
    count = _pow2_at_least(n_blocks)
    stack = _JUMP_STACKS.get(count)
    if stack is None:
        jump_t = _gf2_power_t(_step_matrix_t(), LFSR_BITS * _BLOCK_WORDS)
        eye = torch.eye(LFSR_BITS, dtype=torch.float64).unsqueeze(0)
        powers = torch.cat([eye, _gf2_powers_t(jump_t, max(count - 1, 1))])[:count]
        stack = powers.reshape(count * LFSR_BITS, LFSR_BITS).float().contiguous()
        _JUMP_STACKS[count] = stack
    return stack


def _words_from(states: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """Int64 ``[S, T]`` words: ``XOR_p tables[p, byte_p(states), :]`` for int64 states ``[S]``."""
    words = tables[0].index_select(0, states & 0xFF)
    for p in range(1, 4):
        words ^= tables[p].index_select(0, (states >> (8 * p)) & 0xFF)
    return words


def _lfsr_stream(states: torch.Tensor, n_words: int) -> torch.Tensor:
    """Int64 ``[S, n_words]``: word ``t`` of row ``r`` is the LFSR state ``32 (t + 1)`` clocks after ``states[r]``.

    Streams up to :data:`_BLOCK_WORDS` read one table stack. Longer ones are cut into blocks: each
    block's start state is one GF(2) matmul away from the seed state (sums of 0/1 values are at most
    32, so float32 is exact and ``% 2`` is the GF(2) sum), and every block then reads the same tables.
    """
    n_states = states.shape[0]
    if n_words <= _BLOCK_WORDS:
        return _words_from(states, _leap_tables(n_words)[:, :, :n_words])
    n_blocks = -(-n_words // _BLOCK_WORDS)
    shifts = torch.arange(LFSR_BITS, dtype=torch.int64)
    bits = ((states.unsqueeze(1) >> shifts) & 1).float()
    start_bits = torch.remainder(bits @ _jump_stack(n_blocks)[: n_blocks * LFSR_BITS].T, 2)
    starts = (start_bits.view(n_states * n_blocks, LFSR_BITS).to(torch.int64) << shifts).sum(dim=1)
    words = _words_from(starts, _leap_tables(_BLOCK_WORDS))
    return words.view(n_states, n_blocks * _BLOCK_WORDS)[:, :n_words]


def lfsr_words(seed: int, n_words: int) -> torch.Tensor:
    """Int64 ``[n_words]``: word ``t`` is the LFSR state ``32 (t + 1)`` clocks after ``seed_state(seed)``.

    This is the word stream a leap-forward LFSR hands out, one 32-bit word per hardware clock;
    bit-identical to calling :func:`lfsr_step` ``32 (t + 1)`` times.
    """
    n_words = operator.index(n_words)
    if n_words < 0:
        raise ValueError(f"n_words must be >= 0, got {n_words}")
    states = torch.tensor([seed_state(seed)], dtype=torch.int64)
    return _lfsr_stream(states, n_words)[0].clone()


def random_bits_per_value(distribution: str) -> int:
    """LFSR bits one value of ``distribution`` consumes: 1 (sign), 16 (uniform), 64 (4 x 16, Irwin-Hall)."""
    _check_choice("distribution", distribution, DISTRIBUTIONS)
    return _BITS_PER_VALUE[distribution]


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _seed_list(seeds: Sequence[int] | torch.Tensor) -> list[int]:
    if isinstance(seeds, torch.Tensor):
        if seeds.ndim != 1 or seeds.is_floating_point() or seeds.is_complex():
            raise ValueError(f"seeds must be a 1-D integer tensor, got {seeds.dtype} of shape {tuple(seeds.shape)}")
        seeds = seeds.tolist()
    return [_check_seed(s, "seeds") for s in seeds]


def _draw_lfsr(seeds: list[int], n: int, distribution: str) -> torch.Tensor:
    states = torch.tensor([seed_state(s) for s in seeds], dtype=torch.int64)
    words = _lfsr_stream(states, -(-n * _BITS_PER_VALUE[distribution] // LFSR_BITS))
    if distribution == "rademacher":
        # A set bit is a sign bit: 1 -> -1, 0 -> +1. Bits are read LSB first.
        shifts = torch.arange(LFSR_BITS, dtype=torch.int64)
        bits = ((words.unsqueeze(2) >> shifts) & 1).view(len(seeds), -1)[:, :n]
        return 1.0 - 2.0 * bits.to(torch.float64)
    # 16-bit values u, low half of each word first; (u + 0.5) / 65536 are the midpoints of 65536
    # equal bins of [0, 1): mean 1/2, variance 1/12 (1 - 2^-32).
    if distribution == "uniform":
        halves = torch.stack([words & 0xFFFF, words >> 16], dim=2).view(len(seeds), -1)[:, :n]
        return ((halves.to(torch.float64) + 0.5) / 65536.0 * 2.0 - 1.0) * math.sqrt(3.0)
    # Irwin-Hall: value i sums the 4 halves of words 2i, 2i + 1; the sum of 4 unit-bin midpoints has
    # mean 2 and variance 4/12 and lies strictly inside (0, 4).
    pair_sums = (words & 0xFFFF) + (words >> 16)
    total = (pair_sums[:, 0::2] + pair_sums[:, 1::2]).to(torch.float64)
    return ((total + 0.5 * _IRWIN_HALL_TERMS) / 65536.0 - _IRWIN_HALL_TERMS / 2) / math.sqrt(_IRWIN_HALL_TERMS / 12)


def _draw_torch_row(seed: int, n: int, distribution: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if distribution == "rademacher":
        return 1.0 - 2.0 * torch.randint(0, 2, (n,), generator=gen).to(torch.float64)
    if distribution == "uniform":
        return (torch.rand(n, generator=gen, dtype=torch.float64) * 2.0 - 1.0) * math.sqrt(3.0)
    return torch.randn(n, generator=gen, dtype=torch.float64)


def draw(seeds: Sequence[int] | torch.Tensor, n: int, distribution: str = "rademacher",
         source: str = "lfsr") -> torch.Tensor:
    """Float64 ``[len(seeds), n]`` zero-mean, unit-variance noise; row ``i`` depends only on ``seeds[i]``.

    ``rademacher`` is exactly +-1 (one bit per value; a set bit is -1). ``uniform`` is uniform on
    ``[-sqrt(3), sqrt(3)]`` (lfsr: 16-bit bin midpoints). ``gaussian`` is ``torch.randn`` for the
    torch source and, for the lfsr, the hardware approximation: the Irwin-Hall sum of four 16-bit
    uniforms, centred and scaled to unit variance, so always within ``2 sqrt(3)``. For the lfsr the
    values read the bit stream of :func:`lfsr_words` LSB first, so ``draw([s], n)[0]`` is a prefix
    of ``draw([s], n + k)[0]``.
    """
    _check_choice("distribution", distribution, DISTRIBUTIONS)
    _check_choice("source", source, SOURCES)
    n = operator.index(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    seed_list = _seed_list(seeds)
    if not seed_list or n == 0:
        return torch.zeros((len(seed_list), n), dtype=torch.float64)
    if source == "lfsr":
        return _draw_lfsr(seed_list, n, distribution)
    return torch.stack([_draw_torch_row(s, n, distribution) for s in seed_list])


def draw_lowrank(seeds: Sequence[int] | torch.Tensor, shape: tuple[int, int], rank: int,
                 distribution: str = "rademacher", source: str = "lfsr") -> torch.Tensor:
    """Float64 ``[len(seeds), out, in]`` low-rank noise ``(1 / sqrt(rank)) * sum_k a_k b_k^T``.

    Per row, the first ``rank * out`` values of :func:`draw` are the ``a_k`` (``rank`` rows of
    ``out``), the next ``rank * in`` the ``b_k``. Entries have unit variance for independent
    unit-variance ``a``, ``b``, while a device regenerates only ``rank * (out + in)`` values
    instead of ``out * in``.
    """
    if len(shape) != 2:
        raise ValueError(f"shape must be (out, in), got {shape!r}")
    n_out, n_in = (operator.index(d) for d in shape)
    if n_out < 1 or n_in < 1:
        raise ValueError(f"shape must be two positive sizes (out, in), got {shape!r}")
    rank = operator.index(rank)
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    values = draw(seeds, rank * (n_out + n_in), distribution, source)
    n_seeds = values.shape[0]
    a = values[:, : rank * n_out].reshape(n_seeds, rank, n_out)
    b = values[:, rank * n_out:].reshape(n_seeds, rank, n_in)
    return torch.einsum("sko,ski->soi", a, b) / math.sqrt(rank)


# -- streaming regeneration (the device's view) ---------------------------------------------------

def _leap(state: int) -> int:
    """The next 32-bit word of a leap-forward LFSR: 32 single clocks of :func:`lfsr_step`."""
    for _ in range(LFSR_BITS):
        state = lfsr_step(state)
    return state


class LFSRCursor:
    """A read position in one seed's LFSR bit stream: what one hardware register pair holds.

    ``state`` is the word being read (a 32-bit LFSR state, the output of a leap-forward clock) and
    ``bit`` the next bit of it to hand out (``32``: used up, the next read clocks the LFSR). A copy
    of a cursor is a restart point: saving ``(state, bit)`` costs 37 bits of registers and lets a
    device re-read a stretch of the stream without storing the values drawn from it. Values decode
    exactly as :func:`draw` decodes them for the ``"lfsr"`` source, so the values read from a cursor
    at value offset ``k`` are ``draw([seed], k + n)[0, k:]``, bit for bit.
    """

    __slots__ = ("state", "bit")

    def __init__(self, seed: int, skip_values: int = 0, distribution: str = "rademacher") -> None:
        self.state, self.bit = seed_state(seed), LFSR_BITS
        self._bits(operator.index(skip_values) * random_bits_per_value(distribution))

    def copy(self) -> LFSRCursor:
        other = LFSRCursor.__new__(LFSRCursor)
        other.state, other.bit = self.state, self.bit
        return other

    def _bits(self, n: int) -> int:
        """The next ``n`` bits of the stream as an integer, first bit read in bit 0."""
        value, got = 0, 0
        while got < n:
            if self.bit == LFSR_BITS:
                self.state, self.bit = _leap(self.state), 0
            take = min(n - got, LFSR_BITS - self.bit)
            value |= ((self.state >> self.bit) & ((1 << take) - 1)) << got
            self.bit += take
            got += take
        return value

    def value(self, distribution: str) -> float:
        """The next value of ``distribution``, decoded as :func:`draw` decodes the ``"lfsr"`` source."""
        _check_choice("distribution", distribution, DISTRIBUTIONS)
        if distribution == "rademacher":
            return 1.0 - 2.0 * self._bits(1)
        if distribution == "uniform":
            return ((self._bits(16) + 0.5) / 65536.0 * 2.0 - 1.0) * math.sqrt(3.0)
        total = sum(self._bits(16) for _ in range(_IRWIN_HALL_TERMS))
        return ((total + 0.5 * _IRWIN_HALL_TERMS) / 65536.0 - _IRWIN_HALL_TERMS / 2) / math.sqrt(_IRWIN_HALL_TERMS / 12)


def lowrank_rows(seed: int, shape: tuple[int, int], rank: int, distribution: str = "rademacher"):
    """Yield the rows of ``draw_lowrank([seed], shape, rank, distribution, "lfsr")[0]`` one at a time,
    holding nothing but ``3 * rank`` cursors and ``rank`` factor values.

    This is how a device that streams weights in row-major order (the serial update of
    :class:`~edgetrain.train.es.trainer.ESTrainer`, every antithetic stream replayed in lockstep)
    regenerates a low-rank perturbation ``sum_k a_k b_k^T / sqrt(rank)`` without a factor buffer:
    ``rank`` cursors walk the ``a_k`` one value per row; for the ``b_k``, ``rank`` saved restart
    points (where each ``b_k`` starts) are copied into ``rank`` running cursors at the start of
    every row. The price is LFSR clocks (``rank * out * in`` values of ``b`` per member instead of
    ``rank * in``), not memory. Each row is a float64 tensor ``[in]``.
    """
    n_out, n_in = (operator.index(d) for d in shape)
    rank = operator.index(rank)
    if n_out < 1 or n_in < 1 or rank < 1:
        raise ValueError(f"shape must be two positive sizes and rank >= 1, got {shape!r}, rank {rank!r}")
    a_cursors = [LFSRCursor(seed, k * n_out, distribution) for k in range(rank)]
    b_starts = [LFSRCursor(seed, rank * n_out + k * n_in, distribution) for k in range(rank)]
    scale = math.sqrt(rank)
    for _ in range(n_out):
        a = [c.value(distribution) for c in a_cursors]  # the rank factor registers of this row
        running = [s.copy() for s in b_starts]
        row = []
        for _ in range(n_in):
            total = 0.0
            for k in range(rank):
                total += a[k] * running[k].value(distribution)
            row.append(total / scale)
        yield torch.tensor(row, dtype=torch.float64)

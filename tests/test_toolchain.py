"""Toolchain driver: host and Cortex-M builds, QEMU semihosting runs, per-function instruction counts,
link-time fit checks, and the firmware driver's file protocol (against a fake model library)."""

from __future__ import annotations

import ctypes
import shutil
import struct

import pytest

from edgetrain.export import toolchain as tc

needs_target = pytest.mark.skipif(
    not tc.have_target_toolchain(),
    reason="needs arm-none-eabi-gcc with newlib and qemu-system-arm "
           "(apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm)")
needs_host_cc = pytest.mark.skipif(shutil.which("gcc") is None,
                                   reason="needs the host C compiler (apt-get install gcc)")

ALL_CPUS = sorted(tc.CPUS)
DEVICE_MEM = {"ram_bytes": 64 * 1024, "flash_bytes": 256 * 1024}


@pytest.fixture(scope="module")
def plugin_so(tmp_path_factory):
    return tc.build_plugin(tmp_path_factory.mktemp("plugin"))


# --- no toolchain needed -------------------------------------------------------------------------

@pytest.mark.parametrize("tool, packages", [
    ("arm-none-eabi-gcc", ["gcc-arm-none-eabi", "libnewlib-arm-none-eabi"]),
    ("qemu-system-arm", ["qemu-system-arm"]),
    ("gcc", ["gcc"]),
])
def test_missing_toolchain_names_the_packages(monkeypatch, tool, packages):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    with pytest.raises(tc.MissingToolchain) as e:
        tc.require(tool)
    assert tool in str(e.value)
    for p in packages:
        assert p in str(e.value)
    assert not tc.have_target_toolchain()


@pytest.mark.parametrize("name, cpu", [
    ("cortex-m0+", "cortex-m0plus"), ("rp2040", "cortex-m0plus"), ("cortex-m0plus", "cortex-m0plus"),
    ("cortex-m4", "cortex-m4"), ("nRF52840", "cortex-m4"), ("stm32l4r5", "cortex-m4"),
    ("cortex-m7", "cortex-m7"), ("stm32f746", "cortex-m7"), ("imxrt1062", "cortex-m7"),
])
def test_cpu_for_device(name, cpu):
    assert tc.cpu_for_device(name) == cpu


def test_cpu_for_device_rejects_non_mcu():
    with pytest.raises(ValueError):
        tc.cpu_for_device("ku115")
    with pytest.raises(ValueError):
        tc.cpu_for_device("no-such-part")


# --- Cortex-M under QEMU -------------------------------------------------------------------------

TRANSFORM_C = r"""
#include <math.h>
#include <stdint.h>
#include "semihost.h"

static uint8_t buf[256];

int main(void)
{
    int fd = sh_open("in.bin", SH_MODE_RB);
    if (fd < 0) return 90;
    int32_t n = sh_flen(fd);
    if (n < 0 || n > (int32_t)sizeof buf || sh_read(fd, buf, (uint32_t)n) != n) return 91;
    sh_close(fd);
    /* A little double-precision libm, to check that it links and runs on every core. */
    int e;
    double m = frexp(ldexp(rint(2.5) + floor(-0.5), 6) + fabs(-3.0), &e); /* 2 - 1 -> 64 + 3 = 67 */
    uint8_t k = (uint8_t)ldexp(m, e);
    for (int32_t i = 0; i < n / 2; i++) {
        uint8_t t = buf[i]; buf[i] = buf[n - 1 - i]; buf[n - 1 - i] = t;
    }
    for (int32_t i = 0; i < n; i++) buf[i] = (uint8_t)(buf[i] ^ k);
    fd = sh_open("out.bin", SH_MODE_WB);
    if (fd < 0 || sh_write(fd, buf, (uint32_t)n) != 0 || sh_close(fd) != 0) return 92;
    sh_write0("transform done\n");
    return EXIT_STATUS;
}
"""


@pytest.mark.mcu
@needs_target
@pytest.mark.parametrize("cpu", ALL_CPUS)
def test_semihosting_file_io_and_exit_status(tmp_path, cpu):
    (tmp_path / "prog.c").write_text(TRANSFORM_C)
    status = {"cortex-m0plus": 3, "cortex-m4": 42, "cortex-m7": 200}[cpu]
    elf = tc.compile_target([tmp_path / "prog.c"], [], cpu, tmp_path / "prog.elf", [("EXIT_STATUS", status)],
                            **DEVICE_MEM)
    data = bytes(range(7, 7 + 100))
    (tmp_path / "in.bin").write_bytes(data)
    res = tc.run_qemu(elf, cpu, tmp_path, timeout=30)
    assert res.returncode == status, res.output
    assert "transform done" in res.output
    assert (tmp_path / "out.bin").read_bytes() == bytes(b ^ 67 for b in reversed(data))
    sizes = tc.target_size(elf)
    assert sizes["stack"] == 8192 and sizes["bss"] >= 256 and sizes["text"] > 0
    assert sizes["ram"] == sizes["data"] + sizes["bss"] + sizes["stack"] <= DEVICE_MEM["ram_bytes"]
    assert tc.symbol_sizes(elf)["main"] > 0


@pytest.mark.mcu
@needs_target
def test_exit_status_zero_fault_and_stack_overflow(tmp_path):
    (tmp_path / "ok.c").write_text("int main(void) { return 0; }\n")
    elf = tc.compile_target([tmp_path / "ok.c"], [], "cortex-m4", tmp_path / "ok.elf", **DEVICE_MEM)
    assert tc.run_qemu(elf, "cortex-m4", tmp_path, timeout=30).returncode == 0
    (tmp_path / "trap.c").write_text("int main(void) { __builtin_trap(); return 0; }\n")
    elf = tc.compile_target([tmp_path / "trap.c"], [], "cortex-m0plus", tmp_path / "trap.elf", **DEVICE_MEM)
    res = tc.run_qemu(elf, "cortex-m0plus", tmp_path, timeout=30)
    assert res.returncode == 128 + 3 and "HardFault" in res.output, res.output
    # Using more stack than reserved (and counted in RAM) is reported, and fails a run that returned 0.
    (tmp_path / "deep.c").write_text(
        "#include <stdint.h>\nint main(void) { volatile uint8_t a[3000]; a[0] = 0; return a[0]; }\n")
    elf = tc.compile_target([tmp_path / "deep.c"], [], "cortex-m7", tmp_path / "deep.elf", stack_bytes=2048,
                            **DEVICE_MEM)
    res = tc.run_qemu(elf, "cortex-m7", tmp_path, timeout=30)
    assert res.returncode == 120 and "stack overflow" in res.output, res.output


LOOP_C = r"""
#include <stdint.h>
#include "semihost.h"

__attribute__((noinline)) uint32_t spin(uint32_t n)
{
    volatile uint32_t acc = 0;
    for (uint32_t i = 0; i < n; i++) acc += i;
    return acc;
}

int main(void)
{
    uint32_t n = 0;
    int fd = sh_open("n.bin", SH_MODE_RB);
    if (fd < 0 || sh_read(fd, &n, 4) != 4) return 90;
    sh_close(fd);
    return (int)(spin(n) & 1u);
}
"""


@pytest.mark.mcu
@needs_target
@pytest.mark.parametrize("cpu", ALL_CPUS)
def test_plugin_counts_a_loop_exactly(tmp_path, cpu, plugin_so):
    (tmp_path / "loop.c").write_text(LOOP_C)
    elf = tc.compile_target([tmp_path / "loop.c"], [], cpu, tmp_path / "loop.elf", **DEVICE_MEM)
    counts = {}
    for n in (0, 1, 1000, 2000):
        (tmp_path / "n.bin").write_bytes(struct.pack("<I", n))
        res = tc.run_qemu(elf, cpu, tmp_path, timeout=30, plugin=plugin_so)
        assert res.returncode == (n * (n - 1) // 2) & 1, res.output
        c = res.counts
        assert c is not None and c["[total]"] == sum(v for k, v in c.items() if k != "[total]")
        assert c["main"] > 0 and c["Reset_Handler"] > 0 and c["[other]"] == 0
        counts[n] = c
    per_iter = counts[1]["spin"] - counts[0]["spin"]
    assert 3 <= per_iter <= 12
    assert counts[2000]["spin"] - counts[1000]["spin"] == 1000 * per_iter
    assert counts[1000]["spin"] - counts[0]["spin"] == 1000 * per_iter
    # Everything but spin is the same work whatever n is (exclusive per-function counts).
    rest = {k: v for k, v in counts[1000].items() if k not in ("spin", "[total]")}
    assert rest == {k: v for k, v in counts[2000].items() if k not in ("spin", "[total]")}


@pytest.mark.mcu
@needs_target
def test_program_too_big_for_the_device_fails_to_link(tmp_path):
    (tmp_path / "big.c").write_text(
        "#include <stdint.h>\nstatic volatile uint8_t big[20000];\n"
        "int main(void) { big[19999] = 1; return big[19999]; }\n")
    with pytest.raises(tc.TargetDoesNotFit) as e:
        tc.compile_target([tmp_path / "big.c"], [], "cortex-m4", tmp_path / "big.elf", ram_bytes=16 * 1024,
                          flash_bytes=256 * 1024)
    assert "does not fit" in str(e.value) and "RAM" in e.value.overflow
    # The stack reservation counts: 20000 bytes of .bss fit in 24 KiB, but not with an 8 KiB stack.
    with pytest.raises(tc.TargetDoesNotFit):
        tc.compile_target([tmp_path / "big.c"], [], "cortex-m4", tmp_path / "big.elf", ram_bytes=24 * 1024,
                          flash_bytes=256 * 1024)
    tc.compile_target([tmp_path / "big.c"], [], "cortex-m4", tmp_path / "big.elf", ram_bytes=24 * 1024,
                      flash_bytes=256 * 1024, stack_bytes=2048)
    (tmp_path / "rom.c").write_text(
        "#include <stdint.h>\nconst uint8_t table[8192] = {1};\n"
        "int main(void) { return ((volatile const uint8_t *)table)[0]; }\n")
    with pytest.raises(tc.TargetDoesNotFit) as e:
        tc.compile_target([tmp_path / "rom.c"], [], "cortex-m0plus", tmp_path / "rom.elf", ram_bytes=64 * 1024,
                          flash_bytes=4096)
    assert "FLASH" in e.value.overflow and "does not fit" in str(e.value)


@pytest.mark.mcu
@needs_target
def test_compile_error_reports_compiler_output(tmp_path):
    (tmp_path / "bad.c").write_text("int main(void) { int unused; return 0; }\n")  # -Werror
    with pytest.raises(tc.BuildError) as e:
        tc.compile_target([tmp_path / "bad.c"], [], "cortex-m7", tmp_path / "bad.elf", **DEVICE_MEM)
    assert "unused" in str(e.value)


# --- the firmware driver against a fake model ----------------------------------------------------

FAKE_H = r"""
#ifndef ET_MODEL_H
#define ET_MODEL_H
#include <stdint.h>
#define ET_INPUT_SIZE 5
#define ET_CLASSES 3
#define ET_BATCH 4
int et_init(void);
int et_predict(const uint8_t *x, uint8_t *logits);
int et_train_step(const uint8_t *x, const uint8_t *y, int n);
uint32_t et_state_size(void);
uint32_t et_state_write(uint8_t *dst, uint32_t cap);
#endif
"""

FAKE_C = r"""
#include "et_model.h"

static uint32_t steps, seen;

int et_init(void) { steps = 0; seen = 0; return 0; }

int et_predict(const uint8_t *x, uint8_t *logits)
{
    uint32_t s = 0;
    for (int i = 0; i < ET_INPUT_SIZE; i++) s += x[i];
    int best = 0;
    for (int c = 0; c < ET_CLASSES; c++) {
        logits[c] = (uint8_t)(s + (uint32_t)c * 7u + steps);
        if (logits[c] > logits[best]) best = c;
    }
    return best;
}

int et_train_step(const uint8_t *x, const uint8_t *y, int n)
{
    if (n < 1 || n > ET_BATCH) return -1;
    for (int i = 0; i < n; i++) seen += (uint32_t)y[i] + x[i * ET_INPUT_SIZE];
    steps++;
    return 0;
}

uint32_t et_state_size(void) { return 6; }

uint32_t et_state_write(uint8_t *dst, uint32_t cap)
{
    if (cap < 6) return 0;
    for (int i = 0; i < 4; i++) dst[i] = (uint8_t)(seen >> (8 * i));
    dst[4] = (uint8_t)steps;
    dst[5] = 0xA5;
    return 6;
}
"""


def _fake_expected(n_steps, n_per_step, xs, ys, probes):
    """What main_target.c must write for the fake model above (computed independently in Python)."""
    steps = seen = 0
    out = bytearray()

    def predict(x):
        s = sum(x)
        return bytes((s + c * 7 + steps) & 0xFF for c in range(3))

    for step in range(max(n_steps, 0)):
        sl = slice(step * n_per_step, (step + 1) * n_per_step)
        for x in xs[sl]:
            out += predict(x)
        seen += sum(y + x[0] for x, y in zip(xs[sl], ys[sl], strict=True))
        steps += 1
        for p in probes:
            out += predict(p)
        out += struct.pack("<I", 6) + struct.pack("<I", seen & 0xFFFFFFFF) + bytes([steps & 0xFF, 0xA5])
    if n_steps == 0:
        for p in probes:
            out += predict(p)
        out += struct.pack("<I", 6) + struct.pack("<I", 0) + bytes([0, 0xA5])
    return bytes(out)


def _fake_input(n_steps, n_per_step, xs, ys, probes, phase_mode=0):
    body = b"".join(bytes(x) + bytes([y]) for x, y in zip(xs, ys, strict=True)) + b"".join(bytes(p) for p in probes)
    return struct.pack("<4i", n_steps, n_per_step, len(probes), phase_mode) + body


@pytest.mark.mcu
@needs_target
@pytest.mark.parametrize("cpu", ALL_CPUS)
def test_firmware_driver_protocol_with_fake_model(tmp_path, plugin_so, cpu):
    (tmp_path / "et_model.h").write_text(FAKE_H)
    (tmp_path / "et_model.c").write_text(FAKE_C)
    elf = tc.compile_target([tc.MAIN_TARGET_C, tmp_path / "et_model.c"], [tmp_path], cpu,
                            tmp_path / "fw.elf", [("ET_IO_BYTES", 256)], **DEVICE_MEM)
    n_steps, n_per_step = 3, 4
    xs = [[(17 * i + 3 * j) % 251 for j in range(5)] for i in range(n_steps * n_per_step)]
    ys = [i % 3 for i in range(n_steps * n_per_step)]
    probes = [[200, 1, 2, 3, 4], [0, 0, 0, 0, 9]]
    (tmp_path / "et_in.bin").write_bytes(_fake_input(n_steps, n_per_step, xs, ys, probes))
    res = tc.run_qemu(elf, cpu, tmp_path, timeout=30, plugin=plugin_so)
    assert res.returncode == 0, res.output
    assert (tmp_path / "et_out.bin").read_bytes() == _fake_expected(n_steps, n_per_step, xs, ys, probes)
    assert "stack peak" in res.output
    assert res.counts["et_predict"] > 0 and res.counts["et_train_step"] > 0 and res.counts["et_state_write"] > 0

    # No training steps: the probes and the initial state, once.
    (tmp_path / "et_in.bin").write_bytes(_fake_input(0, 0, [], [], probes))
    res = tc.run_qemu(elf, cpu, tmp_path, timeout=30)
    assert res.returncode == 0, res.output
    assert (tmp_path / "et_out.bin").read_bytes() == _fake_expected(0, 0, [], [], probes)

    # Errors: an input larger than ET_IO_BYTES (3); a header that does not match the length (4);
    # more samples per step than ET_BATCH (4).
    (tmp_path / "et_in.bin").write_bytes(_fake_input(50, 4, xs * 17, ys * 17, []))
    res = tc.run_qemu(elf, cpu, tmp_path, timeout=30)
    assert res.returncode == 3 and "ET_IO_BYTES" in res.output, res.output
    (tmp_path / "et_in.bin").write_bytes(_fake_input(n_steps, n_per_step, xs, ys, probes)[:-1])
    assert tc.run_qemu(elf, cpu, tmp_path, timeout=30).returncode == 4
    (tmp_path / "et_in.bin").write_bytes(_fake_input(2, 6, xs, ys, probes))
    assert tc.run_qemu(elf, cpu, tmp_path, timeout=30).returncode == 4


# --- host builds ---------------------------------------------------------------------------------

@pytest.mark.mcu
@needs_host_cc
def test_host_library_and_sanitized_program(tmp_path):
    (tmp_path / "lib.c").write_text(
        "#include <math.h>\nint scale(int x) { return (int)ldexp((double)x, 3); }\n")
    so = tc.compile_host_library([tmp_path / "lib.c"], [], tmp_path / "lib.so")
    assert ctypes.CDLL(str(so)).scale(5) == 40

    (tmp_path / "main.c").write_text(
        "#include <stdio.h>\n__attribute__((noinline)) static int get(const int *p, int i) { return p[i]; }\n"
        "int main(void) { int a[4] = {1, 2, 3, 4}; volatile int i = N;\n"
        "  printf(\"v=%d\\n\", get(a, i)); return 7; }\n")
    exe = tc.compile_host_program([tmp_path / "main.c"], [], tmp_path / "ok", [("N", 2)], sanitize=True)
    assert tc.run_host_program(exe, tmp_path, timeout=30) == (7, "v=3\n")
    exe = tc.compile_host_program([tmp_path / "main.c"], [], tmp_path / "oob", [("N", 4)], sanitize=True)
    rc, out = tc.run_host_program(exe, tmp_path, timeout=30)
    assert rc != 0 and "stack-buffer-overflow" in out, out

"""Build exported C for the host and for Cortex-M, run it under QEMU, count instructions per function.

The target side lives in ``export/target/``: a startup file and linker script for QEMU's ``mps2``
boards, semihosting calls (the firmware reads and writes host files and exits with a status), the
firmware driver ``main_target.c`` and a QEMU TCG plugin (``insn_count.c``) that counts executed
guest instructions per function symbol.

Programs needed (Debian/Ubuntu packages): ``gcc`` for the host; ``gcc-arm-none-eabi`` and
``libnewlib-arm-none-eabi`` to cross-compile; ``qemu-system-arm`` to run. A missing one raises
:class:`MissingToolchain`, whose message names the package to install.

Both compilers get :data:`COMMON_CFLAGS`; ``-ffp-contract=off`` keeps ``a * b + c`` as two
rounded operations (no fused multiply-add), as in Python's float64 arithmetic.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

PathLike = str | os.PathLike

TARGET_DIR = Path(__file__).resolve().parent / "target"
"""The target-side sources shipped with the package (startup, semihosting, linker script, plugin)."""
STARTUP_C = TARGET_DIR / "startup.c"
SEMIHOST_C = TARGET_DIR / "semihost.c"
LINKER_SCRIPT = TARGET_DIR / "mps2.ld"
MAIN_TARGET_C = TARGET_DIR / "main_target.c"
"""Firmware driver for a generated model library (``et_model.h``); see the protocol in the file."""
PLUGIN_SOURCES = (TARGET_DIR / "insn_count.c", TARGET_DIR / "qemu_plugin_api.h")

COMMON_CFLAGS: tuple[str, ...] = (
    "-std=c99", "-O2", "-ffp-contract=off", "-fno-fast-math", "-Wall", "-Wextra", "-Werror")
"""C flags for both the host and the target compiler."""
SANITIZE_FLAGS: tuple[str, ...] = (
    "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g")
TARGET_FLAGS: tuple[str, ...] = ("-ffunction-sections", "-fdata-sections", "-nostartfiles", "--specs=nano.specs")
PLUGIN_CFLAGS: tuple[str, ...] = (
    "-std=c11", "-O2", "-shared", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wextra", "-Werror")

BOARD_FLASH_BYTES = 4 * 1024 * 1024
"""Code memory of the mps2-an385/an386/an500 boards in QEMU 7.2 (ZBT SSRAM1 at 0x00000000)."""
BOARD_RAM_BYTES = 4 * 1024 * 1024
"""Data memory of those boards (ZBT SSRAM2&3 at 0x20000000)."""

CROSS_CC = "arm-none-eabi-gcc"
CROSS_SIZE = "arm-none-eabi-size"
CROSS_NM = "arm-none-eabi-nm"
QEMU = "qemu-system-arm"
HOST_CC = "gcc"

_CROSS_PACKAGES = ("gcc-arm-none-eabi", "libnewlib-arm-none-eabi")
PACKAGES: dict[str, tuple[str, ...]] = {
    CROSS_CC: _CROSS_PACKAGES,
    CROSS_SIZE: _CROSS_PACKAGES,
    CROSS_NM: _CROSS_PACKAGES,
    "newlib": ("libnewlib-arm-none-eabi",),
    QEMU: ("qemu-system-arm",),
    HOST_CC: ("gcc",),
}
"""Debian/Ubuntu packages that provide each program."""


class MissingToolchain(RuntimeError):
    """A compiler, binutils program, C library or emulator is not installed."""

    def __init__(self, tool: str, packages: Sequence[str] | None = None):
        self.tool = tool
        self.packages = tuple(packages if packages is not None else PACKAGES.get(tool, ()))
        hint = (f"; on Debian/Ubuntu: sudo apt-get install {' '.join(self.packages)}" if self.packages else "")
        super().__init__(f"{tool} not found{hint}")


class BuildError(RuntimeError):
    """The compiler or linker failed; the message holds the command and its output."""

    def __init__(self, message: str, output: str = ""):
        super().__init__(message)
        self.output = output


class TargetDoesNotFit(BuildError):
    """The linker found the program too large for the device's flash or RAM.

    ``overflow`` maps each overflowed region (``"FLASH"``, ``"RAM"``) to the bytes it is short by.
    """

    def __init__(self, message: str, output: str, overflow: dict[str, int]):
        super().__init__(message, output)
        self.overflow = overflow


class RunTimeout(RuntimeError):
    """A host program or QEMU did not finish in time; ``output`` holds what it printed."""

    def __init__(self, message: str, output: str = ""):
        super().__init__(message)
        self.output = output


def require(tool: str) -> str:
    """The full path of ``tool`` on ``PATH``, or raise :class:`MissingToolchain`."""
    path = shutil.which(tool)
    if path is None:
        raise MissingToolchain(tool)
    return path


def _have_newlib() -> bool:
    cc = shutil.which(CROSS_CC)
    if cc is None:
        return False
    try:
        found = subprocess.run([cc, "--specs=nano.specs", "-print-file-name=libc_nano.a"], capture_output=True,
                               text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return False
    return os.path.isabs(found) and os.path.exists(found)


def have_target_toolchain() -> bool:
    """True when the cross compiler (with newlib), its binutils and QEMU are all installed."""
    return all(shutil.which(t) for t in (CROSS_CC, CROSS_SIZE, CROSS_NM, QEMU)) and _have_newlib()


@dataclass(frozen=True)
class TargetCpu:
    """A Cortex-M core as we build for it, and the QEMU board that runs the build."""

    name: str
    flags: tuple[str, ...]
    """``arm-none-eabi-gcc`` code generation flags."""
    board: str
    """QEMU machine (``-M``)."""
    board_core: str
    """The core the board emulates (the board accepts only that one)."""


CPUS: dict[str, TargetCpu] = {
    # ARMv6-M code (Thumb-1 subset, no hardware divide) runs unchanged on the M3 of the AN385; QEMU has
    # no mps2 image with an M0/M0+, so the counts are those of M0+ code, executed by an M3.
    "cortex-m0plus": TargetCpu("cortex-m0plus", ("-mcpu=cortex-m0plus", "-mthumb", "-mfloat-abi=soft"),
                               "mps2-an385", "cortex-m3"),
    "cortex-m4": TargetCpu("cortex-m4", ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"),
                           "mps2-an386", "cortex-m4"),
    "cortex-m7": TargetCpu("cortex-m7", ("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-d16"),
                           "mps2-an500", "cortex-m7"),
}
"""Supported target cores by name."""

_CORE_TO_CPU = {"cortex-m0+": "cortex-m0plus", "cortex-m0plus": "cortex-m0plus", "cortex-m4": "cortex-m4",
                "cortex-m7": "cortex-m7"}


def cpu_for_device(device_name: str) -> str:
    """The :data:`CPUS` key for an edgetrain device name or alias.

    Accepts the keys themselves, core names (``cortex-m0+``, ``cortex-m4``, ``cortex-m7``) and any MCU in
    :mod:`edgetrain.device` (``rp2040`` -> ``cortex-m0plus``, ``nrf52840`` -> ``cortex-m4``,
    ``stm32f746`` -> ``cortex-m7``, ...). Raises ``ValueError`` for unknown or non-MCU devices.
    """
    key = device_name.strip().lower()
    if key in _CORE_TO_CPU:
        return _CORE_TO_CPU[key]
    from edgetrain.device import get_device

    device = get_device(key)
    core = getattr(device, "core", None)
    if core not in _CORE_TO_CPU:
        raise ValueError(f"device {device_name!r} is not a Cortex-M0+/M4/M7 microcontroller (core: {core})")
    return _CORE_TO_CPU[core]


def _cpu(cpu: str | TargetCpu) -> TargetCpu:
    if isinstance(cpu, TargetCpu):
        return cpu
    key = cpu.strip().lower()
    if key not in CPUS:
        key = cpu_for_device(key)
    return CPUS[key]


Define = str | tuple[str, object]


def _define_flags(defines: Iterable[Define]) -> list[str]:
    """``"NAME"``, ``"NAME=VALUE"`` or ``(NAME, VALUE)`` -> ``-D`` flags."""
    flags = []
    for d in defines:
        if isinstance(d, tuple):
            name, value = d
            flags.append(f"-D{name}={value}")
        else:
            flags.append(f"-D{d}")
    return flags


def _run_tool(cmd: list[str], what: str, cwd: PathLike | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise BuildError(f"{what} failed (exit status {proc.returncode})\n$ {' '.join(cmd)}\n{output}", output)
    return output


def _host_compile(sources: Sequence[PathLike], include_dirs: Sequence[PathLike], out_path: PathLike,
                  defines: Iterable[Define], sanitize: bool, extra: Sequence[str]) -> Path:
    cc = require(HOST_CC)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [cc, *COMMON_CFLAGS, *extra, *(SANITIZE_FLAGS if sanitize else ()),
           *(f"-I{d}" for d in include_dirs), *_define_flags(defines),
           *(str(s) for s in sources), "-o", str(out), "-lm"]
    _run_tool(cmd, f"host compile of {out.name}")
    return out


def compile_host_library(sources: Sequence[PathLike], include_dirs: Sequence[PathLike], out_path: PathLike,
                         defines: Iterable[Define] = (), sanitize: bool = False) -> Path:
    """Compile ``sources`` with the host ``gcc`` into a shared library (for ``ctypes``); returns its path.

    With ``sanitize`` it is built with AddressSanitizer and UBSan; note that such a library can only be
    loaded into Python with ``LD_PRELOAD`` of libasan, so for sanitized runs prefer
    :func:`compile_host_program` and :func:`run_host_program`.
    """
    return _host_compile(sources, include_dirs, out_path, defines, sanitize, ("-shared", "-fPIC"))


def compile_host_program(sources: Sequence[PathLike], include_dirs: Sequence[PathLike], out_path: PathLike,
                         defines: Iterable[Define] = (), sanitize: bool = False) -> Path:
    """Compile ``sources`` (one of them with ``main``) into a host executable; returns its path."""
    return _host_compile(sources, include_dirs, out_path, defines, sanitize, ())


def run_host_program(exe: PathLike, cwd: PathLike, timeout: float = 60.0,
                     args: Sequence[str] = ()) -> tuple[int, str]:
    """Run a host executable in ``cwd``; returns ``(returncode, stdout + stderr)``.

    Sanitizer reports go to stderr and make the return code nonzero. Raises :class:`RunTimeout`.
    """
    try:
        proc = subprocess.run([str(Path(exe).resolve()), *args], cwd=cwd, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.output or b"").decode(errors="replace")
        raise RunTimeout(f"{exe} did not finish within {timeout} s", out) from None
    return proc.returncode, proc.stdout.decode(errors="replace")


_OVERFLOW = re.compile(r"region `(\w+)' overflowed by (\d+) bytes")


def compile_target(sources: Sequence[PathLike], include_dirs: Sequence[PathLike], cpu: str | TargetCpu,
                   out_elf: PathLike, defines: Iterable[Define] = (), *, ram_bytes: int, flash_bytes: int,
                   stack_bytes: int = 8192) -> Path:
    """Cross-compile and link ``sources`` for ``cpu`` into a bare-metal ELF for its QEMU board.

    Adds ``startup.c``, ``semihost.c`` and the ``mps2.ld`` linker script (``export/target`` is on the
    include path, so sources can ``#include "semihost.h"``). The linker regions are the device's
    ``flash_bytes`` and ``ram_bytes`` (each at most the board's 4 MiB; larger values are clamped, and
    ``ram_bytes`` is rounded down to a multiple of 8). RAM must hold ``.data``, ``.bss`` and a stack
    reservation of ``stack_bytes``; the firmware exits with status 120 if it used more stack than that.
    There is no heap: ``malloc`` and stdio are not available (they fail to link).

    Raises :class:`TargetDoesNotFit` when the program is too large for the device,
    :class:`BuildError` on any other compile or link error, :class:`MissingToolchain` when the
    cross compiler or newlib is missing. Writes a linker map next to the ELF (``.map``).
    """
    target = _cpu(cpu)
    cc = require(CROSS_CC)
    if ram_bytes <= 0 or flash_bytes <= 0 or stack_bytes <= 0:
        raise ValueError("ram_bytes, flash_bytes and stack_bytes must be positive")
    ram = min(int(ram_bytes), BOARD_RAM_BYTES) // 8 * 8
    flash = min(int(flash_bytes), BOARD_FLASH_BYTES)
    stack = (int(stack_bytes) + 7) // 8 * 8
    out = Path(out_elf)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [cc, *COMMON_CFLAGS, *target.flags, *TARGET_FLAGS,
           *(f"-I{d}" for d in include_dirs), f"-I{TARGET_DIR}", *_define_flags(defines),
           *(str(s) for s in sources), str(STARTUP_C), str(SEMIHOST_C),
           f"-T{LINKER_SCRIPT}", "-Wl,--gc-sections", f"-Wl,--defsym=__flash_size={flash}",
           f"-Wl,--defsym=__ram_size={ram}", f"-Wl,--defsym=__stack_size={stack}",
           f"-Wl,-Map={out.with_suffix('.map')}", "-o", str(out), "-lm"]
    try:
        _run_tool(cmd, f"cross compile of {out.name} for {target.name}")
    except BuildError as e:
        overflow = {m.group(1): int(m.group(2)) for m in _OVERFLOW.finditer(e.output)}
        if overflow:
            limits = {"FLASH": flash, "RAM": ram}
            parts = [f"{region} ({limits.get(region, '?')} bytes) overflowed by {n} bytes"
                     for region, n in overflow.items()]
            raise TargetDoesNotFit(
                f"program does not fit the device: {'; '.join(parts)} (RAM holds .data + .bss + a {stack}-byte "
                f"stack)\n{e.output}", e.output, overflow) from None
        if "nano.specs" in e.output or "cannot find -lc_nano" in e.output or "cannot find -lc" in e.output:
            raise MissingToolchain("newlib (libc_nano.a for arm-none-eabi)") from e
        raise
    return out


_SIZE_FLASH_ONLY = {".vectors", ".text", ".rodata", ".ARM.extab", ".ARM.exidx", ".init_array"}


def target_size(elf: PathLike) -> dict[str, int]:
    """Section totals of a target ELF in bytes, from ``arm-none-eabi-size -A``.

    ``text`` (code and constants, in flash), ``data`` (initialised data: in flash and copied to RAM),
    ``bss`` (zeroed RAM), ``stack`` (the stack reservation), and the sums ``flash = text + data`` and
    ``ram = data + bss + stack``.
    """
    out = _run_tool([require(CROSS_SIZE), "-A", "-d", str(elf)], "arm-none-eabi-size")
    sizes = {"text": 0, "data": 0, "bss": 0, "stack": 0}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        name, size = parts[0], int(parts[1])
        if name in _SIZE_FLASH_ONLY:
            sizes["text"] += size
        elif name == ".data":
            sizes["data"] += size
        elif name == ".bss":
            sizes["bss"] += size
        elif name == ".stack":
            sizes["stack"] += size
    sizes["flash"] = sizes["text"] + sizes["data"]
    sizes["ram"] = sizes["data"] + sizes["bss"] + sizes["stack"]
    return sizes


def _nm(elf: PathLike) -> list[tuple[int, int, str, str]]:
    """``(address, size, type letter, name)`` of each defined symbol that has a size."""
    out = _run_tool([require(CROSS_NM), "-S", "--defined-only", str(elf)], "arm-none-eabi-nm")
    rows = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4:
            rows.append((int(parts[0], 16), int(parts[1], 16), parts[2], parts[3]))
    return rows


def symbol_sizes(elf: PathLike) -> dict[str, int]:
    """Size in bytes of every defined symbol with a size (functions and data objects), by name."""
    return {name: size for _, size, _, name in _nm(elf)}


def function_ranges(elf: PathLike, path: PathLike) -> Path:
    """Write the instruction-count plugin's symbols file for ``elf``; returns ``path``.

    One line ``START_HEX SIZE_HEX NAME`` per function symbol (``nm`` types T, t, W, w) with a nonzero
    size; the Thumb bit is cleared (``nm`` already prints function addresses without it).
    """
    funcs = sorted((addr & ~1, size, name) for addr, size, kind, name in _nm(elf)
                   if kind in "TtWw" and size > 0)
    out = Path(path)
    out.write_text("".join(f"{addr:08x} {size:08x} {name}\n" for addr, size, name in funcs))
    return out


def default_cache_dir() -> Path:
    """Where :func:`build_plugin` keeps its build when not told otherwise.

    ``$EDGETRAIN_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgetrain``, else ``~/.cache/edgetrain``.
    """
    env = os.environ.get("EDGETRAIN_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "edgetrain"


def build_plugin(out_dir: PathLike | None = None) -> Path:
    """Build the instruction-count QEMU plugin with the host ``gcc``; returns the ``.so`` path.

    The file name carries a hash of the plugin sources and flags, so a build is reused until they
    change. ``out_dir`` defaults to :func:`default_cache_dir`.
    """
    out = Path(out_dir) if out_dir is not None else default_cache_dir()
    digest = hashlib.sha256(" ".join(PLUGIN_CFLAGS).encode())
    for src in PLUGIN_SOURCES:
        digest.update(src.read_bytes())
    so = out / f"insn_count-{digest.hexdigest()[:16]}.so"
    if so.exists():
        return so
    cc = require(HOST_CC)
    out.mkdir(parents=True, exist_ok=True)
    tmp = so.with_name(f".{so.name}.{os.getpid()}.tmp")
    try:
        _run_tool([cc, *PLUGIN_CFLAGS, f"-I{TARGET_DIR}", str(PLUGIN_SOURCES[0]), "-o", str(tmp)],
                  "build of the QEMU instruction-count plugin")
        os.replace(tmp, so)  # atomic: concurrent builders each install a complete file
    finally:
        tmp.unlink(missing_ok=True)
    return so


@dataclass
class QemuResult:
    """What a QEMU run returned.

    ``returncode`` is the firmware's exit status (``main``'s return value, 128 + exception number after
    an unexpected fault); ``output`` is QEMU's stdout and stderr (semihosting console output goes
    there); ``counts`` is ``None`` without the plugin, else executed instructions per function name,
    for functions that executed at least one, plus ``"[other]"`` (outside any function symbol) and
    ``"[total]"``.
    """

    returncode: int
    output: str
    counts: dict[str, int] | None = None
    seconds: float = 0.0


def _qemu_opt(value: PathLike) -> str:
    """Escape a value inside a QEMU ``key=value,...`` option string (a comma is written twice)."""
    return str(value).replace(",", ",,")


def run_qemu(elf: PathLike, cpu: str | TargetCpu, cwd: PathLike, timeout: float = 120.0,
             plugin: bool | PathLike | None = None) -> QemuResult:
    """Run a target ELF on ``cpu``'s QEMU board with semihosting on, in ``cwd`` (the firmware's files
    are relative to it), until it exits.

    ``plugin=True`` builds (or reuses) the instruction-count plugin in :func:`default_cache_dir`; a path
    names an already built plugin. Then :attr:`QemuResult.counts` holds the per-function counts.
    Raises :class:`RunTimeout` if QEMU has not exited after ``timeout`` seconds.
    """
    target = _cpu(cpu)
    qemu = require(QEMU)
    elf_path = Path(elf).resolve()
    cmd = [qemu, "-M", target.board, "-nographic", "-monitor", "none", "-serial", "none", "-no-reboot",
           "-semihosting-config", "enable=on,target=native", "-kernel", str(elf_path)]
    with tempfile.TemporaryDirectory(prefix="edgetrain-qemu-") as tmp:
        counts_file = Path(tmp) / "counts.txt"
        if plugin:
            so = build_plugin() if plugin is True else Path(plugin)
            symbols = function_ranges(elf_path, Path(tmp) / "symbols.txt")
            cmd += ["-plugin", f"{_qemu_opt(so.resolve())},symbols={_qemu_opt(symbols)},out={_qemu_opt(counts_file)}"]
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            out = (e.output or b"").decode(errors="replace")
            raise RunTimeout(f"QEMU ({target.board}) did not exit within {timeout} s running {elf_path.name}",
                             out) from None
        seconds = time.perf_counter() - start
        output = proc.stdout.decode(errors="replace")
        counts = None
        if plugin:
            if not counts_file.exists():
                raise RuntimeError(f"the instruction-count plugin wrote no counts (QEMU exit status "
                                   f"{proc.returncode}):\n{output}")
            counts = {}
            for line in counts_file.read_text().splitlines():
                name, _, value = line.rpartition(" ")
                if name:
                    counts[name] = int(value)
    return QemuResult(proc.returncode, output, counts, seconds)

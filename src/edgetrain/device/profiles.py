"""Device profiles: frozen records of the numbers that turn counts into latency, energy and fit.

Every profile says where each number comes from. ``basis`` maps each numeric field to one line that
starts with its kind:

- ``datasheet:`` a manufacturer figure for the part or board (clock, memory sizes, run current);
- ``measured:`` a published measurement of a board, not a manufacturer specification;
- ``derived:`` arithmetic on the figures above (e.g. run current per MHz x supply voltage);
- ``model:`` a modelling parameter (cycles per MAC, energy per byte moved, NVM literature values),
  with the basis for the chosen value. These are estimates, not specifications.

Energy per cycle is ``run current per MHz x supply voltage``: a CoreMark-class figure that already
includes instruction fetch and on-chip memory traffic, so it is an average, not a per-instruction
cost. Cycles per MAC are model parameters for int8 kernels (CMSIS-NN-style on cores with the DSP
extension, plain C on the M0+); see Deutel et al. 2024 (arXiv 2407.10734) for the kind of on-device
latency and memory accounting these numbers feed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

KB = 1024
MB = 1024 * 1024

BASIS_KINDS = ("datasheet", "measured", "derived", "model")


def _check_profile(p: MCU | FPGA | NVM) -> None:
    """Every numeric field is positive and has a basis line of a known kind; sources are given."""
    for f in p.NUMERIC:
        v = getattr(p, f)
        if isinstance(v, bool) or not (isinstance(v, int | float) and v > 0):
            raise ValueError(f"device {p.name}: {f} must be a positive number, got {v!r}")
        line = p.basis.get(f, "")
        if line.split(":", 1)[0] not in BASIS_KINDS:
            raise ValueError(f"device {p.name}: field {f} needs a basis line starting with one of "
                             f"{BASIS_KINDS}, got {line!r}")
    if not p.sources:
        raise ValueError(f"device {p.name}: at least one source is required")


@dataclass(frozen=True, eq=False)
class MCU:
    """A microcontroller (on its usual board) as the cost model sees it.

    ``energy_per_cycle_j`` is the average energy of one core clock cycle while running;
    ``sram_energy_per_byte_j`` / ``flash_read_energy_per_byte_j`` price *extra* bytes moved
    (copies, weight write-backs), not the loads already inside ``cycles_per_mac``.
    """

    name: str
    core: str
    part: str
    clock_hz: float
    sram_bytes: int
    flash_bytes: int
    cycles_per_mac: float
    energy_per_cycle_j: float
    sram_energy_per_byte_j: float
    flash_read_energy_per_byte_j: float
    has_dsp_simd: bool
    sources: tuple[str, ...]
    notes: str
    basis: dict[str, str]
    kind: ClassVar[str] = "mcu"

    NUMERIC: ClassVar[tuple[str, ...]] = (
        "clock_hz", "sram_bytes", "flash_bytes", "cycles_per_mac", "energy_per_cycle_j",
        "sram_energy_per_byte_j", "flash_read_energy_per_byte_j")

    def __post_init__(self) -> None:
        _check_profile(self)

    @property
    def energy_per_mac_j(self) -> float:
        """Model energy of one int8 MAC: cycles per MAC x energy per cycle."""
        return self.cycles_per_mac * self.energy_per_cycle_j

    @property
    def macs_per_s(self) -> float:
        return self.clock_hz / self.cycles_per_mac


@dataclass(frozen=True, eq=False)
class FPGA:
    """An FPGA's resource totals (datasheet) and the clock a design is assumed to close at."""

    name: str
    part: str
    luts: int
    ffs: int
    dsps: int
    bram_36k: int
    clock_hz: float
    sources: tuple[str, ...]
    notes: str
    basis: dict[str, str]
    kind: ClassVar[str] = "fpga"

    NUMERIC: ClassVar[tuple[str, ...]] = ("luts", "ffs", "dsps", "bram_36k", "clock_hz")

    def __post_init__(self) -> None:
        _check_profile(self)

    @property
    def bram_bits(self) -> int:
        """Total block RAM in bits (36 Kib per block)."""
        return self.bram_36k * 36 * 1024


@dataclass(frozen=True, eq=False)
class NVM:
    """A non-volatile memory technology: energy per bit written and read, and write endurance.

    Used to price weight writes (Gural et al., arXiv 2009.03887: on NVM, writes cost energy and
    wear cells out, so *write density* matters as much as accuracy).
    """

    name: str
    write_energy_per_bit_j: float
    read_energy_per_bit_j: float
    endurance_writes: float
    sources: tuple[str, ...]
    notes: str
    basis: dict[str, str]
    kind: ClassVar[str] = "nvm"

    NUMERIC: ClassVar[tuple[str, ...]] = (
        "write_energy_per_bit_j", "read_energy_per_bit_j", "endurance_writes")

    def __post_init__(self) -> None:
        _check_profile(self)


Device = MCU | FPGA | NVM


# ---------------------------------------------------------------------------------------------
# Shared model parameters (one place, so every profile on the same core uses the same basis).

# Cycles per MAC = instructions per MAC of edgetrain's generated C (measured) x cycles per
# instruction (assumed). Measured: QEMU 7.2 TCG plugin counts of executed instructions in the
# forward convolution kernels (et_conv_fwd and the et_conv_fwd_* helpers it calls) per convolution MAC,
# digits CNN, `python benchmarks/bench_mcu.py` (2026-11-21). QEMU counts instructions, not cycles:
# the cycles-per-instruction factors are model assumptions stated per core.
_M0P_IPM = 8.79
_M0P_CPI = 1.3
_M0P_CPM = round(_M0P_IPM * _M0P_CPI, 2)
_M0P_CPM_BASIS = (
    f"derived: {_M0P_IPM} instructions/MAC measured for edgetrain's generated C convolution "
    "(ARMv6-M build, no SIMD; QEMU instruction count, benchmarks/bench_mcu.py) x an assumed "
    f"{_M0P_CPI} cycles/instruction (2-cycle loads and taken branches on the M0+ pipeline)")
_M4_IPM = 2.33
_M4_CPI = 1.2
_M4_CPM = round(_M4_IPM * _M4_CPI, 2)
_M4_CPM_BASIS = (
    f"derived: {_M4_IPM} instructions/MAC measured for edgetrain's generated C convolution "
    "(SMLAD: gathered input bytes against int16 weights; QEMU instruction count, benchmarks/bench_mcu.py) "
    f"x an assumed {_M4_CPI} cycles/instruction (single-cycle SMLAD/UXTB16, 2-cycle unpipelined loads)")
_M7_IPM = 2.33
_M7_CPI = 0.7
_M7_CPM = round(_M7_IPM * _M7_CPI, 2)
_M7_CPM_BASIS = (
    f"derived: {_M7_IPM} instructions/MAC measured for edgetrain's generated C convolution "
    "(same kernels as the M4; QEMU instruction count, benchmarks/bench_mcu.py) x an assumed "
    f"{_M7_CPI} cycles/instruction (the M7 dual-issues loads with arithmetic)")
_SRAM_BYTE_BASIS = (
    "model: energy_per_cycle / 4 -- one 32-bit load/store per cycle; the run-mode current "
    "already includes on-chip SRAM traffic, so a byte moved is priced at a quarter-cycle")
_IFLASH_BYTE_BASIS = (
    "model: 2 x the SRAM figure -- embedded-flash reads (through the accelerator/cache) cost "
    "more than SRAM reads; order-of-magnitude estimate")
_QSPI_BYTE = 0.8e-9
_QSPI_BYTE_BASIS = (
    "model: external QSPI NOR in quad read draws on the order of 5-20 mA at 3.3 V while "
    "streaming ~40-50 MB/s, i.e. ~0.3-1.5 nJ/byte; 0.8 nJ/byte taken (cache misses only)")


def _per_cycle(ua_per_mhz: float, volts: float) -> float:
    """Energy of one cycle (J) from a run current in uA/MHz and a supply voltage."""
    return ua_per_mhz * 1e-6 * volts / 1e6


# ---------------------------------------------------------------------------------------------
# Microcontrollers

_RP2040_E = 29.5e-3 * 3.0 / 125e6  # board-level measurement, see basis
RP2040 = MCU(
    name="rp2040",
    core="cortex-m0+",
    part="Raspberry Pi RP2040 on the Raspberry Pi Pico board",
    clock_hz=133e6,
    sram_bytes=264 * KB,
    flash_bytes=2 * MB,
    cycles_per_mac=_M0P_CPM,
    energy_per_cycle_j=_RP2040_E,
    sram_energy_per_byte_j=_RP2040_E / 4,
    flash_read_energy_per_byte_j=_QSPI_BYTE,
    has_dsp_simd=False,
    sources=(
        "Raspberry Pi, RP2040 Datasheet (dual Cortex-M0+ up to 133 MHz, 264 KB on-chip SRAM)",
        "Raspberry Pi, Raspberry Pi Pico Datasheet (2 MB QSPI flash, W25Q16JV)",
        "2n3904blog.com, 'RPI PICO - Burning Questions 1-5' (whole-board current vs clock)",
    ),
    notes=(
        "Dual-core part; the model uses one core. RP2040 has no on-chip flash: the 2 MB is the "
        "Pico board's QSPI chip, executed in place through a 16 KB cache. The RP2040 datasheet "
        "gives no run-mode uA/MHz figure, so energy per cycle comes from a third-party "
        "whole-board measurement (includes the board's buck-boost regulator and flash): "
        "29.5 mA at VSYS = 3.0 V and 125 MHz (MicroPython busy loop). Approximate."),
    basis={
        "clock_hz": "datasheet: RP2040 rated system clock 133 MHz",
        "sram_bytes": "datasheet: 264 KB on-chip SRAM (six banks)",
        "flash_bytes": "datasheet: Pico board carries 2 MB QSPI flash",
        "cycles_per_mac": _M0P_CPM_BASIS,
        "energy_per_cycle_j": "measured: Pico board 29.5 mA x 3.0 V / 125 MHz = 0.71 nJ/cycle",
        "sram_energy_per_byte_j": _SRAM_BYTE_BASIS,
        "flash_read_energy_per_byte_j": _QSPI_BYTE_BASIS,
    },
)

_NRF_E = _per_cycle(52.0, 3.0)
NRF52840 = MCU(
    name="nrf52840",
    core="cortex-m4",
    part="Nordic nRF52840 (Cortex-M4F), e.g. on the nRF52840 DK",
    clock_hz=64e6,
    sram_bytes=256 * KB,
    flash_bytes=1 * MB,
    cycles_per_mac=_M4_CPM,
    energy_per_cycle_j=_NRF_E,
    sram_energy_per_byte_j=_NRF_E / 4,
    flash_read_energy_per_byte_j=2 * _NRF_E / 4,
    has_dsp_simd=True,
    sources=(
        "Nordic Semiconductor, nRF52840 Product Specification v1.x (CPU running; memory)",
    ),
    notes=(
        "Energy per cycle uses Nordic's headline CPU figure: CoreMark from flash with the DC/DC "
        "regulator at 3 V, about 3.3 mA at 64 MHz (~52 uA/MHz). With the LDO instead of DC/DC the "
        "current roughly doubles. Radio and peripherals are excluded. Approximate."),
    basis={
        "clock_hz": "datasheet: 64 MHz Cortex-M4F",
        "sram_bytes": "datasheet: 256 KB RAM",
        "flash_bytes": "datasheet: 1 MB flash",
        "cycles_per_mac": _M4_CPM_BASIS,
        "energy_per_cycle_j": "derived: 52 uA/MHz (datasheet, DC/DC, from flash) x 3.0 V "
                              "= 156 pJ/cycle",
        "sram_energy_per_byte_j": _SRAM_BYTE_BASIS,
        "flash_read_energy_per_byte_j": _IFLASH_BYTE_BASIS,
    },
)

_L4R5_E = _per_cycle(110.0, 3.3)
STM32L4R5 = MCU(
    name="stm32l4r5",
    core="cortex-m4",
    part="ST STM32L4R5ZI (Cortex-M4F, STM32L4+), e.g. on NUCLEO-L4R5ZI",
    clock_hz=120e6,
    sram_bytes=640 * KB,
    flash_bytes=2 * MB,
    cycles_per_mac=_M4_CPM,
    energy_per_cycle_j=_L4R5_E,
    sram_energy_per_byte_j=_L4R5_E / 4,
    flash_read_energy_per_byte_j=2 * _L4R5_E / 4,
    has_dsp_simd=True,
    sources=(
        "STMicroelectronics, STM32L4R5xx/L4R7xx/L4R9xx datasheet DS12023 (features page)",
        "Zephyr nucleo_l4r5zi board documentation quoting the datasheet features "
        "('110 uA/MHz run mode')",
    ),
    notes=(
        "Run-mode current 110 uA/MHz (LDO mode) from the datasheet's feature list; later copies "
        "of third-party docs quote 100 uA/MHz (the STM32L476 figure), so treat as +-10%. The "
        "3.3 V supply is an assumption (Nucleo boards run at 3.3 V). 640 KB SRAM is split in "
        "three regions (192 + 64 + 384 KB); a single buffer cannot exceed the largest."),
    basis={
        "clock_hz": "datasheet: up to 120 MHz",
        "sram_bytes": "datasheet: 640 KB SRAM",
        "flash_bytes": "datasheet: 2 MB flash",
        "cycles_per_mac": _M4_CPM_BASIS,
        "energy_per_cycle_j": "derived: 110 uA/MHz (datasheet, LDO) x 3.3 V (assumed) "
                              "= 363 pJ/cycle",
        "sram_energy_per_byte_j": _SRAM_BYTE_BASIS,
        "flash_read_energy_per_byte_j": _IFLASH_BYTE_BASIS,
    },
)

_F746_E = _per_cycle(500.0, 3.3)
STM32F746 = MCU(
    name="stm32f746",
    core="cortex-m7",
    part="ST STM32F746NG (Cortex-M7), e.g. on 32F746GDISCOVERY",
    clock_hz=216e6,
    sram_bytes=320 * KB,
    flash_bytes=1 * MB,
    cycles_per_mac=_M7_CPM,
    energy_per_cycle_j=_F746_E,
    sram_energy_per_byte_j=_F746_E / 4,
    flash_read_energy_per_byte_j=2 * _F746_E / 4,
    has_dsp_simd=True,
    sources=(
        "STMicroelectronics, STM32F745xx/STM32F746xx datasheet DS10916 (features; Run-mode "
        "supply current tables)",
        "Linux kernel Documentation/arch/arm/stm32/stm32f746-overview.rst (216 MHz, 1 MB flash, "
        "320 KB RAM)",
    ),
    notes=(
        "Clock and memory sizes are datasheet facts. The run current is an ESTIMATE: about "
        "0.5 mA/MHz (~110 mA at 216 MHz, peripherals off, from flash with ART and caches on), "
        "the order of ST's Run-mode tables for this part; it was not re-checked against DS10916 "
        "here. The 320 KB includes 64 KB DTCM; 4 KB backup SRAM excluded."),
    basis={
        "clock_hz": "datasheet: up to 216 MHz",
        "sram_bytes": "datasheet: 320 KB RAM (incl. 64 KB DTCM)",
        "flash_bytes": "datasheet: 1 MB flash",
        "cycles_per_mac": _M7_CPM_BASIS,
        "energy_per_cycle_j": "model: ~500 uA/MHz (estimate, order of DS10916 Run-mode tables) "
                              "x 3.3 V = 1.65 nJ/cycle",
        "sram_energy_per_byte_j": _SRAM_BYTE_BASIS,
        "flash_read_energy_per_byte_j": _IFLASH_BYTE_BASIS,
    },
)

_H743_E = _per_cycle(300.0, 3.3)
STM32H743 = MCU(
    name="stm32h743",
    core="cortex-m7",
    part="ST STM32H743ZI (Cortex-M7, silicon rev V for 480 MHz), e.g. on NUCLEO-H743ZI2",
    clock_hz=480e6,
    sram_bytes=1 * MB,
    flash_bytes=2 * MB,
    cycles_per_mac=_M7_CPM,
    energy_per_cycle_j=_H743_E,
    sram_energy_per_byte_j=_H743_E / 4,
    flash_read_energy_per_byte_j=2 * _H743_E / 4,
    has_dsp_simd=True,
    sources=(
        "STMicroelectronics, STM32H742xI/G STM32H743xI/G datasheet DS12110 (480 MHz, up to 2 MB "
        "flash, up to 1 MB RAM)",
        "STMicroelectronics AN5014 (STM32H7x3: 2400 CoreMark at 480 MHz)",
    ),
    notes=(
        "480 MHz needs silicon revision V (older X/Y parts: 400 MHz). 1 MB RAM is the total of "
        "several regions (64 KB ITCM + 128 KB DTCM + 512 KB AXI SRAM + 288 KB D2 SRAM + 64 KB D3 "
        "SRAM = 1056 KB, + 4 KB backup; ST rounds this to 'up to 1 MB', and 1 MiB is used "
        "here); the largest single region is 512 KB, which bounds one buffer. "
        "The run current is an ESTIMATE of ~0.3 mA/MHz at VOS0 (~145 mA at 480 MHz), not "
        "re-checked against DS12110's Run-mode tables."),
    basis={
        "clock_hz": "datasheet: up to 480 MHz (rev V)",
        "sram_bytes": "datasheet: up to 1 MB RAM (all regions)",
        "flash_bytes": "datasheet: 2 MB flash",
        "cycles_per_mac": _M7_CPM_BASIS,
        "energy_per_cycle_j": "model: ~300 uA/MHz (estimate) x 3.3 V = 0.99 nJ/cycle",
        "sram_energy_per_byte_j": _SRAM_BYTE_BASIS,
        "flash_read_energy_per_byte_j": _IFLASH_BYTE_BASIS,
    },
)

_RT_E = 100e-3 * 5.0 / 600e6  # board-level, see basis
IMXRT1062 = MCU(
    name="imxrt1062",
    core="cortex-m7",
    part="NXP i.MX RT1062 (Cortex-M7) on the PJRC Teensy 4.1 board",
    clock_hz=600e6,
    sram_bytes=1 * MB,
    flash_bytes=8 * MB,
    cycles_per_mac=_M7_CPM,
    energy_per_cycle_j=_RT_E,
    sram_energy_per_byte_j=_RT_E / 4,
    flash_read_energy_per_byte_j=_QSPI_BYTE,
    has_dsp_simd=True,
    sources=(
        "NXP, i.MX RT1060 Crossover Processors data sheet (600 MHz Cortex-M7, 1 MB on-chip RAM: "
        "512 KB FlexRAM TCM + 512 KB OCRAM, no internal flash)",
        "PJRC, Teensy 4.1 product page (8 MB QSPI flash; 'approximately 100 mA' at 600 MHz)",
    ),
    notes=(
        "No internal flash: the 8 MB is the Teensy 4.1 board's QSPI chip (program and constants "
        "run in place through the caches). Energy per cycle is board-level: PJRC's ~100 mA at "
        "600 MHz, taken at a 5 V USB supply (includes the board regulator); user measurements "
        "on the PJRC forum range 83-100 mA. Approximate; chip-level energy is lower."),
    basis={
        "clock_hz": "datasheet: 600 MHz",
        "sram_bytes": "datasheet: 1 MB on-chip RAM (512 KB TCM + 512 KB OCRAM)",
        "flash_bytes": "datasheet: Teensy 4.1 board carries 8 MB QSPI flash",
        "cycles_per_mac": _M7_CPM_BASIS,
        "energy_per_cycle_j": "measured: Teensy 4.1 board ~100 mA x 5 V (assumed USB) / 600 MHz "
                              "= 0.83 nJ/cycle",
        "sram_energy_per_byte_j": _SRAM_BYTE_BASIS,
        "flash_read_energy_per_byte_j": _QSPI_BYTE_BASIS,
    },
)


# ---------------------------------------------------------------------------------------------
# FPGA

KU115 = FPGA(
    name="ku115",
    part="Xilinx (AMD) Kintex UltraScale XCKU115",
    luts=663_360,
    ffs=1_326_720,
    dsps=5_520,
    bram_36k=2_160,
    clock_hz=200e6,
    sources=(
        "Xilinx DS890, UltraScale Architecture and Product Overview (Kintex UltraScale device "
        "table: XCKU115)",
    ),
    notes=(
        "Resource totals are datasheet facts: 663,360 CLB LUTs, 1,326,720 CLB flip-flops, 5,520 "
        "DSP48E2 slices, 2,160 36 Kb block RAMs (75.9 Mb). The 200 MHz clock is a model "
        "parameter: a typical hls4ml target (5 ns period), not a device limit."),
    basis={
        "luts": "datasheet: 663,360 CLB LUTs",
        "ffs": "datasheet: 1,326,720 CLB flip-flops",
        "dsps": "datasheet: 5,520 DSP slices",
        "bram_36k": "datasheet: 2,160 x 36 Kb block RAM = 75.9 Mb",
        "clock_hz": "model: 200 MHz, a common hls4ml design clock (5 ns)",
    },
)


# ---------------------------------------------------------------------------------------------
# Non-volatile memory technologies (representative literature values, macro/array level)

RRAM = NVM(
    name="rram",
    write_energy_per_bit_j=10.9e-12,
    read_energy_per_bit_j=1.76e-12,
    endurance_writes=1e6,
    sources=(
        "Gural, Nadeau, Tikekar, Murmann, 'Low-Rank Training of Deep Neural Networks for "
        "Emerging Memory Technology', arXiv 2009.03887 (RRAM macro figures they cite)",
    ),
    notes=(
        "Write 10.9 pJ/bit and read 1.76 pJ/bit are the RRAM macro figures used by Gural et al. "
        "Endurance ~1e6 writes per cell is representative of filamentary RRAM (reported range "
        "roughly 1e5-1e9 and above, device dependent)."),
    basis={
        "write_energy_per_bit_j": "model: 10.9 pJ/bit, RRAM macro as cited by Gural et al.",
        "read_energy_per_bit_j": "model: 1.76 pJ/bit, RRAM macro as cited by Gural et al.",
        "endurance_writes": "model: ~1e6 writes/cell, representative filamentary RRAM",
    },
)

PCM = NVM(
    name="pcm",
    write_energy_per_bit_j=16.8e-12,
    read_energy_per_bit_j=2.5e-12,
    endurance_writes=1e8,
    sources=(
        "Lee, Ipek, Mutlu, Burger, 'Architecting Phase Change Memory as a Scalable DRAM "
        "Alternative', ISCA 2009 (array read/write energy, endurance)",
    ),
    notes=(
        "REPRESENTATIVE array-level values: write ~17 pJ/bit (RESET-dominated), read ~2.5 pJ/bit, "
        "as used in Lee et al.'s architecture study (recalled, not re-verified here); endurance "
        "~1e8 writes/cell (reported 1e6-1e9)."),
    basis={
        "write_energy_per_bit_j": "model: ~16.8 pJ/bit array write, representative (Lee et al.)",
        "read_energy_per_bit_j": "model: ~2.5 pJ/bit array read, representative (Lee et al.)",
        "endurance_writes": "model: ~1e8 writes/cell, representative PCM",
    },
)

STT_MRAM = NVM(
    name="stt-mram",
    write_energy_per_bit_j=3e-12,
    read_energy_per_bit_j=0.5e-12,
    endurance_writes=1e12,
    sources=(
        "An Chen, 'A review of emerging non-volatile memory (NVM) technologies and "
        "applications', Solid-State Electronics 125 (2016) (technology comparison)",
    ),
    notes=(
        "REPRESENTATIVE order-of-magnitude macro-level estimates: cell switching energies are "
        "~0.1-1 pJ; with drivers and periphery a few pJ/bit written, well under 1 pJ/bit read. "
        "Endurance depends on the MTJ design: eFlash-replacement eMRAM is specified ~1e6, "
        "cache-class STT-MRAM >1e12; 1e12 taken."),
    basis={
        "write_energy_per_bit_j": "model: ~3 pJ/bit macro write, order-of-magnitude estimate",
        "read_energy_per_bit_j": "model: ~0.5 pJ/bit macro read, order-of-magnitude estimate",
        "endurance_writes": "model: 1e12 writes/cell (range 1e6-1e15 by MTJ design)",
    },
)

NOR_FLASH = NVM(
    name="nor-flash",
    write_energy_per_bit_j=100e-12,
    read_energy_per_bit_j=1e-12,
    endurance_writes=1e5,
    sources=(
        "An Chen, 'A review of emerging non-volatile memory (NVM) technologies and "
        "applications', Solid-State Electronics 125 (2016) (NOR flash: ~100 pJ/bit program, "
        "~1e5 cycles)",
        "Winbond W25Q16JV datasheet (minimum 100,000 program/erase cycles per sector)",
    ),
    notes=(
        "REPRESENTATIVE: channel-hot-electron programming ~100 pJ/bit (up to ~1 nJ with charge "
        "pumps); read ~1 pJ/bit is an order-of-magnitude estimate. A write needs a prior sector "
        "ERASE (4 KB or larger) that this per-bit figure does not include, so counting changed "
        "cells underestimates flash wear and energy. Endurance 1e5 cycles (serial NOR); many "
        "MCU internal flashes are specified for 1e4."),
    basis={
        "write_energy_per_bit_j": "model: ~100 pJ/bit program, representative (excl. erase)",
        "read_energy_per_bit_j": "model: ~1 pJ/bit read, order-of-magnitude estimate",
        "endurance_writes": "datasheet: 1e5 program/erase cycles (serial NOR, e.g. W25Q16JV)",
    },
)

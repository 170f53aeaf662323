"""Look devices up by name (case-insensitive, with core-family aliases) and tabulate them."""

from __future__ import annotations

from .profiles import (
    FPGA,
    IMXRT1062,
    KU115,
    MCU,
    NOR_FLASH,
    NRF52840,
    PCM,
    RP2040,
    RRAM,
    STM32F746,
    STM32H743,
    STM32L4R5,
    STT_MRAM,
    Device,
)

DEVICES: dict[str, Device] = {
    d.name: d
    for d in (RP2040, NRF52840, STM32L4R5, STM32F746, STM32H743, IMXRT1062, KU115, RRAM, PCM,
              STT_MRAM, NOR_FLASH)
}
"""Every profile by its canonical (lower-case) name."""

ALIASES: dict[str, str] = {
    "cortex-m0+": "rp2040",
    "cortex-m4": "nrf52840",
    "cortex-m7": "stm32f746",
}
"""Core-family names used in result records (``"device": "cortex-m4"``) -> a representative part."""


def get_device(name: str) -> Device:
    """The profile called ``name`` (case-insensitive; aliases such as ``cortex-m4`` accepted)."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in DEVICES:
        known = sorted(DEVICES) + [f"{a} (= {t})" for a, t in sorted(ALIASES.items())]
        raise ValueError(f"unknown device {name!r}; known devices: {', '.join(known)}")
    return DEVICES[key]


def _sig(x: float, digits: int = 4) -> float:
    """Round to ``digits`` significant figures (for display; profiles keep full precision)."""
    return float(f"{x:.{digits}g}")


def _row(d: Device) -> dict:
    row: dict = {"name": d.name, "kind": d.kind, "core": None, "part": None, "clock_mhz": None,
                 "sram_kb": None, "flash_kb": None, "cycles_per_mac": None, "energy_per_mac_pj": None,
                 "energy_per_cycle_pj": None, "write_pj_per_bit": None, "read_pj_per_bit": None,
                 "endurance_writes": None, "luts": None, "ffs": None, "dsps": None,
                 "bram_36k": None, "sources": len(d.sources),
                 "estimated": ", ".join(f for f in d.NUMERIC
                                        if not d.basis[f].startswith("datasheet"))}
    if isinstance(d, MCU):
        row.update(core=d.core, part=d.part, clock_mhz=_sig(d.clock_hz / 1e6),
                   sram_kb=_sig(d.sram_bytes / 1024), flash_kb=_sig(d.flash_bytes / 1024),
                   cycles_per_mac=d.cycles_per_mac, energy_per_mac_pj=_sig(d.energy_per_mac_j * 1e12),
                   energy_per_cycle_pj=_sig(d.energy_per_cycle_j * 1e12))
    elif isinstance(d, FPGA):
        row.update(part=d.part, clock_mhz=_sig(d.clock_hz / 1e6), luts=d.luts, ffs=d.ffs, dsps=d.dsps,
                   bram_36k=d.bram_36k)
    else:
        row.update(write_pj_per_bit=_sig(d.write_energy_per_bit_j * 1e12),
                   read_pj_per_bit=_sig(d.read_energy_per_bit_j * 1e12),
                   endurance_writes=float(d.endurance_writes))
    return row


def device_table(kind: str | None = None) -> list[dict]:
    """One JSON-ready row per profile (same keys for every row; ``None`` where a column does not
    apply), optionally only those of ``kind`` (``"mcu"``, ``"fpga"``, ``"nvm"``). Values are
    rounded to 4 significant figures; ``estimated`` lists the fields that are not datasheet
    facts (board measurements, derived or model values)."""
    return [_row(d) for d in DEVICES.values() if kind is None or d.kind == kind]

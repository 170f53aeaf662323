"""Latency and energy: counts x a device profile. Nothing is measured here; every figure is a
count multiplied by the profile's numbers, so it is exactly as good as those numbers (see each
profile's ``basis``; cycles per MAC and energy per cycle are model parameters)."""

from __future__ import annotations

from ..device.profiles import MCU
from .ledger import Ledger


def _mcu(device: object) -> MCU:
    if not isinstance(device, MCU):
        raise TypeError(f"latency/energy need an MCU profile, got {getattr(device, 'name', device)!r}")
    return device


def latency_s(macs: int, device: MCU) -> float:
    """``macs x cycles_per_mac / clock_hz``: compute time of the MACs on one core."""
    d = _mcu(device)
    return macs * d.cycles_per_mac / d.clock_hz


def energy_j(macs: int, device: MCU, bytes_moved: int = 0) -> float:
    """``macs x cycles_per_mac x energy_per_cycle + bytes_moved x sram_energy_per_byte``.

    ``bytes_moved`` is traffic *beyond* the MAC kernels (whose loads are already in
    ``cycles_per_mac``): copies, weight write-backs, buffer shuffles.
    """
    d = _mcu(device)
    return macs * d.cycles_per_mac * d.energy_per_cycle_j + bytes_moved * d.sram_energy_per_byte_j


def with_device(ledger: Ledger, device: MCU, bytes_moved: int = 0) -> Ledger:
    """``ledger`` with ``latency_s`` and ``energy_j`` computed from its ``macs`` on ``device``.

    Both fields are *replaced* (``None`` when the ledger has no MAC count). Add other energy,
    such as NVM write energy, afterwards: ``with_device(l, d) + Ledger(energy_j=e_writes)``.
    """
    if ledger.macs is None:
        return ledger.replace(latency_s=None, energy_j=None)
    return ledger.replace(latency_s=latency_s(ledger.macs, device),
                          energy_j=energy_j(ledger.macs, device, bytes_moved))

"""Device profiles: real parts (Cortex-M0+/M4/M7 boards, an FPGA, NVM technologies) as numbers
with sources. Each profile's ``basis`` says which numbers are datasheet facts, which are board
measurements, and which are model parameters (and on what they rest)."""

from .profiles import (
    BASIS_KINDS,
    FPGA,
    IMXRT1062,
    KU115,
    MCU,
    NOR_FLASH,
    NRF52840,
    NVM,
    PCM,
    RP2040,
    RRAM,
    STM32F746,
    STM32H743,
    STM32L4R5,
    STT_MRAM,
    Device,
)
from .registry import ALIASES, DEVICES, device_table, get_device

__all__ = [
    "ALIASES", "BASIS_KINDS", "DEVICES", "Device", "FPGA", "IMXRT1062", "KU115", "MCU", "NOR_FLASH",
    "NRF52840", "NVM", "PCM", "RP2040", "RRAM", "STM32F746", "STM32H743", "STM32L4R5", "STT_MRAM",
    "device_table", "get_device",
]

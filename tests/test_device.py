"""Device profiles: lookup, aliases, and that every number is positive and accounted for."""

import json

import pytest

from edgetrain.device import (
    ALIASES,
    BASIS_KINDS,
    DEVICES,
    FPGA,
    KU115,
    MCU,
    NRF52840,
    NVM,
    RP2040,
    RRAM,
    STM32F746,
    device_table,
    get_device,
)


@pytest.mark.parametrize("name, expected", [
    ("cortex-m0+", "rp2040"),
    ("cortex-m4", "nrf52840"),
    ("cortex-m7", "stm32f746"),
    ("Cortex-M4", "nrf52840"),
    (" RP2040 ", "rp2040"),
    ("STM32H743", "stm32h743"),
    ("iMXRT1062", "imxrt1062"),
    ("KU115", "ku115"),
    ("STT-MRAM", "stt-mram"),
])
def test_names_and_aliases_resolve(name, expected):
    assert get_device(name) is DEVICES[expected]


def test_alias_targets_exist_and_cores_match():
    for alias, target in ALIASES.items():
        assert target in DEVICES
        assert DEVICES[target].core == alias


def test_unknown_device_error_lists_known_names():
    with pytest.raises(ValueError) as e:
        get_device("esp32")
    msg = str(e.value)
    assert "esp32" in msg
    for name in DEVICES:
        assert name in msg
    assert "cortex-m4" in msg


@pytest.mark.parametrize("device", list(DEVICES.values()), ids=list(DEVICES))
def test_every_profile_is_positive_sourced_and_explained(device):
    assert device.sources and all(isinstance(s, str) and s for s in device.sources)
    assert device.notes
    for f in device.NUMERIC:
        value = getattr(device, f)
        assert value > 0, f
        assert device.basis[f].split(":", 1)[0] in BASIS_KINDS, f


def test_expected_datasheet_numbers():
    rows = {(d.name): (d.clock_hz, d.sram_bytes, d.flash_bytes)
            for d in DEVICES.values() if isinstance(d, MCU)}
    kb, mb = 1024, 1024 * 1024
    assert rows == {
        "rp2040": (133e6, 264 * kb, 2 * mb),
        "nrf52840": (64e6, 256 * kb, 1 * mb),
        "stm32l4r5": (120e6, 640 * kb, 2 * mb),
        "stm32f746": (216e6, 320 * kb, 1 * mb),
        "stm32h743": (480e6, 1 * mb, 2 * mb),
        "imxrt1062": (600e6, 1 * mb, 8 * mb),
    }
    assert not RP2040.has_dsp_simd and NRF52840.has_dsp_simd
    assert RP2040.cycles_per_mac > NRF52840.cycles_per_mac > STM32F746.cycles_per_mac


def test_energy_per_cycle_follows_stated_current_and_voltage():
    assert NRF52840.energy_per_cycle_j == pytest.approx(52e-6 * 3.0 / 1e6)
    assert NRF52840.energy_per_mac_j == pytest.approx(NRF52840.cycles_per_mac * 156e-12)


def test_fpga_totals():
    assert (KU115.luts, KU115.ffs, KU115.dsps, KU115.bram_36k) == (663_360, 1_326_720, 5_520, 2_160)
    assert KU115.bram_bits / 2**20 == pytest.approx(75.9, abs=0.05)


def test_rram_matches_gural_et_al():
    assert RRAM.write_energy_per_bit_j == pytest.approx(10.9e-12)
    assert RRAM.read_energy_per_bit_j == pytest.approx(1.76e-12)
    assert RRAM.endurance_writes == 1e6


def test_profiles_refuse_unexplained_or_nonpositive_numbers():
    good = dict(name="x", part="p", luts=1, ffs=1, dsps=1, bram_36k=1, clock_hz=1e6,
                sources=("s",), notes="n",
                basis={f: "datasheet: x" for f in FPGA.NUMERIC})
    FPGA(**good)
    with pytest.raises(ValueError, match="basis"):
        FPGA(**{**good, "basis": {}})
    with pytest.raises(ValueError, match="positive"):
        FPGA(**{**good, "dsps": 0})
    with pytest.raises(ValueError, match="source"):
        FPGA(**{**good, "sources": ()})
    with pytest.raises(ValueError, match="basis"):
        NVM("y", 1e-12, 1e-12, 1e6, ("s",), "n", {f: "guess: x" for f in NVM.NUMERIC})


def test_device_table_rows_are_uniform_and_json_serialisable():
    rows = device_table()
    assert [r["name"] for r in rows] == list(DEVICES)
    keys = set(rows[0])
    assert all(set(r) == keys for r in rows)
    json.loads(json.dumps(rows))
    m4 = next(r for r in rows if r["name"] == "nrf52840")
    assert m4["kind"] == "mcu" and m4["clock_mhz"] == 64 and m4["sram_kb"] == 256
    assert m4["energy_per_mac_pj"] == pytest.approx(156.0 * NRF52840.cycles_per_mac, rel=1e-3)  # 156 pJ/cycle
    assert "cycles_per_mac" in m4["estimated"] and "clock_hz" not in m4["estimated"]
    assert [r["name"] for r in device_table("nvm")] == ["rram", "pcm", "stt-mram", "nor-flash"]

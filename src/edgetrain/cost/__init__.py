"""Costs as counts: MACs per layer and phase, peak RAM from buffer lifetimes, flash bytes, weight
writes per cell, and latency/energy as counts x a device profile, all gathered in a ``Ledger``."""

from .energy import energy_j, latency_s, with_device
from .ledger import ADDITIVE, PEAK, Ledger, total
from .macs import (
    LayerMacs,
    inference_ledger,
    inference_macs,
    layer_macs,
    model_macs,
    training_ledger,
    training_macs,
)
from .memory import (
    BUFFER_KINDS,
    REQUANT_PAIR_BYTES,
    Buffer,
    FitReport,
    MemoryPlan,
    activation_bytes,
    bytes_per_value,
    fits,
    flash_bytes,
    flash_items,
    inference_plan,
    model_fits,
    param_bytes,
    requant_pairs,
)
from .training_memory import (
    OPTIMIZERS,
    PRECISIONS,
    TRAINING_KINDS,
    DoesNotFit,
    check_training_fits,
    step_label,
    training_flash_bytes,
    training_memory,
    training_plan,
)
from .writes import (
    WriteCounter,
    advance,
    cells,
    init_writes,
    lifetime_steps,
    max_writes_per_cell,
    mean_write_density,
    record_model_writes,
    record_writes,
    summary,
    total_writes,
    write_energy_j,
    writes_ledger,
)

__all__ = [
    "ADDITIVE", "BUFFER_KINDS", "Buffer", "DoesNotFit", "FitReport", "LayerMacs", "Ledger", "MemoryPlan", "PEAK",
    "REQUANT_PAIR_BYTES", "WriteCounter", "activation_bytes", "advance", "bytes_per_value", "cells",
    "energy_j", "fits", "flash_bytes", "flash_items", "inference_ledger", "inference_macs",
    "inference_plan", "init_writes", "latency_s", "layer_macs", "lifetime_steps",
    "max_writes_per_cell", "mean_write_density", "model_fits", "model_macs", "param_bytes",
    "record_model_writes", "record_writes", "requant_pairs", "summary", "total", "total_writes",
    "training_ledger", "training_macs", "with_device", "write_energy_j", "writes_ledger",
    "OPTIMIZERS", "PRECISIONS", "TRAINING_KINDS", "check_training_fits", "step_label", "training_flash_bytes",
    "training_memory", "training_plan",
]

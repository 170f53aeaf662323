"""Low-rank training for weights in non-volatile memory (Gural et al., arXiv 2009.03887):
``kronecker`` accumulates gradients as a streaming rank-r Kronecker sum; ``trainer`` runs it and the
SGD / bias-only / inference-only baselines online, counting every weight write."""

from .kronecker import KSum, ksum_add, ksum_bytes, ksum_init, ksum_matrix, ksum_reset
from .trainer import METHODS, WEIGHT_METHODS, NVMState, NVMTrainer

__all__ = ["METHODS", "WEIGHT_METHODS", "KSum", "NVMState", "NVMTrainer", "ksum_add", "ksum_bytes", "ksum_init",
           "ksum_matrix", "ksum_reset"]

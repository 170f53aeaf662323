"""The deployed network: layers as data, integer-exact and float forwards, conversion, files."""

from .deployed import DeployedModel
from .layers import LAYER_TYPES, Conv1d, Conv2d, Dense, Flatten, GlobalAvgPool, Layer, MaxPool, ReLU

__all__ = ["Conv1d", "Conv2d", "Dense", "DeployedModel", "Flatten", "GlobalAvgPool", "LAYER_TYPES",
           "Layer", "MaxPool", "ReLU"]

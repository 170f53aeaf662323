"""What changes after deployment: the inputs (noise, spatial transforms, contrast and offset), the
order of the stream (class clustering, scheduled segments) and the stored weights (analog drift,
bit flips). Every shift has a spec string (``noise:0.3``, ``analog:4``) that names it in configs
and result records; see ``spec.py`` for the grammar.
"""

from .input import (
    Compose,
    Contrast,
    GaussianNoise,
    NoShift,
    Offset,
    Rotate,
    Scale,
    Shift,
    Translate,
    WhiteNoise,
    affine_transform,
    as_generator,
    contrast_offset,
    gaussian_noise,
    is_random,
    white_noise,
)
from .spec import SHIFT_KINDS, parse_drift, parse_schedule, parse_shift
from .stream import Schedule, class_clustered_order
from .weights import DRIFT_KINDS, WeightDrift, analog_drift, bit_flips, drift_model

__all__ = [
    "Compose", "Contrast", "DRIFT_KINDS", "GaussianNoise", "NoShift", "Offset", "Rotate",
    "SHIFT_KINDS", "Scale", "Schedule", "Shift", "Translate", "WeightDrift", "WhiteNoise",
    "affine_transform", "analog_drift", "as_generator", "bit_flips", "class_clustered_order",
    "contrast_offset", "drift_model", "gaussian_noise", "is_random", "parse_drift",
    "parse_schedule", "parse_shift", "white_noise",
]

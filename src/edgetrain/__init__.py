"""edgetrain: train quantized neural networks on the device where they are deployed.

The package is organised as the pipeline it implements (see DESIGN.md):
``data -> model -> shift -> train -> cost -> report``.
"""

__version__ = "0.1.0"

"""Fully quantized training with dynamic partial updates (Deutel et al., arXiv 2407.10734):
``kernels`` holds the uint8 backward kernels with int32 accumulation; ``blockfloat`` the opt-in int16
block-floating-point mini-batch gradient buffer (our extension)."""

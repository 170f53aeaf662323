"""Experiments: the demo and the commands the CLI calls (configs and sweeps come later)."""

"""Data and devices: inputs -> batches, placement and precision, torchrun."""

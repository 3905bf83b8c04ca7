"""The analysis of a model: its activations on fixed images (capture) and the per-layer metrics."""

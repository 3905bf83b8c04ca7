"""The controls that the phases' claims are read against, computed block by block with the metrics.

- Channel order. A trained network fixes no order of its channels: permuting a layer's channels
  (with the weights) gives the same network. A spectrum along the channel axis therefore says
  something about the layer only where it differs from the spectrum of the same activations with
  their channels permuted. Each layer gets one fixed random permutation, drawn from
  (`seed`, layer); the permuted spectrum is the mean over every fourth position of each image
  (`CONTROL_STRIDE`): a few thousand channel vectors per layer estimate a mean spectrum closely, and
  the control then costs a quarter of the spectrum's FFT instead of all of it.
- Width. The entropy of a C-value histogram grows with C (up to log2(min(C, bins)) bits), so a narrow
  layer looks like a bottleneck whatever it computes. Where a model's layers differ in width, each
  layer's entropy is also taken on vectors of the narrowest layer's width, C_ref: the layer's
  channels, in a fixed random order, cut into floor(C / C_ref) disjoint groups of C_ref, the entropy of
  each group's vector averaged. Layers whose values come from one distribution then have the same
  expected entropy whatever their widths.
"""
from __future__ import annotations

import numpy as np

CONTROL_STRIDE = 4  # the channel-order control's spectrum reads every 4th position of each image


def channel_permutation(channels: int, seed: int, layer: int) -> np.ndarray:
    """The fixed random order of a layer's channels used by both controls."""
    return np.random.default_rng([seed, layer]).permutation(channels)


def matched_entropies(x: np.ndarray, reference_channels: int, order: np.ndarray, bins: int,
                      value_range: tuple | None) -> np.ndarray:
    """Each sample's mean entropy over positions and channel groups of a (samples, C, positions) block,
    its channels taken in `order` and cut into floor(C / reference_channels) groups: (samples,)."""
    from .metrics import position_entropies

    samples, c, positions = x.shape
    groups = c // reference_channels
    chosen = x[:, order[:groups * reference_channels]]  # (samples, groups * C_ref, positions)
    # each group of C_ref channels at each position is one vector: groups become more positions
    vectors = chosen.reshape(samples, groups, reference_channels, positions).transpose(0, 2, 1, 3)
    vectors = np.ascontiguousarray(vectors).reshape(samples, reference_channels, groups * positions)
    return position_entropies(vectors, bins, value_range).mean(axis=1)

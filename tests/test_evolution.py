"""The students' entropy snapshots use the analysis's definition over the student's own layers."""
import numpy as np
import pytest
import timm
import torch

from dyn.models import features
from dyn.training.evolution import layer_profile

import reference


@pytest.mark.parametrize("entropy_range", ["global", "vector"])
def test_snapshot_entropy_is_the_analysis_entropy(entropy_range):
    torch.manual_seed(0)
    model = timm.create_model("deit_digits").eval()
    images = torch.randn(6, 1, 8, 8)
    with torch.inference_mode():
        maps = [m.numpy() for m in features(model, images)]
    bounds = (min(m.min() for m in maps), max(m.max() for m in maps)) if entropy_range == "global" else None
    got = layer_profile(model, images, bins=100, batch_size=4, entropy_range=entropy_range)  # two batches
    expected = [reference.entropy(m, bins=100, value_range=bounds) for m in maps]
    np.testing.assert_allclose(got["entropy"], expected, rtol=1e-9)
    np.testing.assert_allclose(got["magnitude"], [reference.magnitude(m) for m in maps], rtol=1e-6)

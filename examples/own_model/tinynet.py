"""Two plain torch models (no timm) for the "Your own model" walkthrough of the README: a small
patch-token transformer, the teacher, and a narrower one, the student. `dyn` calls each function with
`num_classes` and picks the layers by module name (`blocks.*` in the config)."""
import torch
from torch import nn


class TinyTransformer(nn.Module):
    # timm's transforms read this: 8x8 images (an image folder is read as RGB)
    pretrained_cfg = {"input_size": (3, 8, 8), "mean": (0.3,) * 3, "std": (0.4,) * 3, "crop_pct": 1.0,
                      "interpolation": "bilinear"}

    def __init__(self, num_classes: int, width: int, depth: int):
        super().__init__()
        self.embed = nn.Conv2d(3, width, kernel_size=2, stride=2)  # 4x4 = 16 patch tokens
        layer = dict(d_model=width, nhead=2, dim_feedforward=2 * width, batch_first=True, dropout=0.0)
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(**layer) for _ in range(depth))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (B, N, C): captured as (C, N, 1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(tokens.mean(dim=1))


def teacher(num_classes: int) -> nn.Module:
    return TinyTransformer(num_classes, width=32, depth=6)


def student(num_classes: int) -> nn.Module:
    return TinyTransformer(num_classes, width=16, depth=4)

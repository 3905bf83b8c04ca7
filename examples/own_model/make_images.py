"""An image folder in the ImageNet layout, <out>/{train,val}/<class>/*.png, from scikit-learn's bundled
digits (8x8 greyscale, 10 classes; no download): stand-in images for the README's "Your own model"."""
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

out = Path(sys.argv[1])
digits = load_digits()
for i, (image, label) in enumerate(zip(digits.images, digits.target)):
    split = "val" if i % 5 == 0 else "train"  # every fifth image is for validation
    folder = out / split / f"class_{label}"
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray((image * 255 / 16).round().astype(np.uint8)).save(folder / f"{i:04d}.png")
print(f"wrote {len(digits.target)} images to {out}")

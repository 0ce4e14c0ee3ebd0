"""A tiny, learnable image folder (coloured circles, squares, triangles on noise), for the smoke
config and the tests: no download, seconds to train on a CPU.

    python -m transfer.synthetic examples/shapes
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")


def draw_shape(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    background = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
    img = Image.fromarray(background)
    r = rng.uniform(0.25, 0.4) * size
    cx, cy = rng.uniform(r, size - r, 2)
    colour = tuple(int(c) for c in rng.integers(120, 256, 3))
    draw = ImageDraw.Draw(img)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return img


def make_image_folder(root: str | Path, train_per_class: int = 16, val_per_class: int = 6, size: int = 40,
                      classes: tuple[str, ...] = SHAPES, seed: int = 0, suffix: str = ".png") -> Path:
    """root/{train,val}/<class>/<n>.png; image sides vary a little so resizing is exercised."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for k, shape in enumerate(classes):
            folder = root / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                img = draw_shape(SHAPES[k % len(SHAPES)], size, rng)
                if i % 3 == 1:  # a wider image: the transforms must keep the aspect ratio
                    img = img.resize((size * 5 // 4, size))
                img.save(folder / f"{shape}_{i:03d}{suffix}")
    return root


if __name__ == "__main__":
    print(make_image_folder(sys.argv[1] if len(sys.argv) > 1 else "examples/shapes"))

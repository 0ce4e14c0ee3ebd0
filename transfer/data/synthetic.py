"""A tiny, learnable image folder (coloured circles, squares, triangles on noise), for the smoke
config and the tests: no download, seconds to train on a CPU.

    python -m transfer.data.synthetic examples/shapes
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


# The demo's two tasks share a domain (flat shapes on noise) but not a class: what a network
# learns on the source (edges, corners, curvature) is what the target needs, as ImageNet
# features are for Imagewoof.
SOURCE_SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
TARGET_SHAPES = ("hexagon", "pentagon", "crescent", "arrow", "semicircle", "bowtie")
_OUTLINES = {  # unit polygons, rotated at random when drawn
    "star": [(np.cos(a), np.sin(a)) if k % 2 == 0 else (0.45 * np.cos(a), 0.45 * np.sin(a))
             for k, a in enumerate(np.linspace(-np.pi / 2, 3 * np.pi / 2, 10, endpoint=False))],
    "cross": [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1),
              (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)],
    "hexagon": [(np.cos(a), np.sin(a)) for a in np.linspace(0, 2 * np.pi, 6, endpoint=False)],
    "pentagon": [(np.cos(a), np.sin(a)) for a in np.linspace(-np.pi / 2, 3 * np.pi / 2, 5, endpoint=False)],
    "arrow": [(-1, -0.3), (0.2, -0.3), (0.2, -0.75), (1, 0), (0.2, 0.75), (0.2, 0.3), (-1, 0.3)],
    "bowtie": [(-1, -0.8), (0, 0), (1, -0.8), (1, 0.8), (0, 0), (-1, 0.8)],
}


def draw_any(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    """Any shape of SHAPES, SOURCE_SHAPES or TARGET_SHAPES: random colour, size, place and angle."""
    if shape in SHAPES:
        return draw_shape(shape, size, rng)
    img = Image.fromarray(rng.integers(0, 90, (size, size, 3), dtype=np.uint8))
    r = rng.uniform(0.28, 0.42) * size
    cx, cy = rng.uniform(r, size - r, 2)
    angle = rng.uniform(0, 2 * np.pi)
    colour = tuple(int(c) for c in rng.integers(120, 256, 3))
    draw = ImageDraw.Draw(img)
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(r / 3)))
    elif shape == "crescent":
        draw.ellipse(box, fill=colour)
        dx, dy = 0.55 * r * np.cos(angle), 0.55 * r * np.sin(angle)
        draw.ellipse([cx - r + dx, cy - r + dy, cx + r + dx, cy + r + dy], fill=(40, 40, 40))
    elif shape == "semicircle":
        start = float(np.degrees(angle))
        draw.pieslice(box, start, start + 180, fill=colour)
    else:
        c, s_ = np.cos(angle), np.sin(angle)
        draw.polygon([(cx + r * (x * c - y * s_), cy + r * (x * s_ + y * c)) for x, y in _OUTLINES[shape]], fill=colour)
    return img


def make_demo_tasks(root: str | Path, source_per_class: int = 80, target_train_per_class: int = 40,
                    target_val_per_class: int = 25, size: int = 32, seed: int = 0) -> tuple[Path, Path]:
    """root/source/{train,val}/<shape>/ and root/target/{train,val}/<shape>/ with other shapes."""
    root = Path(root)
    source = make_image_folder(root / "source", source_per_class, 20, size, SOURCE_SHAPES, seed, draw=draw_any)
    target = make_image_folder(root / "target", target_train_per_class, target_val_per_class, size, TARGET_SHAPES,
                               seed + 1, draw=draw_any)
    return source, target


def make_image_folder(root: str | Path, train_per_class: int = 16, val_per_class: int = 6, size: int = 40,
                      classes: tuple[str, ...] = SHAPES, seed: int = 0, suffix: str = ".png", draw=None) -> Path:
    """root/{train,val}/<class>/<n>.png; image sides vary a little so resizing is exercised.
    `draw(shape, size, rng)` draws class k; by default the k-th of SHAPES (cycling)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for k, shape in enumerate(classes):
            folder = root / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                img = draw(shape, size, rng) if draw else draw_shape(SHAPES[k % len(SHAPES)], size, rng)
                if i % 3 == 1:  # a wider image: the transforms must keep the aspect ratio
                    img = img.resize((size * 5 // 4, size))
                img.save(folder / f"{shape}_{i:03d}{suffix}")
    return root


if __name__ == "__main__":
    print(make_image_folder(sys.argv[1] if len(sys.argv) > 1 else "examples/shapes"))

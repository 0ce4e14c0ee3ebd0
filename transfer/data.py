"""Data: find or fetch the image folder, load it with `datasets`, transform on the fly.

Transforms return uint8 HWC tensors; `normalize` turns a batch into model input on the device.
That keeps the float conversion off the CPU workers and makes host-to-device copies 4x smaller,
while computing exactly what torchvision's pipeline computes:
  train: Resize(short side) + RandomCrop(size, padding=4, reflect) + RandomHorizontalFlip + ToTensor + Normalize
  val:   Resize(short side) + CenterCrop(size) + ToTensor + Normalize
(Resize is a no-op when the short side already equals `size`, as in Imagewoof-160.)
"""
from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torch.utils.data import DataLoader
from PIL import Image, ImageFile, UnidentifiedImageError

from .config import DataConfig
from .errors import DataError

PAD = 4  # the article's RandomCrop padding
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey half-image
# What Pillow raises for a file it cannot decode; a decompression bomb (more pixels than
# Image.MAX_IMAGE_PIXELS allows) is no OSError but is just as unusable.
DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


# ---------------------------------------------------------------------------- layout and loading

def class_images(class_dir: Path) -> list[str]:
    """The image files directly in a class folder, sorted (other files are ignored)."""
    return sorted(str(f) for f in class_dir.iterdir()
                  if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file() and not f.name.startswith("."))


def find_classes(split_dir: Path) -> dict[str, int]:
    """Class folder name -> number of image files in it."""
    return {d.name: len(class_images(d)) for d in sorted(split_dir.iterdir())
            if d.is_dir() and not d.name.startswith(".")}


def check_layout(root: Path) -> list[str]:
    """Fail early, naming the folder, unless root/train and root/val are matching class folders."""
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"data.root {root} {what}; point data.root at a folder with train/ and val/, "
                        f"or set data.url to an archive to fetch")
    counts = {}
    for split in ("train", "val"):
        split_dir = root / split
        if not split_dir.is_dir():
            raise DataError(f"{split_dir} is missing: data.root must hold train/ and val/, "
                            f"each with one subfolder per class")
        counts[split] = find_classes(split_dir)
        if not counts[split]:
            raise DataError(f"{split_dir} has no class subfolders; put each class's images in {split_dir}/<class>/")
        empty = [c for c, n in counts[split].items() if n == 0]
        if empty:
            raise DataError(f"class folder {split_dir / empty[0]} has no images "
                            f"({', '.join(sorted(IMAGE_EXTENSIONS))}); add images or remove the folder")
    extra = sorted(set(counts["val"]) - set(counts["train"]))
    if extra:
        raise DataError(f"class {extra[0]!r} is in {root / 'val'} but not in {root / 'train'}; "
                        f"every validation class needs training images")
    if len(counts["train"]) < 2:
        raise DataError(f"{root / 'train'} has one class ({next(iter(counts['train']))!r}); a classifier needs at "
                        f"least two class folders")
    return sorted(counts["train"])


def load_splits(root: Path):
    """Both splits as `datasets` image folders, with one shared, sorted list of class names.

    Images stay undecoded (`path` only) so decoding errors can name the file.
    """
    import datasets

    datasets.disable_progress_bars()  # listing a local folder is no download worth a bar
    classes = check_layout(root)
    features = datasets.Features({"image": datasets.Image(decode=False),
                                  "label": datasets.ClassLabel(names=classes)})
    splits = {}
    for name, folder in (("train", "train"), ("validation", "val")):
        # Explicit file lists: with data_dir, `datasets` would guess splits from file names, and
        # Imagewoof's val/ holds files named ILSVRC2012_val_*. `datasets` reads each entry as a
        # glob pattern, so names with [ ] * ? are escaped to match only themselves.
        files = [glob.escape(f) for c in classes if (root / folder / c).is_dir() for f in class_images(root / folder / c)]
        splits[name] = datasets.load_dataset("imagefolder", data_files={name: files}, split=name, features=features)
    return splits["train"], splits["validation"], classes


def class_display_names(classes: list[str]) -> list[str]:
    """WordNet ids (Imagewoof's n02086240, ...) get their ImageNet names; other names stay."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    names = []
    for c in classes:
        try:
            names.append(info.label_name_to_description(c) if c.startswith("n") else c)
        except (KeyError, ValueError, IndexError):
            names.append(c)
    return names


# ---------------------------------------------------------------------------- transforms

def open_rgb(path: str) -> Image.Image:
    """Decode any image mode (grey, RGBA, palette, CMYK) to RGB; a bad file names itself."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except DECODE_ERRORS as e:
        raise DataError(f"cannot read image {path} ({e}); delete or replace it") from None


def _window(a: np.ndarray, axis: int, start: int, size: int) -> np.ndarray:
    """a[start:start+size] along `axis`, reflecting (numpy 'reflect', no edge repeat) where the
    window overhangs by at most PAD. Slices and one concatenate: no index arrays, no full pad."""
    n, end = a.shape[axis], start + size
    at = lambda s: (slice(None),) * axis + (s,)  # noqa: E731
    if start >= 0 and end <= n:
        return a[at(slice(start, end))]
    pieces = [a[at(slice(-start, 0, -1))]] if start < 0 else []  # rows -start .. 1
    pieces.append(a[at(slice(max(start, 0), min(end, n)))])
    if end > n:
        pieces.append(a[at(slice(n - 2, 2 * n - 2 - end, -1))])  # rows n-2 .. 2n-1-end
    return np.concatenate(pieces, axis)


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, order="C"))  # a writable copy of the (read-only) PIL pixels


@dataclass(frozen=True)
class TrainTransform:
    """RandomCrop(size, padding=4, reflect) + optional flip, drawing torch RNG like torchvision
    does. Returns HWC uint8: a stacked batch of these, permuted to NCHW, is channels_last."""
    size: int
    hflip: bool = True

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if min(img.size) != self.size:
            img = TF.resize(img, self.size)
        a = np.asarray(img)
        h, w = a.shape[:2]
        ph, pw = h + 2 * PAD, w + 2 * PAD
        i = j = 0
        if (ph, pw) != (self.size, self.size):  # torchvision's get_params draws nothing in that case
            i = int(torch.randint(0, ph - self.size + 1, size=(1,)).item())
            j = int(torch.randint(0, pw - self.size + 1, size=(1,)).item())
        crop = _window(_window(a, 0, i - PAD, self.size), 1, j - PAD, self.size)
        if self.hflip and torch.rand(1) < 0.5:
            crop = crop[:, ::-1]
        return _tensor(crop)


@dataclass(frozen=True)
class EvalTransform:
    """Resize the short side, then centre-crop: keeps the aspect ratio (the article squashed). HWC uint8."""
    size: int

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if min(img.size) != self.size:
            img = TF.resize(img, self.size)
        a = np.asarray(img)
        h, w = a.shape[:2]
        top, left = int(round((h - self.size) / 2.0)), int(round((w - self.size) / 2.0))
        return _tensor(a[top:top + self.size, left:left + self.size])


@dataclass(frozen=True)
class BatchTransform:
    """`datasets.with_transform` hook: a batch of {'image': {'path'}, 'label'} -> uint8 tensors."""
    image_transform: TrainTransform | EvalTransform

    def __call__(self, batch: dict) -> dict:
        return {"pixel_values": [self.image_transform(open_rgb(image["path"])) for image in batch["image"]],
                "labels": batch["label"]}


def collate(examples: list[dict]) -> dict:
    return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "labels": torch.tensor([e["labels"] for e in examples], dtype=torch.long)}


def normalize(pixels: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 NHWC batch -> normalised float NCHW in channels_last memory (a permuted view, no
    copy); the same arithmetic as ToTensor + Normalize."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=pixels.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=pixels.device).view(1, -1, 1, 1)
    return pixels.permute(0, 3, 1, 2).float().div_(255).sub_(mean).div_(std)


def image_error(path: str) -> str | None:
    """Why the file does not decode, or None. JPEGs are decoded at 1/8 scale: all the data is
    still read (so truncation shows) at a fraction of the cost."""
    try:
        with Image.open(path) as img:
            img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
        return None
    except DECODE_ERRORS as e:
        return str(e) or type(e).__name__


def drop_bad_images(ds, split: str, skip: bool, num_proc: int):
    """Decode every image once before training (the result is cached by `datasets`):
    a bad one stops the run naming the file, or is dropped with `skip`."""
    checked = ds.map(lambda batch: {"error": [image_error(i["path"]) for i in batch["image"]]},
                     batched=True, num_proc=num_proc if len(ds) >= 2000 and num_proc > 1 else None)
    errors = checked["error"]
    bad = [i for i, e in enumerate(errors) if e is not None]
    if bad and not skip:
        first = bad[0]
        raise DataError(f"{len(bad)} unreadable image(s) in {split}/, first {checked[first]['image']['path']} "
                        f"({errors[first]}); delete or replace them, or set data.skip_bad_images=true")
    if bad:
        ds = ds.select([i for i, e in enumerate(errors) if e is None])
    return ds, len(bad)


def build_datasets(cfg: DataConfig, root: Path):
    """Train and validation datasets with on-the-fly transforms, the class names, and how many
    bad images each split skipped ({"train": n, "val": m})."""
    train, val, classes = load_splits(root)
    train, bad_train = drop_bad_images(train, "train", cfg.skip_bad_images, cfg.num_workers)
    val, bad_val = drop_bad_images(val, "val", cfg.skip_bad_images, cfg.num_workers)
    train = train.with_transform(BatchTransform(TrainTransform(cfg.image_size, cfg.hflip)))
    val = val.with_transform(BatchTransform(EvalTransform(cfg.image_size)))
    return train, val, classes, {"train": bad_train, "val": bad_val}


def splits_line(train_images: int, val_images: int, classes: int, skipped: dict[str, int]) -> str:
    """`train: 9,025 images in 10 classes; val: 3,929 images`, and what was skipped."""
    def part(split, n):
        return f"{n:,} images" + (f" ({skipped[split]:,} unreadable skipped)" if skipped.get(split) else "")
    return f"train: {part('train', train_images)} in {classes} classes; val: {part('val', val_images)}"


def make_loaders(train_ds, val_ds, batch_size: int, num_workers: int, num_processes: int, collate_fn=collate):
    # No persistent workers: each epoch's workers are seeded from the (per-epoch reseeded) main
    # RNG, so augmentation depends on the seed and epoch alone and a resumed run is exact.
    common = dict(num_workers=num_workers, collate_fn=collate_fn, pin_memory=torch.cuda.is_available())
    # Drop the ragged last batch (a batch of one breaks batch norm) unless that is all there is.
    drop_last = len(train_ds) >= batch_size * num_processes
    train_dl = DataLoader(train_ds, batch_size=batch_size, shuffle=True, drop_last=drop_last, **common)
    val_dl = DataLoader(val_ds, batch_size=batch_size * 2, shuffle=False, **common)
    return train_dl, val_dl


def paths_and_labels(ds) -> tuple[list[str], list[int]]:
    """File and label of each sample of a split, in order."""
    raw = ds.with_format(None)
    return [image["path"] for image in raw["image"]], raw["label"]


def resolve_root(cfg: DataConfig) -> Path:
    """`data.root`, fetched from `data.url` first when it does not exist yet."""
    root = Path(cfg.root).expanduser()
    if not root.exists() and cfg.url:
        from .download import fetch_dataset
        fetch_dataset(cfg.url, root, cfg.sha256)
    check_layout(root)
    return root


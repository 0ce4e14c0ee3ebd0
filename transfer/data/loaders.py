"""Data for a run: the source's splits (sources.py), every image checked once, transforms on the
fly (transforms.py), and the loaders: JPEGs decoded by loader workers, or the set decoded once
into device memory (cache.py), as `data.cache` and the free memory decide."""
from __future__ import annotations

import itertools
import time

from torch.utils.data import DataLoader

from ..config import DataConfig
from ..errors import DataError
from . import cache
from .images import image_error
from .sources import Source, load_source
from .transforms import (BatchTransform, Draws, EvalTransform, TrainSplit, TrainTransform, collate,
                         ignore_stop_signals)


def drop_bad_images(ds, split: str, skip: bool, num_proc: int):
    """Decode every image once before training (the result is cached by `datasets`):
    a bad one stops the run naming it (its path, or `split[index]`), or is dropped with `skip`."""
    checked = ds.map(lambda batch: {"error": [image_error(i) for i in batch["image"]]},
                     batched=True, num_proc=num_proc if len(ds) >= 2000 and num_proc > 1 else None)
    errors = list(checked["error"])
    bad = [i for i, e in enumerate(errors) if e is not None]
    if bad and not skip:
        first = bad[0]
        raise DataError(f"{len(bad)} unreadable image(s) in the {split} split, first {checked[first]['id']} "
                        f"({errors[first]}); delete or replace them, or set data.skip_bad_images=true")
    if bad:
        ds = ds.select([i for i, e in enumerate(errors) if e is None])
    return ds, len(bad)


def build_datasets(cfg: DataConfig, subset_seed: int | None = None) -> tuple[object, object, Source, dict[str, int]]:
    """Train and validation datasets with on-the-fly transforms, the source (classes, notes, any
    held-out split; `source.select`, with data.select_fraction, transformed like validation), and
    how many bad images each split skipped ({"train": n, "val": m})."""
    source = load_source(cfg, subset_seed)
    train, val, bad_train, bad_val = source.train, source.val, 0, 0
    if cfg.check_images:  # else a bad image stops the run when a loader reaches it, naming it
        train, bad_train = drop_bad_images(train, "train", cfg.skip_bad_images, cfg.num_workers)
        val, bad_val = drop_bad_images(val, "val", cfg.skip_bad_images, cfg.num_workers)
    train = TrainSplit(train, TrainTransform(cfg.image_size, cfg.hflip), Draws(len(train)))
    val = val.with_transform(BatchTransform(EvalTransform(cfg.image_size)))
    skipped = {"train": bad_train, "val": bad_val}
    if source.select is not None:  # scored like validation, each epoch (source.select becomes the transformed set)
        if cfg.check_images:
            source.select, skipped["select"] = drop_bad_images(source.select, "select", cfg.skip_bad_images,
                                                               cfg.num_workers)
        source.select = source.select.with_transform(BatchTransform(EvalTransform(cfg.image_size)))
    return train, val, source, skipped


def stored(ds):
    """A split's `datasets` table as stored (images as {"bytes", "path"}), without transforms."""
    return (ds.ds if isinstance(ds, TrainSplit) else ds).with_format(None)


def samples(ds) -> tuple[list[str], list[dict], list[int]]:
    """Id, stored image ({"bytes", "path"}) and label of each sample of a split, in order."""
    raw = stored(ds)
    return list(raw["id"]), list(raw["image"]), list(raw["label"])


class DrawnLoader:
    """A (prepared) training loader whose every pass starts by drawing that pass's augmentation
    (Draws.redraw) in this process, before any worker is handed an index. `skip_first(n)`: the
    next pass's first n batches come undecoded (TrainSplit.skipped), for a resumed epoch to replay."""

    def __init__(self, loader, split: TrainSplit):
        self.loader, self.split, self._skip = loader, split, 0

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def skip_first(self, batches: int) -> None:
        self._skip = batches

    def __iter__(self):
        self.split.draws.redraw()
        # this process's batches of the pass, from its (seeded, set_epoch'd) sampler: no data read
        self.split.mark_skipped(itertools.islice(self.loader.batch_sampler, self._skip))
        self._skip = 0
        yield from self.loader


def splits_line(train_images: int, val_images: int, classes: int, skipped: dict[str, int]) -> str:
    """`train: 9,025 images in 10 classes; val: 3,929 images`, and what was skipped."""
    def part(split, n):
        return f"{n:,} images" + (f" ({skipped[split]:,} unreadable skipped)" if skipped.get(split) else "")
    return f"train: {part('train', train_images)} in {classes} classes; val: {part('val', val_images)}"


def make_loaders(train_ds, val_ds, batch_size: int, num_workers: int, num_processes: int, collate_fn=collate,
                 pin_memory: bool = False):
    # Persistent workers: started once, not every epoch (each start imports torch and the
    # transforms). They draw no random numbers (the augmentation comes with the epoch's Draws), so
    # a resumed run is exact. Drop the ragged last batch (a batch of one breaks batch norm) unless
    # that is all there is. `pin_memory`: for a CUDA device only (a CPU run on a GPU host pins
    # nothing, which would create a CUDA context).
    drop_last = len(train_ds) >= batch_size * num_processes
    train_dl = DataLoader(train_ds, batch_size=batch_size, shuffle=True, drop_last=drop_last, num_workers=num_workers,
                          collate_fn=collate_fn, pin_memory=pin_memory, persistent_workers=num_workers > 0,
                          worker_init_fn=ignore_stop_signals)
    return train_dl, eval_loader(val_ds, batch_size, num_workers, collate_fn, pin_memory)


def eval_loader(ds, batch_size: int, num_workers: int, collate_fn=collate, pin_memory: bool = False) -> DataLoader:
    """A split scored in order, twice the training batch (no gradients to hold)."""
    return DataLoader(ds, batch_size=batch_size * 2, shuffle=False, num_workers=num_workers, collate_fn=collate_fn,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0, worker_init_fn=ignore_stop_signals)


def selection_loader(select_ds, batch_size: int, num_workers: int, accelerator):
    """The selection split's loader (data.select_fraction), evaluated like validation each epoch;
    None without one. Always decoded by loader workers: it is small."""
    if select_ds is None:
        return None
    return accelerator.prepare_data_loader(eval_loader(select_ds, batch_size, num_workers,
                                                       pin_memory=accelerator.device.type == "cuda"))


def class_display_names(classes: list[str]) -> list[str]:
    """WordNet ids (Imagewoof's n02086240, ...) get their ImageNet names; other names stay."""
    from timm.data import ImageNetInfo  # timm (seconds): predict and outputs call this, training has it loaded

    info = ImageNetInfo()
    names = []
    for c in classes:
        try:
            names.append(info.label_name_to_description(c) if c.startswith("n") else c)
        except (KeyError, ValueError, IndexError):
            names.append(c)
    return names


def choose_cache(cfg: DataConfig, train_ds, val_ds, device, cuda: bool, processes: int) -> tuple[bool, str]:
    """`data.cache`: decode the sets into memory? And why, in a line ("" when nothing to say)."""
    needed = 0
    if cfg.cache == "auto" and cuda:  # from the headers, before anything is decoded
        # a lazy column: only the sampled rows are read (bytes-stored sources are not loaded whole)
        needed = sum(cache.estimate_decoded_bytes(stored(ds)["image"], cfg.image_size) for ds in (train_ds, val_ds))
    return cache.choose_cache(cfg.cache, cuda, needed, *cache.free_memory(device), processes)


def prepared_loaders(cfg: DataConfig, batch_size: int, train_ds, val_ds, accelerator, cached: bool,
                     processes: int) -> tuple[object, object]:
    """The train and validation loaders, sharded by `accelerator`. `cached`: loaders of indices
    kept on the host, the images decoded onto the device once and cropped there each batch."""
    if not cached:
        loaders = make_loaders(train_ds, val_ds, batch_size, cfg.num_workers, accelerator.num_processes,
                               pin_memory=accelerator.device.type == "cuda")
        train_dl, val_dl = (accelerator.prepare_data_loader(dl) for dl in loaders)
        return DrawnLoader(train_dl, train_ds), val_dl
    loaders = make_loaders(cache.IndexDataset(len(train_ds)), cache.IndexDataset(len(val_ds)), batch_size, 0,
                           accelerator.num_processes, collate_fn=None)
    # index loaders stay on the host (device_placement=False): the crops are drawn there and sent
    # in one non-blocking copy, with no host-device sync per step
    train_dl, val_dl = (accelerator.prepare_data_loader(dl, device_placement=False) for dl in loaders)
    workers = cache.decode_workers(cfg.num_workers, processes)
    store = cache.decoded_store() if cfg.keep_decoded else None
    return tuple(cache.CachedBatches(loader, _decode(ds, cfg.image_size, accelerator, workers, store), draws,
                                     cfg.hflip)
                 for loader, ds, draws in ((train_dl, train_ds, train_ds.draws), (val_dl, val_ds, None)))


def _decode(ds, size: int, accelerator, workers: int, store) -> cache.DecodedImages:
    start = time.perf_counter()
    _, stored, labels = samples(ds)
    images = cache.DecodedImages(stored, labels, size, accelerator.device, workers, store)
    how = "read back" if images.loaded else "decoded"
    accelerator.print(f"{how} {len(ds)} images into {images.nbytes / 2**30:.2f} GiB on {accelerator.device} "
                      f"in {time.perf_counter() - start:.1f} s" + (f" (kept in {store} for later runs)"
                                                                    if store is not None and not images.loaded else ""))
    return images

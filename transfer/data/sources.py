"""Where the images come from, as two `datasets` splits with the same three columns:

    image  Image(decode=False): {"bytes", "path"}; a file's path, or encoded bytes (parquet, the Hub)
    label  ClassLabel: the class names, in the model's output order
    id     a stable name for the sample: its file path, or `split[index]` in the source

Sources (`data.dataset`):
- null: the image folder at `data.root` (fetched from `data.url` when missing), `train/` and
  `val/` with one subfolder per class, loaded with the `imagefolder` builder;
- a Hub id (`beans`, `frgfm/imagewoof`), a local folder of parquet/arrow files as the Hub lays
  them out, or a folder written by `Dataset(Dict).save_to_disk`.
A source without a validation split gets one held out of train (`data.val_fraction`), stratified
by class and seeded by `data.split_seed` alone, so every arm and seed scores the same images.
`data.select_fraction` holds out a selection split, and `data.train_per_class` keeps at most N
training images per class, or `data.train_samples` N in all, stratified by class (VTAB-1k's
protocol): both drawn by the run's subset seed (`data.subset_seed`, by default `train.seed`), so
each seed labels its own images, both arms of a seed the same ones, and a smaller subset lies inside
a larger one of the same seed.
"""
from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import ConfigError, DataError, first_line
from .download import fetch_dataset
from .images import IMAGE_EXTENSIONS

VAL_SPLITS = ("validation", "val", "valid", "test")  # data.val_split: null takes the first that exists


@dataclass
class Source:
    train: object  # datasets.Dataset
    val: object
    classes: list[str]
    held_out: dict | None = None  # what val_split.json records when validation was held out of train
    notes: list[str] = field(default_factory=list)  # lines for the user (label mapping, ...)
    subset: dict | None = None  # what train_subset.json records with data.train_per_class or data.train_samples
    select: object = None  # data.select_fraction: held out of train to choose the best epoch on
    selection: dict | None = None  # what select_split.json records

    def records(self) -> dict[str, dict]:
        """The files that say which images a run used: file name -> content."""
        return {name: record for name, record in (("val_split.json", self.held_out), ("select_split.json", self.selection),
                                                   ("train_subset.json", self.subset)) if record is not None}


def load_source(cfg: DataConfig, subset_seed: int | None = None) -> Source:
    """The source's splits, then the selection split and the training subset, drawn by `subset_seed`
    (Config.subset_seed: data.subset_seed, or train.seed; None here: data.subset_seed or 0)."""
    import datasets  # about 1 s: when a source is loaded, not when predict or the outputs import data/

    seed = subset_seed if subset_seed is not None else (cfg.subset_seed or 0)
    datasets.disable_progress_bars()  # listing local files is no download worth a bar
    source = load_folder(resolve_root(cfg), cfg) if cfg.dataset is None else load_datasets_source(cfg)
    if cfg.select_fraction is not None:  # before any subset: every subset of a seed chooses on the same images
        pick = held_out_indices(list(source.train["label"]), cfg.select_fraction, seed)
        source.select = source.train.select(pick)
        source.train = source.train.select(sorted(set(range(len(source.train))) - set(pick)))
        source.selection = {"fraction": cfg.select_fraction, "subset_seed": seed, "select": list(source.select["id"])}
        source.notes.append(f"selection: {len(pick):,} training images held out to choose the best epoch on "
                            f"(data.select_fraction={cfg.select_fraction:g}, drawn by seed {seed}; list in "
                            f"select_split.json)")
    if cfg.train_per_class is not None:
        keep = per_class_subset(list(source.train["label"]), cfg.train_per_class, seed)
        source.train = source.train.select(keep)
        source.subset = {"per_class": cfg.train_per_class, "subset_seed": seed, "train": list(source.train["id"])}
        source.notes.append(f"training subset: {len(keep):,} images, at most {cfg.train_per_class} per class "
                            f"(data.train_per_class, drawn by seed {seed}; list in train_subset.json)")
    if cfg.train_samples is not None:
        labels = list(source.train["label"])
        keep = stratified_subset(labels, cfg.train_samples, seed)
        source.train = source.train.select(keep)
        source.subset = {"samples": cfg.train_samples, "subset_seed": seed, "train": list(source.train["id"])}
        counts = np.bincount([labels[i] for i in keep], minlength=len(source.classes))
        source.notes.append(f"training subset: {len(keep):,} images stratified by class, {counts.min()} to {counts.max()} "
                            f"a class (data.train_samples={cfg.train_samples}, drawn by seed {seed}; list in "
                            f"train_subset.json)" + (f"; {int((counts == 0).sum())} class(es) got none" if counts.min() == 0
                                                     else ""))
    return source


def per_class_subset(labels: list[int], n: int, seed: int) -> list[int]:
    """At most `n` indices of each class, sorted. Each class is shuffled once by `seed` and the
    first `n` are kept, so for one seed the subsets are nested: 5 per class lie inside 20."""
    rng = np.random.default_rng([seed, 1])  # a stream apart from the held-out split's
    labels = np.asarray(labels)
    return sorted(i for c in np.unique(labels) for i in rng.permutation(np.flatnonzero(labels == c))[:n].tolist())


def stratified_subset(labels: list[int], n: int, seed: int) -> list[int]:
    """`n` indices in all (every one when there are fewer), sorted, each class in proportion to its
    share (within one image). One ranking of every image, its first `n` kept, so for one seed the
    subsets are nested: 500 lie inside 1,000. The r-th image of a class of m (in the order
    per_class_subset draws) ranks at (r + 1/2) / m, ties broken at random: systematic stratified
    sampling."""
    rng = np.random.default_rng([seed, 1])  # per_class_subset's stream: a class's images come in the same order
    labels = np.asarray(labels)
    order, keys = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        order.append(members)
        keys.append((np.arange(len(members)) + 0.5) / len(members))
    order, keys = np.concatenate(order), np.concatenate(keys)
    ranking = np.lexsort((rng.random(len(order)), keys))  # by key, then the random tie-break
    return sorted(order[ranking[:n]].tolist())


# ---------------------------------------------------------------------------- image folders

def class_images(class_dir: Path) -> list[str]:
    """The image files directly in a class folder, sorted (other files are ignored)."""
    return sorted(str(f) for f in class_dir.iterdir()
                  if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file() and not f.name.startswith("."))


def find_classes(split_dir: Path) -> dict[str, int]:
    """Class folder name -> number of image files in it."""
    return {d.name: len(class_images(d)) for d in sorted(split_dir.iterdir())
            if d.is_dir() and not d.name.startswith(".")}


def check_layout(root: Path, val_fraction: float | None = None) -> list[str]:
    """Fail early, naming the folder, unless root/train (and root/val, unless validation is held
    out of train) hold matching class folders. Returns the sorted class names."""
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"data.root {root} {what}; point data.root at a folder with train/ and val/, "
                        f"or set data.url to an archive to fetch")
    has_val = (root / "val").is_dir()
    if has_val and val_fraction is not None:
        raise ConfigError(f"data.val_fraction={val_fraction} holds validation images out of train, but {root} has "
                          f"val/ already; remove data.val_fraction (null) or the val/ folder")
    counts = {}
    for split in ("train", "val") if val_fraction is None else ("train",):
        split_dir = root / split
        if not split_dir.is_dir():
            raise DataError(f"{split_dir} is missing: data.root must hold train/ and val/, each with one subfolder "
                            f"per class" + (" (or set data.val_fraction=0.2 to hold out part of train)"
                                            if split == "val" else ""))
        counts[split] = find_classes(split_dir)
        if not counts[split]:
            raise DataError(f"{split_dir} has no class subfolders; put each class's images in {split_dir}/<class>/")
        empty = [c for c, n in counts[split].items() if n == 0]
        if empty:
            raise DataError(f"class folder {split_dir / empty[0]} has no images "
                            f"({', '.join(sorted(IMAGE_EXTENSIONS))}); add images or remove the folder")
    extra = sorted(set(counts.get("val", {})) - set(counts["train"]))
    if extra:
        raise DataError(f"class {extra[0]!r} is in {root / 'val'} but not in {root / 'train'}; "
                        f"every validation class needs training images")
    _check_two(list(counts["train"]), root / "train")
    return sorted(counts["train"])


def _check_two(classes: list[str], where) -> None:
    if len(classes) < 2:
        raise DataError(f"{where} has one class ({classes[0]!r}); a classifier needs at least two classes")


def load_folder(root: Path, cfg: DataConfig) -> Source:
    """The `imagefolder` builder on explicit, escaped patterns: with `data_dir` it would guess
    splits from file names (Imagewoof's val/ holds files named ILSVRC2012_val_*), and it reads
    each entry as a glob pattern, so a name with [ ] * ? must be escaped to match only itself.
    One pattern per class folder (`<escaped folder>/*`): datasets resolves each pattern with a
    directory listing, so one per file would cost time in proportion to the files (about 0.3 ms
    each: 6 minutes for ImageNet). Where datasets' listing of a folder differs from ours (other
    extensions, odd names), that split falls back to one escaped pattern per file."""
    import datasets  # (see load_source)

    classes = check_layout(root, cfg.val_fraction)
    features = datasets.Features({"image": datasets.Image(decode=False), "label": datasets.ClassLabel(names=classes)})
    splits = {}
    for name, folder in (("train", "train"), ("validation", "val")):
        if not (root / folder).is_dir():
            continue
        folders = [root / folder / c for c in classes if (root / folder / c).is_dir()]
        files = [f for d in folders for f in class_images(d)]
        ds = datasets.load_dataset("imagefolder", data_files={name: [glob.escape(str(d)) + "/*" for d in folders]},
                                   split=name, features=features)
        ids = [image["path"] for image in ds["image"]]
        if sorted(ids) != sorted(files):
            ds = datasets.load_dataset("imagefolder", data_files={name: [glob.escape(f) for f in files]}, split=name,
                                       features=features)
            ids = [image["path"] for image in ds["image"]]
        splits[name] = ds.add_column("id", ids)
    if "validation" in splits:
        return Source(splits["train"], splits["validation"], classes)
    return _hold_out(splits["train"], classes, cfg, str(root / "train"))


def resolve_root(cfg: DataConfig) -> Path:
    """`data.root`, fetched from `data.url` first when it does not exist yet."""
    root = Path(cfg.root).expanduser()
    if not root.exists() and cfg.url:
        fetch_dataset(cfg.url, root, cfg.sha256)
    return root


# ---------------------------------------------------------------------------- datasets sources

def open_dataset(cfg: DataConfig):
    """A DatasetDict from a save_to_disk folder, a local parquet/arrow folder or the Hub."""
    import datasets  # (see load_source)

    path = Path(cfg.dataset).expanduser()
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            loaded = datasets.load_from_disk(str(path))
            return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})
        return datasets.load_dataset(str(path) if path.is_dir() else cfg.dataset, cfg.dataset_config)
    except (ConnectionError, OSError) as e:
        where = "local folder" if path.is_dir() else "Hub dataset"
        raise DataError(f"data.dataset={cfg.dataset!r} ({where}) cannot be loaded ({first_line(e)[:300]}); check the id "
                        f"or path; to work offline, load it once with a network (it is cached) and set "
                        f"HF_DATASETS_OFFLINE=1, or point data.dataset at a save_to_disk folder") from None
    except ValueError as e:  # e.g. a config name that does not exist
        raise DataError(f"data.dataset={cfg.dataset!r} cannot be loaded: {first_line(e)[:300]}") from None



def _pick(features: dict, chosen: str | None, kind, key: str, what: str) -> str:
    columns = ", ".join(f"{k} ({type(f).__name__})" for k, f in features.items())
    if chosen is not None:
        if chosen not in features:
            raise ConfigError(f"{key}={chosen!r} is not a column; columns: {columns}")
        return chosen
    found = [k for k, f in features.items() if isinstance(f, kind)]
    if len(found) == 1:
        return found[0]
    if what == "label" and not found:  # no ClassLabel: a column named label(s) of strings or ints will do
        found = [k for k in ("label", "labels") if k in features]
        if len(found) == 1:
            return found[0]
    problem = "several" if found else "no"
    raise ConfigError(f"the source has {problem} {what} columns ({columns}); set {key} to one of them")


def load_datasets_source(cfg: DataConfig) -> Source:
    import datasets  # (see load_source)

    splits = open_dataset(cfg)
    if cfg.train_split not in splits:
        raise ConfigError(f"data.train_split={cfg.train_split!r} is not a split of {cfg.dataset}; "
                          f"splits: {', '.join(splits)}")
    val_name = cfg.val_split or next((s for s in VAL_SPLITS if s in splits and s != cfg.train_split), None)
    if cfg.val_split is not None and cfg.val_split not in splits:
        raise ConfigError(f"data.val_split={cfg.val_split!r} is not a split of {cfg.dataset}; "
                          f"splits: {', '.join(splits)}")
    if val_name is not None and cfg.val_fraction is not None:
        raise ConfigError(f"data.val_fraction={cfg.val_fraction} holds validation images out of train, but "
                          f"{cfg.dataset} has a {val_name!r} split; set data.val_fraction=null")
    if val_name is None and cfg.val_fraction is None:
        raise ConfigError(f"{cfg.dataset} has no validation split (splits: {', '.join(splits)}); set "
                          f"data.val_fraction=0.2 to hold out part of {cfg.train_split}, or data.val_split")
    features = splits[cfg.train_split].features
    image = _pick(features, cfg.image_column, datasets.Image, "data.image_column", "image")
    label = _pick(features, cfg.label_column, datasets.ClassLabel, "data.label_column", "label")
    wanted = {cfg.train_split: "train", **({val_name: "val"} if val_name else {})}
    notes, label_feature = [], features[label]
    if not isinstance(label_feature, datasets.ClassLabel):
        label_feature, note = _class_label(splits, wanted, label)
        notes.append(note)
    classes = list(label_feature.names)
    _check_two(classes, f"{cfg.dataset} ({label})")

    out = {}
    for name, role in wanted.items():
        ds = splits[name].select_columns([image, label]).cast_column(image, datasets.Image(decode=False))
        if not isinstance(features[label], datasets.ClassLabel):
            index = {n: i for i, n in enumerate(classes)}
            ds = ds.map(lambda values: {label: [index[str(v)] for v in values]}, batched=True, input_columns=[label],
                        features=datasets.Features({image: ds.features[image], label: label_feature}))
        ds = ds.rename_columns({k: v for k, v in ((image, "image"), (label, "label")) if k != v})
        out[role] = ds.add_column("id", [f"{name}[{i}]" for i in range(len(ds))])
    if "val" in out:
        return Source(out["train"], out["val"], classes, notes=notes)
    source = _hold_out(out["train"], classes, cfg, f"{cfg.dataset}:{cfg.train_split}")
    source.notes[:0] = notes
    return source


def _class_label(splits, wanted: dict, label: str):
    """Strings, or ints without names: classes in sorted order (ints numerically), said so."""
    import datasets  # (see load_source)

    values = sorted({v for name in wanted for v in splits[name][label]})
    if any(v is None for v in values):
        raise DataError(f"label column {label!r} has empty values; drop those rows or choose data.label_column")
    names = [str(v) for v in values]
    kind = "strings" if all(isinstance(v, str) for v in values) else "integers without class names"
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return (datasets.ClassLabel(names=names),
            f"label column {label!r} holds {kind}: mapped to {len(names)} classes in sorted order ({shown})")


# ---------------------------------------------------------------------------- held-out validation

def held_out_indices(labels: list[int], fraction: float, seed: int) -> list[int]:
    """A stratified, seeded draw of about `fraction` of each class (at least one image of each
    class that has two or more), as sorted indices into `labels`."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < 2:
            continue
        k = min(len(members) - 1, max(1, int(round(fraction * len(members)))))
        chosen += rng.permutation(members)[:k].tolist()
    return sorted(chosen)


def _hold_out(train, classes: list[str], cfg: DataConfig, source: str) -> Source:
    val_index = held_out_indices(list(train["label"]), cfg.val_fraction, cfg.split_seed)
    keep = sorted(set(range(len(train))) - set(val_index))
    val = train.select(val_index)
    record = {"source": source, "fraction": cfg.val_fraction, "split_seed": cfg.split_seed, "val": list(val["id"])}
    note = (f"validation: {len(val_index):,} of {len(train):,} training images held out "
            f"(data.val_fraction={cfg.val_fraction:g}, data.split_seed={cfg.split_seed}; list in val_split.json)")
    return Source(train.select(keep), val, classes, held_out=record, notes=[note])

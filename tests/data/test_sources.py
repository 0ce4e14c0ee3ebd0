"""Any `datasets` source: parquet with embedded bytes, save_to_disk folders, string labels, a
held-out validation split, and images decoded as `datasets` decodes them."""
import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from conftest import shapes_dataset, tiny_config
from transfer.cli import main
from transfer.data.images import open_rgb
from transfer.run import run


@pytest.fixture(scope="module")
def parquet_source(image_folder, tmp_path_factory):
    """A local folder of parquet files as the Hub lays them out: data/<split>-00000-of-00001.parquet."""
    root = tmp_path_factory.mktemp("parquet") / "shapes"
    (root / "data").mkdir(parents=True)
    for name, ds in shapes_dataset(image_folder, ("train", "validation")).items():
        ds.to_parquet(str(root / "data" / f"{name}-00000-of-00001.parquet"))
    return root


@pytest.mark.slow  # whole runs (the fast tier stays under 2 minutes on a busy machine)
def test_parquet_source_with_embedded_bytes(parquet_source, tmp_path):
    out = tmp_path / "run"
    metrics = run(tiny_config("unused", out, "train.epochs=1", f"data.dataset={parquet_source}"))
    assert metrics.train_samples == 48 and metrics.val_samples == 18
    assert set(metrics.per_class_val_acc) == {"circle", "square", "triangle"}
    with open(out / "val_predictions.csv", newline="") as f:
        ids = [r["id"] for r in csv.DictReader(f)]
    assert ids == [f"validation[{i}]" for i in range(18)]
    assert json.loads((out / "model" / "config.json").read_text())["label_names"] == ["circle", "square", "triangle"]
    assert (out / "plots" / "mistakes.png").is_file() or metrics.final_val_acc == 1.0
    evaluated = run(tiny_config("unused", tmp_path / "eval", "train.epochs=0", f"data.dataset={parquet_source}",
                                "model.pretrained=true", f"model.weights_file={out / 'model'}", "data.cache=memory"))
    assert evaluated.final_val_acc == metrics.final_val_acc  # decoded cache on bytes, same scores


@pytest.mark.slow  # whole runs (the fast tier stays under 2 minutes on a busy machine)
def test_save_to_disk_source_with_string_labels_and_a_held_out_split(image_folder, tmp_path, capsys):
    source = tmp_path / "saved"
    shapes_dataset(image_folder, ("train", "extra"), label_kind="string").save_to_disk(str(source))
    outs = [tmp_path / f"seed{seed}" for seed in (0, 1)]
    for seed, out in zip((0, 1), outs):
        run(tiny_config("unused", out, "train.epochs=1", f"data.dataset={source}", "data.val_fraction=0.25",
                        "data.label_column=shape", f"train.seed={seed}"))
    printed = capsys.readouterr().out
    assert "label column 'shape' holds strings: mapped to 3 classes in sorted order (circle, square, triangle)" in printed
    assert "validation: 12 of 48 training images held out (data.val_fraction=0.25, data.split_seed=0" in printed
    held = [json.loads((out / "val_split.json").read_text()) for out in outs]
    assert held[0] == held[1] and len(held[0]["val"]) == 12  # the same images for every seed
    assert all(i.startswith("train[") for i in held[0]["val"])
    labels = [int(i[6:-1]) // 16 for i in held[0]["val"]]  # 16 images a class, in class order
    assert sorted(labels) == [0] * 4 + [1] * 4 + [2] * 4  # stratified
    metrics = json.loads((outs[0] / "metrics.json").read_text())
    assert metrics["train_samples"] == 36 and metrics["val_samples"] == 12
    other = tmp_path / "split1"  # another split seed holds out other images, stratified alike
    run(tiny_config("unused", other, "train.epochs=0", f"data.dataset={source}", "data.val_fraction=0.25",
                    "data.label_column=shape", "data.split_seed=1"))
    drawn = json.loads((other / "val_split.json").read_text())["val"]
    assert len(drawn) == 12 and set(drawn) != set(held[0]["val"])
    assert sorted(int(i[6:-1]) // 16 for i in drawn) == [0] * 4 + [1] * 4 + [2] * 4


def test_folder_without_val_and_val_fraction(image_folder, tmp_path, capsys):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(image_folder / "train", root / "train")
    assert main(["--config", "configs/smoke.yaml", f"data.root={root}", f"output_dir={tmp_path / 'a'}"]) == 2
    assert "or set data.val_fraction=0.2" in capsys.readouterr().err
    metrics = run(tiny_config(root, tmp_path / "b", "train.epochs=1", "data.val_fraction=0.25"))
    assert metrics.val_samples == 12 and metrics.train_samples == 36
    held = json.loads((tmp_path / "b" / "val_split.json").read_text())["val"]
    assert all(p.startswith(str(root / "train")) for p in held)  # paths, for a folder
    assert main(["--config", "configs/smoke.yaml", f"data.root={image_folder}", f"output_dir={tmp_path / 'c'}",
                 "data.val_fraction=0.2"]) == 2
    assert "has val/ already" in capsys.readouterr().err


def test_corrupt_image_in_parquet_is_named_by_split_and_index(image_folder, tmp_path, capsys):
    ds = shapes_dataset(image_folder, ("train", "test"))
    rows = ds["train"].cast_column("picture", __import__("datasets").Image(decode=False)).to_list()
    rows[5]["picture"] = {"bytes": rows[5]["picture"]["bytes"][:50], "path": None}
    import datasets

    broken = datasets.Dataset.from_list(rows, features=datasets.Features(
        {"picture": datasets.Image(), "shape": ds["train"].features["shape"]}))
    root = tmp_path / "pq"
    (root / "data").mkdir(parents=True)
    broken.to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    ds["test"].to_parquet(str(root / "data" / "test-00000-of-00001.parquet"))
    code = main(["--config", "configs/smoke.yaml", f"data.dataset={root}", f"output_dir={tmp_path / 'o'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "in the train split, first train[5]" in err, err


@pytest.mark.parametrize("override, words", [
    ("data.dataset=someone/no-such-dataset", ["data.dataset='someone/no-such-dataset'", "Hub dataset",
                                              "HF_DATASETS_OFFLINE=1"]),
    ("data.image_column=nope", ["data.image_column='nope' is not a column", "picture (Image)", "shape (ClassLabel)"]),
    ("data.val_split=dev", ["data.val_split='dev' is not a split", "train, validation"]),
])
def test_bad_sources_are_one_line(parquet_source, tmp_path, capsys, override, words):
    args = ["--config", "configs/smoke.yaml", f"output_dir={tmp_path / 'o'}"]
    if not override.startswith("data.dataset="):
        args.append(f"data.dataset={parquet_source}")
    assert main(args + [override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(w in err for w in words), err


def test_exif_orientation_and_16_bit_images_decode_as_datasets_does(tmp_path):
    import datasets

    rng = np.random.default_rng(0)
    upright = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    sideways = Image.fromarray(np.rot90(upright, k=-1).copy())  # stored rotated 90° clockwise...
    exif = Image.Exif()
    exif[0x0112] = 8  # ...with the tag that says: rotate 90° counter-clockwise to view
    buffer = io.BytesIO()
    sideways.save(buffer, "PNG", exif=exif)
    stored = {"bytes": buffer.getvalue(), "path": None}
    ours = np.asarray(open_rgb(stored))
    theirs = np.asarray(datasets.Image().decode_example(stored).convert("RGB"))
    assert np.array_equal(ours, upright) and np.array_equal(ours, theirs)

    grey = rng.integers(0, 256, (16, 16)).astype(np.uint16)
    detector = Image.fromarray(grey * 16 + 1000)  # 12 bits of signal over an offset, as a detector writes
    path = tmp_path / "xray.png"
    detector.save(path)
    assert Image.open(path).mode.startswith("I")
    decoded = np.asarray(open_rgb(str(path)))[..., 0].astype(int)
    expected = np.round((grey - grey.min()) * 255.0 / (grey.max() - grey.min()))
    assert np.abs(decoded - expected).max() <= 1  # the contrast kept, not clipped to white


@pytest.mark.parametrize("kind", ["folder", "parquet"])
def test_cache_auto_estimates_the_decoded_size_from_headers(kind, image_folder, parquet_source, monkeypatch):
    # on a (pretended) GPU: the estimate handed to the decision equals what decoding would take,
    # for files on disk and for bytes inside parquet alike (fewer than 256 images: every header read)
    from transfer.config import DataConfig
    from transfer.data import cache, loaders

    cfg = DataConfig(root=str(image_folder), url=None, image_size=32, cache="auto",
                     dataset=str(parquet_source) if kind == "parquet" else None)
    train_ds, val_ds, _, _ = loaders.build_datasets(cfg)
    seen = {}
    monkeypatch.setattr(cache, "free_memory", lambda device: (100 * 2**30, 100 * 2**30))
    monkeypatch.setattr(cache, "choose_cache", lambda setting, cuda, needed, *rest: seen.update(needed=needed) or
                        (True, ""))
    loaders.choose_cache(cfg, train_ds, val_ds, "cuda", cuda=True, processes=1)
    decoded = sum(cache.DecodedImages(loaders.samples(ds)[1], loaders.samples(ds)[2], 32, "cpu").nbytes
                  for ds in (train_ds, val_ds))
    assert seen["needed"] == pytest.approx(decoded, abs=2)


@pytest.mark.slow  # whole runs (the fast tier stays under 2 minutes on a busy machine)
def test_the_best_epoch_is_chosen_on_a_selection_split_kept_out_of_training_and_scoring(image_folder, tmp_path):
    out = tmp_path / "run"
    metrics = run(tiny_config(image_folder, out, "train.epochs=3", "data.select_fraction=0.25"))
    chosen = json.loads((out / "select_split.json").read_text())["select"]
    assert len(chosen) == 12 and metrics.train_samples == 36 and metrics.val_samples == 18  # 4 a class, from train
    assert all(p.startswith(str(image_folder / "train")) for p in chosen)
    with open(out / "val_predictions.csv", newline="") as f:
        scored = {row["id"] for row in csv.DictReader(f)}
    assert not scored & set(chosen)
    assert metrics.best_chosen_on == "select" and all(h.select_acc is not None for h in metrics.history)
    best = max(metrics.history, key=lambda h: h.select_acc)
    assert metrics.best_epoch == best.epoch and metrics.best_val_acc == best.val_acc
    other = run(tiny_config(image_folder, tmp_path / "subset", "train.epochs=0", "data.select_fraction=0.25",
                            "data.train_per_class=6"))  # a subset is drawn from what the selection left
    assert json.loads((tmp_path / "subset" / "select_split.json").read_text())["select"] == chosen
    trained_on = json.loads((tmp_path / "subset" / "train_subset.json").read_text())["train"]
    assert other.train_samples == len(trained_on) == 18 and not set(trained_on) & set(chosen)

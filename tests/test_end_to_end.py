import json
import shutil

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from conftest import tiny_config
from transfer.cli import main
from transfer.config import load_config
from transfer.errors import RunError
from transfer.training.model import load_saved_model
from transfer.run import run

PLOTS = {"accuracy.png", "loss.png", "lr.png", "samples.png", "confusion.png"}


@pytest.fixture(scope="module")
def finished_run(image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "a"
    cfg = tiny_config(image_folder, out, "train.freeze_epochs=1", "train.keep_checkpoints=5")
    metrics = run(cfg)
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)
    return cfg, out, metrics


def test_run_writes_every_output(finished_run, image_folder):
    cfg, out, metrics = finished_run
    assert load_config(out / "config.yaml") == cfg  # the resolved config reloads unchanged
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["final_val_acc"] == metrics.final_val_acc
    assert [h["epoch"] for h in saved["history"]] == [1, 2]
    for h in saved["history"]:
        assert set(h) >= {"epoch", "lr", "train_loss", "val_loss", "val_acc", "epoch_seconds", "train_images_per_s"}
        assert 0 <= h["val_acc"] <= 1 and h["train_loss"] > 0
    assert [h["frozen"] for h in saved["history"]] == [True, False]
    assert saved["val_samples"] == 18 == len(list((image_folder / "val").rglob("*.png")))
    assert saved["best_val_acc"] == max(h["val_acc"] for h in saved["history"])
    assert saved["final_val_acc"] == saved["history"][-1]["val_acc"]
    assert saved["train_seconds"] > 0 and saved["versions"]["torch"] == torch.__version__.split("+")[0]
    assert set(saved["per_class_val_acc"]) == {"circle", "square", "triangle"}
    assert PLOTS <= {p.name for p in (out / "plots").iterdir()}
    for png in (out / "plots").iterdir():
        assert Image.open(png).size[0] > 100
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_001", "epoch_002"]
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["architecture"] == "resnet10t" and config["num_classes"] == 3
    assert config["label_names"] == ["circle", "square", "triangle"]
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32] and "mean" in config["pretrained_cfg"]


def test_epoch_lines_like_the_article(image_folder, tmp_path, capsys):
    assert main(["--config", "configs/smoke.yaml", f"data.root={image_folder}", f"output_dir={tmp_path / 'r'}",
                 "train.epochs=1"]) == 0
    assert "Epoch [1], last_lr: " in capsys.readouterr().out


def test_saved_model_reloads_as_weights_file_and_scores_the_same(finished_run, image_folder, tmp_path):
    cfg, out, metrics = finished_run
    model, config = load_saved_model(out / "model")
    assert model.get_classifier().out_features == 3
    evaluated = run(tiny_config(image_folder, tmp_path / "eval", "train.epochs=0", "model.pretrained=true",
                                f"model.weights_file={out / 'model'}"))
    assert evaluated.history == [] and evaluated.weights == f"{out.name}/model"  # named, without this machine's path
    assert metrics.weights == "random (from scratch)"  # the smoke config trains from scratch
    assert evaluated.final_val_acc == metrics.final_val_acc
    assert evaluated.final_val_loss == pytest.approx(metrics.final_val_loss, rel=1e-5)


def test_resume_continues_to_the_same_weights(finished_run, tmp_path):
    cfg, out, metrics = finished_run
    resumed = tmp_path / "b"
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "checkpoints" / "epoch_002")  # as if killed during epoch 2
    shutil.rmtree(resumed / "model")
    (resumed / "metrics.json").unlink()
    cfg_b = load_config(resumed / "config.yaml", [f"output_dir={resumed}", "train.resume=auto"])
    metrics_b = run(cfg_b)
    assert [h.epoch for h in metrics_b.history] == [1, 2]
    a, b = load_file(out / "model" / "model.safetensors"), load_file(resumed / "model" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert metrics_b.final_val_acc == metrics.final_val_acc


def test_finished_run_is_not_overwritten_and_resume_says_done(finished_run, capsys):
    cfg, out, metrics = finished_run
    before = (out / "metrics.json").read_text()
    with pytest.raises(RunError, match="already holds a run.*train.resume=auto"):
        run(cfg)
    done = run(load_config(out / "config.yaml", ["train.resume=auto"]))
    assert "finished run" in capsys.readouterr().out
    assert done.final_val_acc == metrics.final_val_acc and (out / "metrics.json").read_text() == before


@pytest.mark.parametrize("breakage, words", [
    (lambda root: shutil.rmtree(root / "val"), ["val is missing"]),
    (lambda root: (root / "val" / "zebra").mkdir(), ["zebra", "no images"]),
    (lambda root: shutil.copytree(root / "val" / "circle", root / "val" / "hexagon"),
     ["'hexagon'", "not in", "train"]),
    (lambda root: shutil.rmtree(root), ["does not exist", "data.url"]),
])
def test_bad_folders_get_one_line_errors(image_folder, tmp_path, capsys, breakage, words):
    root = tmp_path / "data"
    shutil.copytree(image_folder, root)
    breakage(root)
    assert main(["--config", "configs/smoke.yaml", f"data.root={root}", f"output_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(w in err for w in words), err


def test_corrupt_image_names_the_file(image_folder, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(image_folder, root)
    bad = root / "train" / "square" / "square_000.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    (root / "train" / "square" / ".DS_Store").write_bytes(b"\0\1")  # ignored: not an image
    (root / "train" / "square" / "notes.txt").write_text("ignored")
    assert main(["--config", "configs/smoke.yaml", f"data.root={root}", f"output_dir={tmp_path / 'out'}",
                 "train.epochs=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "square_000.png" in err and "data.skip_bad_images" in err


def test_config_yaml_is_plain_yaml(finished_run):
    _, out, _ = finished_run
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["name"] == "resnet10t"


def test_images_unseen_by_imagenet_are_scored_separately(finished_run, image_folder, tmp_path):
    _, out, _ = finished_run
    root = tmp_path / "data"
    shutil.copytree(image_folder, root)
    for i, f in enumerate(sorted((root / "val" / "square").iterdir())[:2]):
        f.rename(f.with_name(f"ILSVRC2012_val_{i:08d}.png"))
    metrics = run(tiny_config(root, tmp_path / "eval", "train.epochs=0", "model.pretrained=true",
                              f"model.weights_file={out / 'model'}"))
    rows = [r.split(",") for r in (tmp_path / "eval" / "val_predictions.csv").read_text().splitlines()[1:]]
    unseen = [r for r in rows if "ILSVRC2012_val_" in r[0]]
    subset = metrics.val_subsets["unseen_by_imagenet"]
    assert subset["samples"] == len(unseen) == 2
    assert subset["val_acc"] == sum(r[1] == r[2] for r in unseen) / 2


@pytest.mark.slow  # whole runs (the fast tier stays under 2 minutes on a busy machine)
def test_names_with_glob_url_and_csv_characters_lose_no_image(odd_folder, tmp_path, capsys):
    import csv

    from transfer.cli import predict_main

    files = {split: sorted(str(p) for p in (odd_folder / split).rglob("*.png")) for split in ("train", "val")}
    assert any("[1]*?" in f for f in files["train"]) and len(files["val"]) == 12
    for cache in ("none", "memory"):  # the loader path and the decoded cache
        out = tmp_path / cache
        metrics = run(tiny_config(odd_folder, out, "train.epochs=1", f"data.cache={cache}"))
        assert metrics.train_samples == len(files["train"]) == 24
        assert metrics.val_samples == len(files["val"])
        assert sorted(metrics.per_class_val_acc) == sorted(p.name for p in (odd_folder / "train").iterdir())
        with open(out / "val_predictions.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert sorted(r["id"] for r in rows) == files["val"]
        assert all(r["id"].split("/")[-2] == r["label"] for r in rows)
    assert "train: 24 images in 4 classes; val: 12 images" in capsys.readouterr().out
    assert predict_main([str(tmp_path / "none" / "model"), str(odd_folder / "val"), "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out)
    assert sorted(r["path"] for r in predicted) == files["val"] and all("predictions" in r for r in predicted)


def test_a_single_class_is_refused_before_any_work(image_folder, tmp_path, capsys):
    root = tmp_path / "data"
    for split in ("train", "val"):
        shutil.copytree(image_folder / split / "circle", root / split / "circle")
    assert main(["--config", "configs/smoke.yaml", f"data.root={root}", f"output_dir={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "one class ('circle')" in err and "at least two" in err, err
    assert not (tmp_path / "o").exists()

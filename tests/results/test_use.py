"""Using a trained model: predict.py, evaluate-only runs, per-class analysis, trackers."""
import json
import shutil

import pytest

from conftest import tiny_config
from transfer.cli import predict_main
from transfer.run import run


@pytest.fixture(scope="module")
def trained(image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("use") / "run"
    metrics = run(tiny_config(image_folder, out, "train.epochs=3", "train.log_with=tensorboard"))
    return out, metrics


def test_predict_json_agrees_with_the_runs_evaluation(trained, image_folder, capsys):
    out, metrics = trained
    assert predict_main([str(out / "model"), str(image_folder / "val"), "--top-k", "2", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == metrics.val_samples == 18
    for r in results:
        scores = [p["score"] for p in r["predictions"]]
        assert len(scores) == 2 and scores == sorted(scores, reverse=True) and 0 <= scores[-1] <= scores[0] <= 1
    correct = [r["predictions"][0]["label"] == r["path"].split("/")[-2] for r in results]
    assert sum(correct) / len(correct) == pytest.approx(metrics.final_val_acc)  # same eval transform


def test_predict_table_and_bad_images(trained, image_folder, tmp_path, capsys):
    out, _ = trained
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    good = image_folder / "val" / "circle" / "circle_000.png"
    assert predict_main([str(out / "model"), str(good), str(bad), "--top-k", "3"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("path") and "%" in table[1] and "circle" in table[1]
    assert "broken.jpg" in table[2] and "ERROR: cannot read image" in table[2]
    assert predict_main([str(out / "model"), str(bad), "--json"]) == 1  # nothing could be classified
    assert "error" in json.loads(capsys.readouterr().out)[0]
    assert predict_main([str(tmp_path), str(good)]) == 2
    assert "not a saved model folder" in capsys.readouterr().err


def test_per_class_analysis(trained):
    out, metrics = trained
    per_class = metrics.per_class_val_acc
    assert set(per_class) == {"circle", "square", "triangle"}
    # 6 validation images per class: the mean of per-class accuracies is the overall accuracy
    assert sum(per_class.values()) / 3 == pytest.approx(metrics.final_val_acc)
    assert (out / "plots" / "confusion.png").is_file()
    assert (out / "plots" / "mistakes.png").is_file() == (metrics.final_val_acc < 1)


def test_tensorboard_gets_step_and_epoch_scalars(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, metrics = trained
    (events,) = list((out / "logs").glob("events.out.tfevents.*"))  # hparams sit one level down
    acc = EventAccumulator(str(events))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "epoch/val_acc", "epoch/train_loss", "epoch/val_loss"} <= tags
    assert [e.value for e in acc.Scalars("epoch/val_acc")] == pytest.approx([h.val_acc for h in metrics.history])


def test_gradient_accumulation_runs_the_whole_schedule(image_folder, tmp_path):
    # 48 images / batch 8 = 6 batches per epoch; 4 per optimizer step -> 2 steps per epoch
    metrics = run(tiny_config(image_folder, tmp_path / "accum", "train.grad_accum_steps=4"))
    assert metrics.steps_per_epoch == 2
    assert metrics.history[-1].lr < 3e-3 / 1000  # annealed to the end, not cut short


def test_evaluate_only_with_a_fresh_head(image_folder, tmp_path):
    metrics = run(tiny_config(image_folder, tmp_path / "eval0", "train.epochs=0"))
    assert metrics.history == [] and metrics.val_samples == 18
    out = tmp_path / "eval0"
    assert (out / "model" / "model.safetensors").is_file() and (out / "plots" / "confusion.png").is_file()
    assert not (out / "plots" / "accuracy.png").exists()
    shutil.rmtree(out)


def test_model_folder_is_a_publishable_card_that_timm_and_transformers_load(trained, image_folder, capsys):
    import timm
    import torch
    import yaml
    from PIL import Image
    from transformers import pipeline

    out, metrics = trained
    card = (out / "model" / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "timm" and {"image-classification", "transfer-learning"} <= set(meta["tags"])
    (result,) = meta["model-index"][0]["results"]
    assert result["metrics"][0]["value"] == round(metrics.final_val_acc, 4)
    assert "hf upload <you>/<repo> path/to/this/folder ." in body and "| circle |" in body
    assert str(image_folder) not in card and str(out) not in card and "github.com" not in card  # no local path, no fake link

    image = image_folder / "val" / "circle" / "circle_000.png"
    assert predict_main([str(out / "model"), str(image), "--json", "--top-k", "3"]) == 0
    ours = {p["label"]: p["score"] for p in json.loads(capsys.readouterr().out)[0]["predictions"]}

    model = timm.create_model(f"local-dir:{out / 'model'}", pretrained=True).eval()  # timm reads the Hub layout
    config = timm.data.resolve_data_config({}, model=model)
    assert config["input_size"] == (3, 32, 32)
    transform = timm.data.create_transform(**config)
    with torch.inference_mode():
        probs = model(transform(Image.open(image).convert("RGB"))[None]).softmax(1)[0]
    labels = json.loads((out / "model" / "config.json").read_text())["label_names"]
    assert {labels[i]: p for i, p in enumerate(probs.tolist())} == pytest.approx(ours, abs=1e-5)

    classify = pipeline("image-classification", model=str(out / "model"), device="cpu")
    theirs = {r["label"]: r["score"] for r in classify(str(image), top_k=3)}
    assert theirs == pytest.approx(ours, abs=1e-4)

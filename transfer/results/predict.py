"""Classify images with a run's saved model/ folder, using the training run's evaluation transform.

    python scripts/predict.py runs/pretrained/model photo.jpg more_photos/ --top-k 3 --json

Errors reach the terminal through cli.entry (scripts/predict.py calls cli.predict_main).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..errors import ConfigError, DataError
from ..data.images import IMAGE_EXTENSIONS, open_rgb
from ..data.transforms import EvalTransform, Normalize
from ..training.model import load_saved_model


def image_paths(inputs: list[str]) -> list[Path]:
    """Files as given; folders searched recursively for images, in sorted order."""
    paths = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        else:
            paths.append(item)
    return paths


@torch.inference_mode()
def predict(model_dir: Path, inputs: list[str], top_k: int = 5, batch_size: int = 64) -> list[dict]:
    """[{"path", "predictions": [{"label", "score"}, ...]}] best first, or {"path", "error"}."""
    if not (Path(model_dir) / "config.json").is_file():
        raise ConfigError(f"{model_dir} is not a saved model folder (no config.json); give a run's model/ folder")
    model, config = load_saved_model(model_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device, memory_format=torch.channels_last).eval()
    pretrained = config["pretrained_cfg"]
    transform = EvalTransform(pretrained["input_size"][-1])
    normalize = Normalize(pretrained["mean"], pretrained["std"])
    labels = config["label_names"]
    top_k = min(top_k, len(labels))

    results, batch, batch_results = [], [], []

    def flush():
        if not batch:
            return
        probs = model(normalize(torch.stack(batch).to(device))).float().softmax(1)
        scores, indices = probs.topk(top_k, dim=1)
        for result, s, i in zip(batch_results, scores.tolist(), indices.tolist()):
            result["predictions"] = [{"label": labels[c], "score": p} for p, c in zip(s, i)]
        batch.clear(), batch_results.clear()

    for path in image_paths(inputs):
        result = {"path": str(path)}
        results.append(result)
        try:
            batch.append(transform(open_rgb(str(path))))
            batch_results.append(result)
        except DataError as e:
            result["error"] = str(e).split(";")[0]
        if len(batch) == batch_size:
            flush()
    flush()
    return results


def format_table(results: list[dict], descriptions: dict[str, str]) -> str:
    lines = []
    width = max([len(r["path"]) for r in results] + [4])
    lines.append(f"{'path':<{width}}  predictions (probability)")
    for r in results:
        if "error" in r:
            lines.append(f"{r['path']:<{width}}  ERROR: {r['error']}")
            continue
        shown = ", ".join(f"{descriptions.get(p['label'], p['label'])} {p['score']:.1%}" for p in r["predictions"])
        lines.append(f"{r['path']:<{width}}  {shown}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="predict.py", description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="a run's model/ folder")
    parser.add_argument("images", nargs="+", help="image files and/or folders")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    results = predict(args.model_dir, args.images, args.top_k, args.batch_size)  # errors: cli.entry
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        config = json.loads((args.model_dir / "config.json").read_text())
        print(format_table(results, config.get("label_descriptions", {})))
    return 1 if results and all("error" in r for r in results) else 0

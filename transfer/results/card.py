"""model/README.md: a Hugging Face model card for the saved model folder, ready to publish.

YAML front matter (library, license, tags, dataset, metrics, a `model-index` with the final
validation accuracy) and then, in prose: what was trained on what, the results, how to load it
and the command that publishes it.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import yaml

from ..config import Config, flat_config, to_dict
from ..records import RunMetrics


def _hardware(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({os.cpu_count()} cores)"


def _hub_dataset(cfg: Config) -> str | None:
    """The data set's Hub id when the source is one (not a local folder)."""
    name = cfg.data.dataset
    return name if name and not Path(name).expanduser().exists() else None


LOCAL_PATHS = ("data.root", "data.url", "data.dataset", "model.weights_file", "train.resume")


def _shown(key: str, value):
    """A setting as the card shows it: a path of the machine that trained is named by its file
    name alone (a card is published; the training machine's folders are nobody's business)."""
    if key in LOCAL_PATHS and isinstance(value, str) and ("/" in value or Path(value).expanduser().exists()) \
            and "://" not in value:
        return Path(value).name
    return value


def model_card(cfg: Config, metrics: RunMetrics, classes: list[str], names: list[str], license_: str | None) -> str:
    hub = _hub_dataset(cfg)
    dataset = hub or cfg.data.dataset or Path(cfg.data.root).name
    origin = (f"ImageNet weights from timm (`{metrics.weights}`)" if cfg.model.pretrained and not cfg.model.weights_file else
              f"the weights in {_shown('model.weights_file', cfg.model.weights_file)}" if cfg.model.pretrained
              else "random weights (from scratch)")
    front = {
        "library_name": "timm",
        "license": license_ or "other",
        "tags": ["image-classification", "timm", "transfer-learning",
                 "pretrained" if cfg.model.pretrained else "from-scratch"],
        **({"datasets": [hub]} if hub else {}),
        "metrics": ["accuracy"],
        "model-index": [{
            "name": f"{cfg.model.name}-{Path(cfg.output_dir).name}",
            "results": [{
                "task": {"type": "image-classification", "name": "Image Classification"},
                "dataset": {"name": dataset, "type": hub or "imagefolder"},
                "metrics": [{"type": "accuracy", "value": round(metrics.final_val_acc, 4),
                             "name": "Validation accuracy (final)"}],
            }],
        }],
    }
    defaults, ours = flat_config(to_dict(Config())), flat_config(to_dict(cfg))
    changed = [f"`{k}={_shown(k, ours[k])}`" for k in ours if k != "output_dir" and ours[k] != defaults.get(k)]
    if metrics.lr_find:  # optim.lr=find: say what it found
        changed = [f"`optim.lr=find` (found {metrics.lr_find.suggested_lr:.3g})" if c == "`optim.lr=find`" else c
                   for c in changed]
    epochs = metrics.history[-1].epoch if metrics.history else 0
    per_class = metrics.per_class_val_acc
    rows = [f"| {n} | {'—' if per_class[c] is None else f'{100 * per_class[c]:.1f}%'} |"
            for c, n in zip(classes, names)]
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
        f"# {cfg.model.name} trained on {dataset}", "",
        f"A `timm` `{cfg.model.name}` started from {origin} and trained for {epochs:g} epochs on {dataset} "
        f"({metrics.train_samples} training images, {metrics.val_samples} validation images, "
        f"{len(classes)} classes) by transfer (`run_transfer.py`), one arm of a "
        f"pretrained-vs-scratch comparison.", "",
        "Settings that differ from the defaults: " + (", ".join(changed) if changed else "none") + ".", "",
        "## Results", "",
        f"- validation accuracy: **{100 * metrics.final_val_acc:.1f}%** final, "
        f"{100 * metrics.best_val_acc:.1f}% best (epoch {metrics.best_epoch})",
        f"- validation loss (final): {metrics.final_val_loss:.4f}",
        f"- training time: {metrics.train_seconds:.0f} s (training and per-epoch evaluation) on "
        f"{_hardware(metrics.device)}, {metrics.num_processes} process(es), "
        f"precision `{metrics.mixed_precision}`", "",
        "| class | validation accuracy |", "|---|---|", *rows, "",
        "## Use", "",
        "```python",
        "import timm",
        'model = timm.create_model("local-dir:path/to/this/folder", pretrained=True)  # or "hf-hub:<you>/<repo>"',
        "```", "",
        "Or with transformers: `pipeline(\"image-classification\", model=\"<this folder>\")`; or "
        "`python scripts/predict.py path/to/this/folder photo.jpg` (the run's own evaluation "
        f"transform: short side resized to {cfg.data.image_size}, centre crop, the model's mean/std).", "",
        "## Publish", "",
        "```bash",
        "hf upload <you>/<repo> path/to/this/folder .   # huggingface_hub >= 0.34; before: huggingface-cli upload",
        "```", "",
    ]
    return "\n".join(lines)

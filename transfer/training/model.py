"""Model: a timm network with a head sized to the data, local weights, freezing, saving."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig
from ..data.transforms import Normalize
from ..errors import ConfigError, DataError, first_line
from ..files import staged_folder, write_atomic, write_json


def build_model(cfg: ModelConfig, classes: list[str]) -> tuple[nn.Module, str | None]:
    """`timm.create_model` with a fresh head for `classes`; ImageNet weights come from the Hub
    (`model.pretrained`) or from `model.weights_file`, in which case nothing is downloaded.
    Returns the model and, for a weights file, one line saying what became of its classifier."""
    import timm  # seconds to import: here, so that phase_seconds["model"] counts it and light commands skip it

    if not timm.is_model(cfg.name) and not timm.is_model(cfg.name.split(".")[0]):
        close = timm.list_models(f"*{cfg.name.split('.')[0][:6]}*")[:8]
        raise ConfigError(f"model.name={cfg.name!r} is not a timm model; "
                          f"similar names: {', '.join(close) or 'none'} (see timm.list_models())")
    local = cfg.pretrained and cfg.weights_file is not None
    if cfg.pretrained and not local:
        model = pretrained_model(cfg.name, len(classes))
    else:
        model = timm.create_model(cfg.name, pretrained=False, num_classes=len(classes))
    note = load_weights(model, cfg.weights_file, cfg.head, classes) if local else None
    return model, note


def pretrained_model(name: str, num_classes: int | None = None) -> nn.Module:
    """timm's model `name` with its ImageNet weights, downloaded from the Hub into the Hugging Face
    cache (HF_HOME) or read from there; a download that fails (no network, offline mode with
    nothing cached) is one line saying what to do."""
    import timm

    try:
        return timm.create_model(name, pretrained=True, **({} if num_classes is None else {"num_classes": num_classes}))
    except (OSError, ValueError) as e:  # huggingface_hub's errors, connection errors, nothing cached offline
        raise DataError(f"model.pretrained: the ImageNet weights of {name} could not be downloaded or found in the "
                        f"Hugging Face cache ({type(e).__name__}: {first_line(e)[:200]}); connect once to the network "
                        f"(they are then cached in HF_HOME), or give model.weights_file=<a local .safetensors "
                        f"file>; on a cluster, HF_HOME must be a folder the compute nodes see") from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from .safetensors, a torch state dict (never unpickling code), or a saved model/ folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise ConfigError(f"model.weights_file {path} does not exist; give a .safetensors file, a torch "
                          f"state dict, or a run's model/ folder")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors and torch raise many types for a damaged file
        raise ConfigError(f"model.weights_file {path} cannot be read ({type(e).__name__}: {e}); "
                          f"give a .safetensors file or a torch state dict") from None
    for key in ("state_dict", "model", "model_state_dict"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"model.weights_file {path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def saved_labels(path: str | Path) -> list[str] | None:
    """The label names that came with the weights: a run's model/ folder, or a weights file
    beside the config.json that names its labels; None for a bare weights file."""
    path = Path(path).expanduser()
    config = (path if path.is_dir() else path.parent) / "config.json"
    try:
        labels = json.loads(config.read_text()).get("label_names")
    except (OSError, ValueError, AttributeError):
        return None
    return labels if isinstance(labels, list) else None


def head_decision(mode: str, labels: list[str] | None, classes: list[str] | None, sizes: tuple[int, int] | None,
                  path) -> tuple[bool, str]:
    """Keep the weights' classifier? (`model.head`: auto | new | keep), and one line saying why.
    `sizes`: (the weights' classes, the model's) when the two classifiers differ in shape."""
    if mode == "new":
        return False, "fresh classifier (model.head=new)"
    if mode == "keep":
        if sizes is not None:
            raise ConfigError(f"model.head=keep, but the classifier in {path} has {sizes[0]} classes and the data "
                              f"{sizes[1]}; use model.head=auto or new for a fresh classifier")
        return True, f"kept the classifier of {path} (model.head=keep)"
    if labels is None:
        return False, (f"fresh classifier: {path} comes without label names, so its classifier means nothing "
                       f"for these classes (model.head=keep keeps it)")
    if sizes is None and labels == classes:
        return True, "kept the classifier: its labels equal the data's classes, in the same order"
    other = ("the same labels in another order" if sorted(labels) == sorted(classes or []) else
             f"other labels ({_few(labels, 3)})")
    return False, f"fresh classifier: the weights were trained on {other} (model.head=keep keeps it)"


def load_weights(model: nn.Module, path: str | Path, head: str = "keep",
                 classes: list[str] | None = None) -> str:
    """Load a state dict and decide on its classifier with `head_decision`. Anything else that
    does not fit is an error naming the keys. Returns the decision's line."""
    state = read_state_dict(path)
    own = model.state_dict()
    prefixes = head_prefixes(model)
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    head_keys = [k for k in state if k.startswith(prefixes)]
    wrong_head = [k for k in mismatched if k.startswith(prefixes)]
    sizes = None
    if wrong_head:
        out = lambda k, d: d[k].shape[0]  # noqa: E731 - classes are the first dimension of weight and bias
        sizes = (out(wrong_head[0], state), out(wrong_head[0], own))
    keep, note = head_decision(head, saved_labels(path), classes, sizes, path)
    if not keep:
        for k in head_keys:
            del state[k]  # the model's fresh head stays
    problems = {
        "missing": [k for k in own if k not in state and not k.startswith(prefixes)],
        "unexpected": [k for k in state if k not in own],
        "wrong-shape": [k for k in mismatched if not k.startswith(prefixes)],
    }
    if any(problems.values()):
        detail = "; ".join(f"{what} keys {_few(keys)}" for what, keys in problems.items() if keys)
        raise ConfigError(f"model.weights_file {path} does not fit model {type(model).__name__}: {detail}; "
                          f"check model.name")
    model.load_state_dict(state, strict=False)
    return note


def _few(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of the classifier (e.g. 'fc.' for ResNet, 'head.fc.' for ConvNeXt)."""
    classifier = model.get_classifier()
    names = [name for name, module in model.named_modules() if module is classifier]
    return tuple(f"{n}." for n in names) if names else (model.pretrained_cfg.get("classifier", "fc") + ".",)


def _head_modules(model: nn.Module) -> set[nn.Module]:
    classifier = model.get_classifier()
    return set(classifier.modules()) if isinstance(classifier, nn.Module) else set()


def _norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def set_backbone_frozen(model: nn.Module, frozen: bool, train_bn: bool = False) -> None:
    """Freeze everything but the classifier: no gradients, so optimizers (weight decay included)
    leave those parameters untouched. Batch-norm statistics are held by `train_mode`.
    `train_bn` (train.frozen_bn=train, fastai's train_bn): batch-norm layers keep training."""
    head = _head_modules(model) | (set(_norms(model)) if train_bn else set())
    for module in model.modules():
        if module not in head:
            for p in module.parameters(recurse=False):
                p.requires_grad_(not frozen)


def train_mode(model: nn.Module, frozen: bool, train_bn: bool = False) -> None:
    """model.train(), except that a frozen backbone stays in eval mode so its batch-norm
    running statistics do not move either (with `train_bn`, its batch-norm layers train on)."""
    if not frozen:
        model.train()
        return
    model.eval()
    for module in [*_head_modules(model), *(_norms(model) if train_bn else [])]:
        module.train()


def weights_loaded(cfg: ModelConfig, model: nn.Module) -> str:
    """Which weights a run started from, by name: timm's architecture.tag (e.g. resnet50.tv_in1k),
    a weights file's name, or random."""
    if not cfg.pretrained:
        return "random (from scratch)"
    if cfg.weights_file:  # a file by its name, a run's model/ folder with its run's: no path of this machine
        path = Path(cfg.weights_file)
        return "/".join(path.parts[-2:]) if path.is_dir() else path.name
    pretrained = model.pretrained_cfg
    return ".".join(p for p in (pretrained.get("architecture"), pretrained.get("tag")) if p)


def data_config(model: nn.Module) -> Normalize:
    """Normalisation from the model's pretrained config: the same for both arms."""
    cfg = model.pretrained_cfg
    return Normalize(cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225)))


def save_model(model: nn.Module, directory: Path, classes: list[str], display_names: list[str],
               image_size: int, card: str | None = None) -> None:
    """timm's Hub layout (config.json + model.safetensors) with label names and input size, and
    the model card (README.md), written to a temporary folder and renamed into place.

    config.json's `model_args` leave out `num_classes` (the top-level key holds it): transformers'
    timm wrapper passes it itself and fails on the repetition ("multiple values for keyword")."""
    from timm.models import save_for_hf  # (timm: see build_model)

    normalization = data_config(model)
    dense = copy.deepcopy(model).to(memory_format=torch.contiguous_format)  # safetensors wants dense tensors
    with staged_folder(directory, state_bytes(dense)) as tmp:
        save_for_hf(dense, str(tmp), safe_serialization=True,
                    model_config={"label_names": classes, "label_descriptions": dict(zip(classes, display_names))},
                    data_config={"input_size": (3, image_size, image_size), "crop_pct": 1.0,
                                 "interpolation": "bilinear", "mean": list(normalization.mean),
                                 "std": list(normalization.std)})
        config = json.loads((tmp / "config.json").read_text())
        config.get("model_args", {}).pop("num_classes", None)
        write_json(tmp / "config.json", config)
        if card is not None:
            write_atomic(tmp / "README.md", card)


def state_bytes(model: nn.Module) -> int:
    """Bytes of the model's saved weights and buffers."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def load_saved_model(directory: Path) -> tuple[nn.Module, dict]:
    """A model saved by `save_model`, plus its config.json."""
    import timm

    config = json.loads((Path(directory) / "config.json").read_text())
    model = timm.create_model(config["architecture"], pretrained=False, num_classes=config["num_classes"])
    load_weights(model, directory, head="keep")
    return model, config

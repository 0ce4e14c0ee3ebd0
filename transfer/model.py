"""Model: a timm network with a head sized to the data, local weights, freezing, saving."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from .config import ConfigError, ModelConfig


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """`timm.create_model` with a fresh `num_classes` head; ImageNet weights come from the Hub
    (`model.pretrained`) or from `model.weights_file`, in which case nothing is downloaded."""
    import timm

    if not timm.is_model(cfg.name) and not timm.is_model(cfg.name.split(".")[0]):
        close = timm.list_models(f"*{cfg.name.split('.')[0][:6]}*")[:8]
        raise ConfigError(f"model.name={cfg.name!r} is not a timm model; "
                          f"similar names: {', '.join(close) or 'none'} (see timm.list_models())")
    local = cfg.pretrained and cfg.weights_file is not None
    model = timm.create_model(cfg.name, pretrained=cfg.pretrained and not local, num_classes=num_classes)
    if local:
        load_weights(model, cfg.weights_file)
    return model


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


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a state dict; a classifier of another size is dropped (the fresh head stays).
    Anything else that does not fit is an error naming the keys."""
    state = read_state_dict(path)
    own = model.state_dict()
    head = head_prefixes(model)
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    for k in mismatched:
        if k.startswith(head):
            del state[k]  # another number of classes: the fresh head stays
    problems = {
        "missing": [k for k in own if k not in state and not k.startswith(head)],
        "unexpected": [k for k in state if k not in own],
        "wrong-shape": [k for k in mismatched if not k.startswith(head)],
    }
    if any(problems.values()):
        detail = "; ".join(f"{what} keys {_few(keys)}" for what, keys in problems.items() if keys)
        raise ConfigError(f"model.weights_file {path} does not fit model {type(model).__name__}: {detail}; "
                          f"check model.name")
    model.load_state_dict(state, strict=False)


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


def set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze everything but the classifier: no gradients, so optimizers (weight decay included)
    leave those parameters untouched. Batch-norm statistics are held by `train_mode`."""
    head = _head_modules(model)
    for module in model.modules():
        if module not in head:
            for p in module.parameters(recurse=False):
                p.requires_grad_(not frozen)


def train_mode(model: nn.Module, frozen: bool) -> None:
    """model.train(), except that a frozen backbone stays in eval mode so its batch-norm
    running statistics do not move either."""
    if not frozen:
        model.train()
        return
    model.eval()
    for module in _head_modules(model):
        module.train()


def data_config(model: nn.Module) -> dict:
    """Normalisation from the model's pretrained config: the same for both arms."""
    cfg = model.pretrained_cfg
    return {"mean": list(cfg.get("mean", (0.485, 0.456, 0.406))), "std": list(cfg.get("std", (0.229, 0.224, 0.225)))}


def save_model(model: nn.Module, directory: Path, classes: list[str], display_names: list[str],
               image_size: int) -> None:
    """timm's Hub layout (config.json + model.safetensors) with label names and input size,
    written to a temporary folder and renamed into place."""
    import shutil

    from timm.models import save_for_hf

    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = getattr(model, "_orig_mod", model)  # the module behind torch.compile
    dense = copy.deepcopy(model).to(memory_format=torch.contiguous_format)  # safetensors wants dense tensors
    save_for_hf(dense, str(tmp), safe_serialization=True,
                model_config={"label_names": classes, "label_descriptions": dict(zip(classes, display_names))},
                data_config={"input_size": (3, image_size, image_size), "crop_pct": 1.0, "interpolation": "bilinear",
                             **data_config(model)})
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)


def load_saved_model(directory: Path) -> tuple[nn.Module, dict]:
    """A model saved by `save_model`, plus its config.json."""
    import timm

    config = json.loads((Path(directory) / "config.json").read_text())
    model = timm.create_model(config["architecture"], pretrained=False, num_classes=config["num_classes"])
    load_weights(model, directory)
    return model, config

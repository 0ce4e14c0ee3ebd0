"""What a comparison's runs download, fetched once by the driver before any job is submitted
(EXECUTOR=slurm): each distinct dataset archive (`data.url` into `data.root`), Hub dataset
(`data.dataset`) and set of pretrained weights (`model.pretrained` without `model.weights_file`).
On most clusters the compute nodes have no internet, and a hundred array tasks that download the
same archive at once race for it; the login node, where the driver runs, has it. The jobs then
run with the Hugging Face libraries offline (`OFFLINE_ENV`), reading what was fetched from the
shared file system (data.root, and HF_HOME: on a cluster it must be a folder the nodes see too)."""
from __future__ import annotations

import sys
from pathlib import Path

from ..config import ModelConfig, from_dict

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def fetch_inputs(jobs: list, say=None) -> None:
    """Fetch what `jobs` (plan.Job) need from the network, each distinct thing once; a failure is one
    DataError line naming the setting, before anything is submitted."""
    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    archives, hub, weights = {}, {}, {}
    for job in jobs:
        cfg = from_dict(job.settings)
        data, model = cfg.data, cfg.model
        if data.dataset is None and data.url and not Path(data.root).expanduser().exists():
            archives[(data.url, str(Path(data.root).expanduser()), data.sha256)] = data
        if data.dataset is not None and not Path(data.dataset).expanduser().is_dir():
            hub[(data.dataset, data.dataset_config)] = data
        if model.pretrained and model.weights_file is None:
            weights[model.name] = model
    for (url, root, _), data in archives.items():
        say(f"fetching {url} into {root} (once, here: the jobs read it from there)")
        from ..data.sources import resolve_root

        resolve_root(data)
    for (name, config), data in hub.items():
        say(f"fetching Hub dataset {name}{f' ({config})' if config else ''} into the Hugging Face cache (once, here)")
        from ..data.sources import open_dataset

        open_dataset(data)
    for name, model in weights.items():
        say(f"fetching the ImageNet weights of {name} into the Hugging Face cache (once, here)")
        fetch_weights(model)


def fetch_weights(model: ModelConfig) -> None:
    """timm's pretrained weights of `model.name`, into the Hugging Face cache (what a run's
    build_model reads them from); one DataError line when they cannot be downloaded here."""
    from ..training.model import pretrained_model  # torch and timm: only for a comparison that needs them

    pretrained_model(model.name)


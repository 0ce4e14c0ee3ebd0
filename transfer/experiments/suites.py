"""Suite files (`SUITE=suites/natural.yaml`): datasets by name, each with the settings that point a
run at it, read as strictly as the YAML configs."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..config import flatten
from ..errors import ConfigError
from .arms import ARMS

# what names a dataset's images: set per dataset by a suite, so not also on the command line
SOURCE_KEYS = ("data.dataset", "data.dataset_config", "data.root", "data.url", "data.sha256", "data.train_split",
               "data.val_split", "data.image_column", "data.label_column")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Suite:
    """SUITE=suites/natural.yaml: datasets by name, each with the settings that point a run at it.

        settings: {data.image_size: 160}               # optional: for every dataset
        datasets:
          pets:    {data.dataset: timm/oxford-iiit-pet, data.val_split: test}
          flowers: {data.dataset: dpdl-benchmark/oxford_flowers102}
    """
    file: Path
    datasets: dict  # name -> {dotted key: YAML value}, the suite's `settings` first

    @classmethod
    def load(cls, file: str | Path) -> "Suite":
        path = Path(file)
        where = f"SUITE={file}"
        if not path.is_file():
            raise ConfigError(f"{where} does not exist; give a suite file (see suites/ for examples)")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise ConfigError(f"{where} is not valid YAML{f' at line {mark.line + 1}' if mark else ''}: fix the "
                              f"syntax") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("datasets"), dict) or not raw["datasets"]:
            raise ConfigError(f"{where} must be a mapping with `datasets:`, one entry per dataset "
                              f"(e.g. `pets: {{data.dataset: timm/oxford-iiit-pet}}`)")
        unknown = sorted(set(raw) - {"datasets", "settings"})
        if unknown:
            raise ConfigError(f"{where}: unknown top-level key {unknown[0]!r}; a suite has `datasets:` and, "
                              f"optionally, `settings:` for every dataset")
        common = cls._entry(where, "settings", raw.get("settings"))
        datasets = {}
        for name, entry in raw["datasets"].items():
            name = str(name)
            if not NAME.fullmatch(name) or name in (*ARMS, "tune"):
                raise ConfigError(f"{where}: dataset name {name!r} is not usable as a folder name; use letters, "
                                  f"digits, '_', '-' and '.', not an arm's name nor 'tune'")
            datasets[name] = {**common, **cls._entry(where, f"dataset {name}", entry)}
        return cls(path, datasets)

    @staticmethod
    def _entry(where: str, what: str, entry) -> dict:
        if entry is None:
            return {}
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: {what} must be a mapping of key: value (e.g. data.dataset: beans), "
                              f"not {type(entry).__name__}")
        flat = flatten(entry)
        for key, value in flat.items():
            if isinstance(value, (list, tuple, set)):
                raise ConfigError(f"{where}: {what}: {key} must be one value, not a list")
        return flat

    def to_json(self) -> dict:
        return {"file": str(self.file), "datasets": self.datasets}

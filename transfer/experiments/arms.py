"""The arms: configs shipped with the package (transfer/configs/<arm>.yaml; configs/ at the top
of the repository is the same folder), so the arms work from any folder and from a non-editable
install."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import ConfigError

ARMS = ("pretrained", "pretrained_strong", "scratch", "scratch_strong", "probe")  # the shipped arms, in report order


def arm_config(arm: str) -> Path:
    """The shipped config of an arm (a file inside the installed package)."""
    if arm not in ARMS:
        raise ConfigError(f"unknown arm {arm!r} in ARMS; choose from: {', '.join(ARMS)}")
    return Path(str(resources.files("transfer") / "configs" / f"{arm}.yaml"))

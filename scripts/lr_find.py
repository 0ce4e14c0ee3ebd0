#!/usr/bin/env python
"""The LR range test of `optim.lr=find`, alone: the pick and the plot, nothing written into a run folder.

    python scripts/lr_find.py --config configs/scratch.yaml [key=value ...] [--plot lr_find.png]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from transfer.cli import exit_now, main  # noqa: E402

if __name__ == "__main__":
    exit_now(main(lr_find=True))

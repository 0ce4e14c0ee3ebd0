#!/usr/bin/env python
"""Classify images with a trained run's model/ folder: see transfer/results/predict.py."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from transfer.cli import exit_now, predict_main  # noqa: E402

if __name__ == "__main__":
    exit_now(predict_main())

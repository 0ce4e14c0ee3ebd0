#!/usr/bin/env python
"""Classify images with a trained run's model/ folder: see transfer/predict.py."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from transfer.predict import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())

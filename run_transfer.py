#!/usr/bin/env python
"""How much does transfer learning help? Train a timm model on an image folder.

    accelerate launch run_transfer.py --config configs/pretrained.yaml
    python run_transfer.py --config configs/scratch.yaml train.epochs=3 data.root=/my/folder
    torchrun --nproc_per_node 2 run_transfer.py --config configs/pretrained.yaml
"""
from transfer.cli import exit_now, main

if __name__ == "__main__":
    exit_now(main())

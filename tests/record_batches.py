"""What each process trains on: a hash of every training batch's pixels, one line a step, in
FOLDER/rank<R>.txt, and with mixup/cutmix on, each batch's mixing draw (lam, cutmix or not) in
FOLDER/rank<R>.mix.txt, for a launched run (each process records its own).

    python tests/record_batches.py FOLDER run_transfer.py --config ...
"""
import hashlib
import os
import runpy
import sys


def install(folder: str) -> None:
    from transfer.training import step

    train_step = step.Trainer.step

    def recording_step(self, batch):
        pixels = batch["pixel_values"].detach().cpu().contiguous().numpy().tobytes()
        with open(os.path.join(folder, f"rank{self.accelerator.process_index}.txt"), "a") as f:
            f.write(hashlib.sha1(pixels).hexdigest() + "\n")
        return train_step(self, batch)

    step.Trainer.step = recording_step

    from timm.data import Mixup

    draw = Mixup._params_per_batch  # (timm's per-batch draw, observed: the test reads what it drew)

    def recording_draw(self):
        lam, cutmix = draw(self)
        rank = os.environ.get("RANK", "0")
        with open(os.path.join(folder, f"rank{rank}.mix.txt"), "a") as f:
            f.write(f"{lam!r} {cutmix}\n")
        return lam, cutmix

    Mixup._params_per_batch = recording_draw


if __name__ == "__main__":
    install(sys.argv[1])
    sys.argv = sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name="__main__")

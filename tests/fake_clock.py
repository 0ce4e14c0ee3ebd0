"""A clock the test controls: every training step takes exactly `step_seconds` on the run's budget
clock (training.watch), whatever this machine's speed or load, so time-budget tests hold anywhere.

    install(0.5, monkeypatch.setattr)              # in a test's process, undone after it
    python tests/fake_clock.py 0.5 run_transfer.py --config ...   # a launched run (each process)
"""
import runpy
import sys
import types


def install(step_seconds: float, patch=setattr) -> None:
    from transfer.training import step, watch

    now = [0.0]
    train_step = step.Trainer.step

    def timed_step(self, batch):
        now[0] += step_seconds
        return train_step(self, batch)

    patch(step.Trainer, "step", timed_step)
    patch(watch, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))


if __name__ == "__main__":
    install(float(sys.argv[1]))
    sys.argv = sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name="__main__")

"""Every entry point, and the one way an error reaches the terminal.

    python run_transfer.py --config FILE [key=value ...]     train one arm (also `python -m transfer` or
                                                             `transfer-train`, under accelerate launch or torchrun)
    python scripts/lr_find.py --config FILE [key=value ...]  the LR range test alone (`transfer-lr-find`)
    python scripts/predict.py MODEL_DIR IMAGE ...            classify images with a saved model (`transfer-predict`)
    python -m transfer.report OUT                            rebuild a comparison's report (`transfer-report`)
    scripts/compare.sh [key=value ...]                       plan, run and report a comparison (`transfer-compare`)
    scripts/demo.sh                                          the offline demo (`transfer-demo`)

The console commands (setup.cfg's entry points) are the same functions, installed on the PATH.

`entry` runs each: a `UserError` becomes `error: <one line>` (or `stopped: ...`) and its exit
code; a full disk or an unwritable folder met outside the guarded writes becomes the same.
The heavy packages (torch, datasets, timm: seconds to import) are imported by the commands that
need them, so `--help` and the report commands answer at once.
"""
from __future__ import annotations

import argparse
import atexit
import os
import sys
from pathlib import Path
from typing import Callable

from . import stops
from .config import Config, dump_yaml, load_config
from .errors import UserError, first_line
from .files import as_output_error
from .training.phases import Phases, process_age


class OutlivesItsReader:
    """stdout or stderr, for a reader that may go away (`run_transfer.py ... | head`): at a broken
    pipe its file descriptor is pointed at /dev/null and the run goes on, writing its files and
    checkpoints as ever. (Without this the first print after the reader left raised
    BrokenPipeError: the run died with a traceback and no metrics, or hung waiting on its loader
    workers.)"""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._to_null()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._to_null()

    def _to_null(self) -> None:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, self._stream.fileno())  # what is still buffered goes there too, and so does Python's last flush
        os.close(null)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def entry(command: Callable[[], int]) -> int:
    """Run `command`, turning the errors a user can act on into one line and their exit code."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if not isinstance(stream, OutlivesItsReader) and hasattr(stream, "fileno"):
            try:
                stream.fileno()
            except (OSError, ValueError):  # pytest's captured streams and the like: nothing to point elsewhere
                continue
            setattr(sys, name, OutlivesItsReader(stream))
    try:
        return command()
    except UserError as e:
        print(f"{e.label}: {first_line(e)}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a write outside the guarded ones: a full disk or an unwritable folder
        mapped = as_output_error(e, e.filename or "output_dir")
        if mapped is None:
            raise
        print(f"error: {mapped}", file=sys.stderr)
        return mapped.exit_code
    except RuntimeError as e:
        if type(e).__name__ != "OutOfMemoryError":  # torch.OutOfMemoryError (torch imports only where a run starts)
            raise
        print(f"error: the GPU ran out of memory ({first_line(e)}); lower train.batch_size (train.grad_accum_steps "
              f"keeps the batch the optimizer sees), data.image_size or the model, or free the GPU of other "
              f"processes", file=sys.stderr)
        return 1


def exit_now(code: int) -> None:
    """End the process the way mypy does: atexit handlers (trackers, logging) run and output is
    flushed, but Python's teardown of every loaded module (about 1.5 s once torch, datasets and
    a model are loaded, measured on 2 cores) is skipped. Every output is already written and
    renamed into place by then. For the command line only; the functions here return."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def parse_args(argv: list[str] | None, lr_find: bool = False) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lr_find.py" if lr_find else "run_transfer.py",
        description=("Only the LR range test of optim.lr=find, on the run's model, data and optimizer: prints the "
                     "pick and writes the plot; writes nothing into a run folder." if lr_find else
                     "Train a timm model on an image folder, from ImageNet weights or from scratch."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="settings and their defaults (override any with key=value):\n"
               + "\n".join(f"  {line}" for line in dump_yaml(Config()).splitlines()))
    parser.add_argument("--config", help="YAML file of settings (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides typed as YAML, e.g. train.epochs=3 data.url=null")
    parser.add_argument("--print-config", action="store_true", help="print the resolved settings and exit")
    if lr_find:
        parser.add_argument("--plot", default="lr_find.png", help="where to write the plot (default: %(default)s)")
    return parser.parse_args(argv)


def hide_gpus_from_a_cpu_run() -> None:
    """A run told to use the CPU (`accelerate launch --cpu` sets ACCELERATE_USE_CPU) sees no GPU:
    on a GPU host, accelerate's checkpoint of the random states and any other query of the GPUs
    would otherwise create a CUDA context, taking GPU memory from other jobs (or failing on a GPU in
    exclusive mode). Called before torch is first asked about CUDA, which fixes what it sees."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def main(argv: list[str] | None = None, lr_find: bool = False) -> int:
    """run_transfer.py (one arm), or with `lr_find` scripts/lr_find.py (the LR range test alone)."""
    launch = process_age()  # interpreter start to here: what a run started from the command line pays first
    args = parse_args(argv, lr_find)

    def command() -> int:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(dump_yaml(cfg), end="")
            return 0
        hide_gpus_from_a_cpu_run()
        if lr_find:
            from .run import lr_range_test  # torch and the data stack: only when a run starts

            found = lr_range_test(cfg, Path(args.plot))
            print(f"suggested optim.lr={found.suggested_lr:.3g}; plot: {args.plot}")
            return 0
        with stops.listening():  # a stop signal during start-up is acted on when training starts, not lost
            from .run import run  # (as above)

            run(cfg, Phases(launch))
        return 0

    return entry(command)


def predict_main(argv: list[str] | None = None) -> int:
    """scripts/predict.py."""
    from .results import predict  # torch and timm: when images are classified

    return entry(lambda: predict.main(argv))


def report_main(argv: list[str] | None = None) -> int:
    """python -m transfer.report OUT: the report of a comparison, sweep or suite, from its saved runs."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m transfer.report OUT_DIR (or transfer-report OUT_DIR)", file=sys.stderr)
        return 2
    from .experiments import report  # matplotlib, for the figures

    from .experiments.spec import target_half_width

    def command() -> int:
        print(report.markdown(report.build(Path(argv[0]), target_half_width(os.environ))))
        return 0

    return entry(command)


def compare_main(argv: list[str] | None = None) -> int:
    """scripts/compare.sh: its environment says what to run, `argv` the settings for every run."""
    from .experiments import runner  # (as above)

    return entry(lambda: runner.main(sys.argv[1:] if argv is None else argv))


def demo_main(argv: list[str] | None = None) -> int:
    """scripts/demo.sh: offline, whatever the environment says."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before the Hugging Face packages are imported
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from .experiments import demo

    return entry(lambda: demo.main(os.environ))


COMMANDS = {"train": main, "lr-find": lambda argv: main(argv, lr_find=True), "predict": predict_main,
            "report": report_main, "compare": compare_main, "demo": demo_main}


def console() -> None:
    """The console commands (setup.cfg): `transfer-train`, `transfer-compare`, ... each runs the
    command its name ends in."""
    exit_now(COMMANDS[Path(sys.argv[0]).name.removeprefix("transfer-")](sys.argv[1:]))


if __name__ == "__main__":  # python -m transfer.cli COMMAND [...]: what the scripts call
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: python -m transfer.cli {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        raise SystemExit(2)
    exit_now(COMMANDS[sys.argv[1]](sys.argv[2:]))

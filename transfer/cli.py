"""Command line: `run_transfer.py --config FILE [key=value ...]`, under python, accelerate or torchrun."""
from __future__ import annotations

import argparse
import sys

from .config import dump_yaml, load_config, Config
from .errors import ConfigError, DataError, OutputError

USAGE_EXIT = 2  # bad settings or bad input data: a one-line message, no traceback


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


def exit_now(code: int) -> None:
    """End the process the way mypy does: atexit handlers (trackers, logging) run and output is
    flushed, but Python's teardown of every loaded module (about 1.5 s once torch, datasets and
    a model are loaded, measured on 2 cores) is skipped. Every output is already written and
    renamed into place by then. For the command line only; `main` itself returns."""
    import atexit
    import os

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def one_line(error: Exception) -> str:
    """The message of an error, even one re-raised from a DataLoader worker with its traceback."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text


def main(argv: list[str] | None = None, lr_find: bool = False) -> int:
    """`lr_find`: scripts/lr_find.py, the LR range test alone."""
    args = parse_args(argv, lr_find)
    from .outputs import as_output_error
    from .watch import TrainingStopped

    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(dump_yaml(cfg), end="")
            return 0
        if lr_find:
            from pathlib import Path

            from .train import lr_range_test

            found = lr_range_test(cfg, Path(args.plot))
            print(f"suggested optim.lr={found['suggested_lr']:.3g}; plot: {args.plot}")
            return 0
        from .train import run

        run(cfg)
    except (ConfigError, DataError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return USAGE_EXIT
    except OutputError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except TrainingStopped as e:
        print(f"stopped: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a write outside the guarded ones: a full disk or an unwritable folder
        mapped = as_output_error(e, e.filename or "output_dir")
        if mapped is None:
            raise
        print(f"error: {mapped}", file=sys.stderr)
        return mapped.exit_code
    return 0

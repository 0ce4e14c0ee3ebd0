"""The errors a user can act on, and the one way they reach the terminal.

Each message is one line that names the key, file or folder and says what to do. Every such
error is a `UserError` that carries its exit code, set where the condition is known; every entry
point goes through `cli.entry`, which prints `error: <line>` (or `stopped: <line>`) and returns
that code. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """An error the user can act on. `exit_code`: 2 for input to change before anything ran
    (settings, data, a folder in use), 1 for a run that failed part-way."""

    exit_code = 2
    label = "error"

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else type(self).__name__


class ConfigError(UserError, ValueError):
    """A bad setting or environment variable: the message names the key and says what is valid."""


class DataError(UserError, ValueError):
    """Bad data on disk: the message names the file or folder and what to do."""


class RunError(UserError):
    """The run cannot go on as set up, though every setting is valid: an output folder in use by
    another run, an LR range test whose curve cannot be read, no finished runs to report on."""


class OutputError(UserError, OSError):
    """A result or checkpoint could not be written (full disk, read-only or forbidden folder).
    Exit code 2 when it happens before training, 1 after."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None):
        UserError.__init__(self, message, exit_code)


class TrainingStopped(UserError):
    """The run stopped before its end on purpose or by a fault; the message says what to do."""

    exit_code = 1
    label = "stopped"


class Preempted(TrainingStopped):
    exit_code = 143  # 128 + SIGTERM, what schedulers expect of a preempted job
    lead = "stopped by "  # how every message starts: a log's last line tells a preemption from a fault

    @classmethod
    def in_line(cls, line: str) -> bool:
        """Whether a run's `stopped: ...` line (records.last_error) is a preemption's."""
        return line.startswith(f"{cls.label}: {cls.lead}")


class StoppedInStartup(TrainingStopped):
    """A stop signal before the first training step: nothing new to save. A cluster counts it as a
    failed attempt (a time slot shorter than the start-up would otherwise be requeued for ever)."""
    exit_code = 143
    lead = "stopped during start-up by "

    @classmethod
    def in_line(cls, line: str) -> bool:
        return line.startswith(f"{cls.label}: {cls.lead}")


class NonFiniteLoss(TrainingStopped):
    exit_code = 1


def first_line(error: BaseException) -> str:
    """An error's message as one line, also when a DataLoader worker re-raised it with its
    traceback folded into the text."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return (text.splitlines() or [type(error).__name__])[0]

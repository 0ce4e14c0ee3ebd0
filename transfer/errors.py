"""The errors a user can act on. Each message is one line that names the key, file or folder and
says what to do; the CLI prints it without a traceback (`cli.main` maps each to an exit code)."""
from __future__ import annotations


class ConfigError(ValueError):
    """A bad setting: the message names the key and says what is valid. Exit code 2."""


class DataError(ValueError):
    """Bad data on disk: the message names the file or folder and what to do. Exit code 2."""


class OutputError(OSError):
    """A result or checkpoint could not be written (full disk, read-only or forbidden folder).
    Exit code 2 when it happens before training, 1 after (`exit_code`)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.args[0]

"""Processes that end with the one that started them, however it ends (Linux's prctl; elsewhere
the closed pipes and the watchdogs do it)."""
from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36  # linux/prctl.h


def _prctl(option: int, value: int) -> bool:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux
        return False


def die_with_parent(parent_pid: int) -> None:
    """In a child (after fork, or before exec): the kernel kills it with SIGKILL when its parent
    `parent_pid` dies, however that dies; it ends at once if the parent is gone already."""
    if _prctl(PR_SET_PDEATHSIG, signal.SIGKILL) and os.getppid() != parent_pid:
        os._exit(0)  # the parent died before the signal was set up


def become_subreaper() -> None:
    """Orphans of this process's descendants become its children, not init's: a worker whose
    parent died is still found (and ended) here."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)

"""Pinning benchmark processes to CPUs, with a priority that counts under autogroup scheduling."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def pin(cores: int | tuple[int, ...], nice: int, *, own_group: bool = False) -> None:
    """Pin this process to `cores` and give it priority `nice` (children inherit both).

    With the kernel's autogroup scheduling (sched_autogroup_enabled) a nice value only counts
    inside the process's session, and every session gets an equal share of a CPU; so with
    `own_group` the process starts a session of its own and sets that group's nice value.
    """
    os.sched_setaffinity(0, {cores} if isinstance(cores, int) else set(cores))
    if not nice:
        return
    if own_group:
        with contextlib.suppress(PermissionError):
            os.setsid()
        with contextlib.suppress(OSError):
            Path("/proc/self/autogroup").write_text(f"{nice}\n")
    os.setpriority(os.PRIO_PROCESS, 0, nice)

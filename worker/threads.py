"""How a worker process uses the CPU cores: one policy for boxes shared by several stages, one for a box of its own.

- `shared` (default): 1 intra-op thread unless told otherwise, and OpenMP threads sleep when idle
  (`OMP_WAIT_POLICY=PASSIVE`, `KMP_BLOCKTIME=0`): several stage processes (or other people's work) share the
  cores, and a stage that just finished must not spin on a core the next stage needs.
- `dedicated`: every core this process may run on, and OpenMP's default (threads spin briefly before sleeping,
  which saves the wake-up on every layer when nothing else wants the cores).

OpenMP reads its settings when torch loads: `apply` must run before `import torch` in the process (a worker
forked from an interpreter that already loaded torch keeps that interpreter's settings; the thread count still
applies).
"""

from __future__ import annotations

import os
import sys
from typing import Literal

ThreadPolicy = Literal["shared", "dedicated"]
POLICIES: tuple[ThreadPolicy, ...] = ("shared", "dedicated")


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def apply(policy: str, threads: int | None) -> int:
    """Set the OpenMP environment for `policy` (unless the operator set it) and return the intra-op thread count."""
    if policy not in POLICIES:
        raise ValueError(f"thread policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    if policy == "shared":
        if "torch" not in sys.modules:
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            os.environ.setdefault("KMP_BLOCKTIME", "0")
        return threads or 1
    return threads or cores()

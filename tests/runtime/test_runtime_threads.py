"""Worker thread policy: `shared` (1 thread, sleeping OpenMP threads) or `dedicated` (every core)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from worker import threads


def test_thread_counts_per_policy() -> None:
    assert threads.apply("shared", None) == 1
    assert threads.apply("shared", 3) == 3
    assert threads.apply("dedicated", None) == threads.cores() >= 1
    with pytest.raises(ValueError, match="shared, dedicated"):
        threads.apply("spin", None)


def test_shared_sets_openmp_to_sleep_before_torch_loads() -> None:
    code = "import os; from worker import threads; threads.apply('shared', None); print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "KMP_"))}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"

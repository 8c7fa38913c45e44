"""TaskGuard: a tiny sidecar process that kills every running task's process group when the
worker dies, however it dies (kill -9 included).

Why not PR_SET_PDEATHSIG in each task? It needs a `preexec_fn`, which forces Python's slow fork()
path: with a worker-sized heap that cut task starts from ~1,000/s to ~70/s here. And it reaches
only the direct child, not what a shell task forks. Instead the worker starts one guard at start
and tells it, through a pipe, which process groups are running; when the worker dies the kernel
closes the pipe, the guard reads EOF and kills those groups. Tasks start with the fast vfork path.
"""

from __future__ import annotations

import subprocess
import sys
import threading

# Runs in `python -I -S`: no site, no distcomp import, so it starts in ~20 ms and costs ~8 MB.
_GUARD = r"""
import os, signal, sys
# The signal that stops the worker's whole process tree (scancel, systemd) must not end the guard
# first: it lives until the worker's pipe closes.
signal.signal(signal.SIGTERM, signal.SIG_IGN)
groups = set()
for line in sys.stdin:
    op, pgid = line[0], int(line[1:])
    if op == "+":
        groups.add(pgid)
    else:
        groups.discard(pgid)
for pgid in groups:  # EOF: the worker is gone
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


class TaskGuard:
    def __init__(self) -> None:
        # Its own session, so a Ctrl-C to the worker's terminal does not kill the guard first.
        self.proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _GUARD], stdin=subprocess.PIPE,
                                     start_new_session=True)  # fmt: skip
        self._lock = threading.Lock()

    def _send(self, line: str) -> None:
        stdin = self.proc.stdin
        if stdin is None or stdin.closed:
            return
        with self._lock:
            try:
                stdin.write(line.encode())
                stdin.flush()
            except (BrokenPipeError, ValueError):  # guard gone: tasks still run, only less protected
                pass

    def watch(self, pgid: int) -> None:
        self._send(f"+{pgid}\n")

    def forget(self, pgid: int) -> None:
        self._send(f"-{pgid}\n")

    def close(self) -> None:
        """Clean exit: the guard kills whatever is still registered (nothing, after a drain)."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with self._lock:
                try:
                    self.proc.stdin.close()
                except OSError:  # the guard is gone already (BrokenPipeError on the final flush)
                    pass
        try:
            self.proc.wait(5)
        except (subprocess.TimeoutExpired, OSError):  # OSError: time.sleep under libfaketime (clock-skew test)
            self.proc.kill()

"""The exceptions a user can see, one hierarchy."""

from __future__ import annotations

import sys
from collections.abc import Callable


class DistcompError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(DistcompError):
    """A setting has an invalid value: names the field, the value and what was expected."""

    def __init__(self, field: str, value: object, expected: str) -> None:
        self.field, self.value, self.expected = field, value, expected
        super().__init__(f"invalid config: {field}={value!r}: expected {expected}")


class TaskLineError(DistcompError):
    """A task line could not be parsed; carries where it came from."""

    def __init__(self, reason: str, path: str = "", lineno: int = 0) -> None:
        self.reason, self.path, self.lineno = reason, path, lineno
        where = f"{path}:{lineno}: " if path else ""
        super().__init__(f"{where}{reason}")


class WorkerNameTaken(DistcompError):
    """Another live process holds this worker name's lease."""


class QueueLayoutError(DistcompError):
    """The queue's records were written by another version's layout."""


class SubmitIncomplete(DistcompError):
    """A submit stopped part way (Redis full, read-only, gone): what was added stays added, and
    submitting the same lines again adds the rest (known lines are skipped)."""

    def __init__(self, added: int, total: int, cause: str) -> None:
        self.added, self.total = added, total
        super().__init__(f"added {added} of {total}: {cause}; submit the same file again to add the rest")


class RedisUnavailable(DistcompError):
    """Redis could not be reached (host named, password never shown)."""


class NotFound(DistcompError):
    """A command named a task, job or worker the queue does not know (the CLI exits 2, changing nothing)."""


class AddressInUse(DistcompError):
    """An HTTP endpoint (/metrics, /healthz) could not bind its HOST:PORT; names the address and why."""


def run_command(command: str, action: Callable[[], int]) -> int:
    """Run one `distcomp` command: our errors become one line on stderr and exit status 2 (no
    traceback), a missing file names itself, Ctrl-C exits 130."""
    try:
        return action()
    except DistcompError as exc:
        print(f"distcomp {command}: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"distcomp {command}: no such file: {exc.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

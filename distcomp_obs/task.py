"""Task lines in DistComp's format: ``type:priority:min_dram_gb:min_cpu:params``.

Only the first four ``:`` split fields, so params may contain ``:``. The line itself is the
task's identity (identical lines are one task), so ``format_line(parse_line(s)) == s`` for
every valid, already-normalised line.
"""

from __future__ import annotations

import enum
import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from distcomp_obs.errors import DistcompError, TaskLineError

#: Highest accepted priority (the lowest is 0): the claim key writes ``MAX_PRIORITY - priority``
#: in 7 digits (records.claim_key).
MAX_PRIORITY = 1_000_000
#: Longest accepted task line in bytes (UTF-8); a task line is a Redis hash field and a label
#: in logs, so a multi-megabyte line is almost surely a mistake.
MAX_LINE_BYTES = 64 * 1024
BUILTINS = ("noop", "sleep", "fail")
#: Malformed lines listed one by one; past this a file is summarised (a binary file is not a list).
MAX_REPORTED_ERRORS = 20


class TaskType(enum.StrEnum):
    #: a command run by /bin/sh in a subprocess
    SHELL = "shell"
    #: a Python script path and its arguments, run with the worker's interpreter
    PYTHON = "python"
    #: in-process noop / sleep SECONDS / fail, for benchmarks and smoke checks
    BUILTIN = "builtin"


@dataclass(frozen=True, slots=True)
class Task:
    type: TaskType
    priority: int
    min_dram_gb: float
    min_cpu: float
    params: str

    @property
    def line(self) -> str:
        return format_line(self)


def _number(text: str, field: str, integer: bool) -> float:
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise TaskLineError(f"{field} must be {kind}, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise TaskLineError(f"{field} must be finite and >= 0, got {text!r}")
    return value


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def parse_line(line: str) -> Task:
    """Parse one task line; raise TaskLineError with a reason when it is malformed."""
    line = line.strip()
    if len(line.encode("utf-8", "surrogatepass")) > MAX_LINE_BYTES:
        raise TaskLineError(f"line longer than {MAX_LINE_BYTES} bytes")
    if "\n" in line or "\r" in line or "\x00" in line:
        raise TaskLineError("line contains a newline or NUL character")
    parts = line.split(":", 4)
    if len(parts) < 5:
        raise TaskLineError("expected type:priority:min_dram_gb:min_cpu:params (5 fields separated by ':')")
    kind, priority_text, dram_text, cpu_text, params = parts
    try:
        task_type = TaskType(kind.strip())
    except ValueError:
        raise TaskLineError(f"unknown task type {kind!r} (expected shell, python or builtin)") from None
    priority = int(_number(priority_text.strip(), "priority", integer=True))
    if priority > MAX_PRIORITY:
        raise TaskLineError(f"priority must be <= {MAX_PRIORITY}, got {priority}")
    min_dram = _number(dram_text.strip(), "min_dram_gb", integer=False)
    min_cpu = _number(cpu_text.strip(), "min_cpu", integer=False)
    params = params.strip()
    if not params:
        raise TaskLineError("params are empty")
    if task_type is TaskType.BUILTIN:
        _check_builtin(params)
    return Task(task_type, priority, min_dram, min_cpu, params)


def priority_of(line: str) -> int | None:
    """A stored line's priority for display, None if the line does not parse (shown as stored)."""
    try:
        return parse_line(line).priority
    except TaskLineError:
        return None


def _check_builtin(params: str) -> None:
    words = params.split()
    if words[0] not in BUILTINS:
        raise TaskLineError(f"unknown builtin {words[0]!r} (expected one of {', '.join(BUILTINS)})")
    if words[0] == "sleep":
        if len(words) < 2:
            raise TaskLineError("builtin sleep needs SECONDS")
        _number(words[1], "sleep seconds", integer=False)


def format_line(task: Task) -> str:
    return ":".join(
        [
            task.type.value,
            str(task.priority),
            _format_number(task.min_dram_gb),
            _format_number(task.min_cpu),
            task.params,
        ]
    )


def normalise(line: str) -> str:
    """The canonical form of a line, which is the task's identity in Redis."""
    return format_line(parse_line(line))


def iter_task_lines(lines: Iterable[str], path: str = "<input>") -> Iterator[tuple[int, Task | TaskLineError]]:
    """Yield (line number, Task or the error) for every non-blank, non-comment line."""
    for lineno, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        try:
            yield lineno, parse_line(text)
        except TaskLineError as exc:
            yield lineno, TaskLineError(exc.reason, path, lineno)


@dataclass
class TaskFile:
    """A task file as read: its valid tasks once each, in file order, and what was wrong."""

    path: str
    tasks: list[Task] = field(default_factory=list)
    errors: list[TaskLineError] = field(default_factory=list)  # the first MAX_REPORTED_ERRORS, by line
    error_count: int = 0  # every malformed line
    duplicates: int = 0  # valid lines repeating an earlier one (identical lines are one task)

    def error_lines(self) -> list[str]:
        """What to print: one line per listed error, then one for the rest."""
        out = [str(e) for e in self.errors]
        if self.error_count > len(self.errors):
            out.append(f"{self.path}: ... and {self.error_count - len(self.errors)} more malformed line(s)")
        return out


def _read_bytes(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    p = Path(path)
    if p.is_dir():
        raise DistcompError(f"{path} is a directory, not a task file")
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise DistcompError(f"no such file: {path}") from None
    except OSError as exc:
        raise DistcompError(f"cannot read {path}: {exc.strerror or exc}") from None


def load_task_file(path: str | Path) -> TaskFile:
    """Read a task file ("-": standard input). Bad lines are reported with their line number and
    the rest still load; a directory, an unreadable or a binary file is one DistcompError."""
    name = str(path)
    data = _read_bytes(name)
    if b"\0" in data[:65536]:
        raise DistcompError(f"{name} is not a text file (it contains NUL bytes)")
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark, as some editors write
        data = data[3:]
    result = TaskFile(name)
    seen: set[str] = set()
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            _add_error(result, TaskLineError(f"not valid UTF-8 at byte {exc.start}", name, lineno))
            continue
        for _, item in iter_task_lines([text], name):
            if isinstance(item, TaskLineError):
                _add_error(result, TaskLineError(item.reason, name, lineno))
            elif item.line in seen:
                result.duplicates += 1
            else:
                seen.add(item.line)
                result.tasks.append(item)
    return result


def _add_error(result: TaskFile, error: TaskLineError) -> None:
    result.error_count += 1
    if len(result.errors) < MAX_REPORTED_ERRORS:
        result.errors.append(error)

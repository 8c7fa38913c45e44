"""Task lines: DistComp's format, parsed strictly, formatted back to the same identity."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distcomp_obs.errors import TaskLineError
from distcomp_obs.task import MAX_PRIORITY, Task, TaskType, format_line, parse_line, read_task_file


def test_parse_splits_only_the_first_four_fields() -> None:
    task = parse_line("shell:4:2:1:./sim --size 8 --at 12:30:00")
    assert task == Task(TaskType.SHELL, 4, 2.0, 1.0, "./sim --size 8 --at 12:30:00")
    assert format_line(task) == "shell:4:2:1:./sim --size 8 --at 12:30:00"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("shell:1:0:0", "5 fields"),
        ("perl:1:0:0:x", "unknown task type"),
        ("shell:high:0:0:x", "priority must be an integer"),
        ("shell:-1:0:0:x", ">= 0"),
        (f"shell:{MAX_PRIORITY + 1}:0:0:x", "priority must be <="),
        ("shell:1:lots:0:x", "min_dram_gb must be a number"),
        ("shell:1:0:nan:x", "finite"),
        ("shell:1:0:0:   ", "params are empty"),
        ("builtin:1:0:0:explode", "unknown builtin"),
        ("builtin:1:0:0:sleep", "needs SECONDS"),
        ("builtin:1:0:0:sleep soon", "sleep seconds must be a number"),
    ],
)
def test_malformed_lines_are_rejected_with_a_reason(line: str, reason: str) -> None:
    with pytest.raises(TaskLineError, match=reason):
        parse_line(line)


def test_read_task_file_reports_line_numbers_and_keeps_valid_lines(tmp_path: Path) -> None:
    path = tmp_path / "tasks.txt"
    path.write_bytes(b"# comment\n\nshell:1:0:0:echo a\nbogus line\nbuiltin:2:0:0:noop 1\n\xff\xfe:1:0:0:x\n")
    tasks, errors = read_task_file(path)
    assert [t.params for t in tasks] == ["echo a", "noop 1"]
    assert [(e.lineno, str(e).split(": ", 1)[0]) for e in errors] == [(4, f"{path}:4"), (6, f"{path}:6")]
    assert "UTF-8" in errors[1].reason


params = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1).map(str.strip).filter(bool)
numbers = st.one_of(st.integers(0, 10**6), st.floats(0, 1e6, allow_nan=False, allow_infinity=False))


@given(kind=st.sampled_from(["shell", "python"]), priority=st.integers(0, MAX_PRIORITY), dram=numbers, cpu=numbers,
       text=params)  # fmt: skip
def test_format_parse_round_trip(kind: str, priority: int, dram: float, cpu: float, text: str) -> None:
    task = Task(TaskType(kind), priority, float(dram), float(cpu), text)
    line = format_line(task)
    assert parse_line(line) == task
    assert format_line(parse_line(line)) == line


@given(st.text(max_size=200))
def test_any_text_parses_or_fails_with_a_reason(text: str) -> None:
    try:
        parse_line(text)
    except TaskLineError as exc:
        assert exc.reason

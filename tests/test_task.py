"""Task lines: DistComp's format, parsed strictly, formatted back to the same identity."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distcomp_obs.errors import DistcompError, TaskLineError
from distcomp_obs.task import (
    MAX_PRIORITY,
    MAX_REPORTED_ERRORS,
    Task,
    TaskType,
    format_line,
    load_task_file,
    parse_line,
)


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


def test_load_task_file_reports_line_numbers_and_keeps_valid_lines(tmp_path: Path) -> None:
    path = tmp_path / "tasks.txt"
    path.write_bytes(b"# comment\n\nshell:1:0:0:echo a\nbogus line\nbuiltin:2:0:0:noop 1\n\xff\xfe:1:0:0:x\n")
    loaded = load_task_file(path)
    assert [t.params for t in loaded.tasks] == ["echo a", "noop 1"]
    assert [(e.lineno, str(e).split(": ", 1)[0]) for e in loaded.errors] == [(4, f"{path}:4"), (6, f"{path}:6")]
    assert "UTF-8" in loaded.errors[1].reason
    assert (loaded.error_count, loaded.duplicates) == (2, 0)
    assert loaded.error_lines() == [str(e) for e in loaded.errors]


def test_a_utf8_bom_does_not_reject_line_one(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfshell:1:0:0:echo first\r\nbuiltin:1:0:0:noop\r\n")
    loaded = load_task_file(path)
    assert [t.line for t in loaded.tasks] == ["shell:1:0:0:echo first", "builtin:1:0:0:noop"]
    assert loaded.errors == [] and loaded.error_count == 0


def test_duplicate_lines_are_one_task_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "dups.txt"
    # identical after normalisation: spaces around fields and 1.0 == 1 are the same task
    path.write_text("builtin:1:0:0:noop a\nbuiltin:2:0:0:noop b\n builtin:1:0:0:noop a \nbuiltin:1:0.0:0:noop a\n")
    loaded = load_task_file(path)
    assert [t.line for t in loaded.tasks] == ["builtin:1:0:0:noop a", "builtin:2:0:0:noop b"]
    assert loaded.duplicates == 2 and loaded.error_count == 0


def test_errors_are_capped_with_one_summary_line(tmp_path: Path) -> None:
    path = tmp_path / "many.txt"
    bad = MAX_REPORTED_ERRORS + 37
    path.write_text("".join(f"bogus {i}\n" for i in range(bad)) + "builtin:1:0:0:noop ok\n")
    loaded = load_task_file(path)
    assert loaded.error_count == bad and len(loaded.errors) == MAX_REPORTED_ERRORS
    assert [e.lineno for e in loaded.errors] == list(range(1, MAX_REPORTED_ERRORS + 1))
    lines = loaded.error_lines()
    assert len(lines) == MAX_REPORTED_ERRORS + 1
    assert lines[-1] == f"{path}: ... and 37 more malformed line(s)"
    assert [t.line for t in loaded.tasks] == ["builtin:1:0:0:noop ok"]


def test_a_directory_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(DistcompError) as info:
        load_task_file(tmp_path)
    assert str(info.value) == f"{tmp_path} is a directory, not a task file"


def test_a_missing_file_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(DistcompError, match="no such file"):
        load_task_file(tmp_path / "nope.txt")


def test_a_binary_file_is_one_error_not_a_line_per_chunk(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(bytes(range(256)) * 4096)  # 1 MiB with NULs and newlines
    with pytest.raises(DistcompError) as info:
        load_task_file(path)
    assert "not a text file" in str(info.value) and "\n" not in str(info.value)


def test_stdin_is_read_for_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"\xef\xbb\xbfbuiltin:1:0:0:noop in\nnot a task\nbuiltin:1:0:0:noop in\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    loaded = load_task_file("-")
    assert [t.line for t in loaded.tasks] == ["builtin:1:0:0:noop in"]
    assert loaded.duplicates == 1 and [str(e) for e in loaded.errors][0].startswith("-:2: ")


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

"""The main job end to end: `distcomp run` on the example file with an embedded Redis."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_cli


def test_run_examples_finishes_all_but_the_failing_task(tmp_path: Path) -> None:
    result = run_cli("run", "examples/tasks.txt", "--workers", "2", "--data-dir", str(tmp_path / "data"),
                     timeout=120)  # fmt: skip
    out = result.stdout
    assert result.returncode == 1, result.stderr  # one task fails on purpose
    assert "10 finished, 1 failed, 0 waiting" in out
    assert 'FAILED shell:1:0:0:echo "disk full" >&2; exit 3' in out
    assert "disk full" in out and "exit code 3" in out
    assert "audit OK" in out

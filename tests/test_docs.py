"""The README is the front door: its quick start and configuration table must match the code."""

from __future__ import annotations

import re

from distcomp_obs.config import FIELDS
from tests.conftest import REPO


def test_readme_lists_every_setting() -> None:
    readme = (REPO / "README.md").read_text()
    listed = set(re.findall(r"^\| `(\w+)` \| `DISTCOMP_", readme, re.MULTILINE))
    assert listed == set(FIELDS)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"^(python3 -m venv .+)$", readme, re.MULTILINE)
    assert len(commands) == 2, commands
    ci = (REPO / ".ci" / "run").read_text()
    assert commands[1] in ci.splitlines()
    assert "distcomp run examples/tasks.txt" in commands[0]

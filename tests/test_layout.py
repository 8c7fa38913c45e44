"""The house rules of the package, checked on its source: imports flow one way (no circle, lazy
imports inside functions included), no module over 450 lines, all queue commands in queue/."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "distcomp_obs"
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Package modules this file imports anywhere, functions included (`from pkg import sub` names
    the submodule); imports under `if TYPE_CHECKING:` never run and are left out."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            node.body = []
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return {name for name in found if name in modules}


def test_imports_have_no_circle() -> None:
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            raise AssertionError("import circle: " + " -> ".join([*trail[trail.index(name) :], name]))
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, [*trail, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_no_module_is_too_long() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_queue_commands_live_in_the_queue_package() -> None:
    """Scripts are registered and writes issued only under queue/ (the audit and the bench's
    probes read; the embedded server and connection helpers are not queue commands)."""
    writes = re.compile(r"\.(register_script|hset|hdel|zadd|zrem|sadd|srem|hincrby|xadd|publish|unlink)\(")
    offenders = [
        f"{p.relative_to(PACKAGE)}:{i}"
        for p in PACKAGE.rglob("*.py")
        if "queue" not in p.relative_to(PACKAGE).parts
        for i, line in enumerate(p.read_text().splitlines(), start=1)
        if writes.search(line)
    ]
    assert offenders == []


def test_queue_reads_go_through_the_queue_package() -> None:
    """Outside queue/, only the audit (it checks the records, not the queue's read models) and the
    worker's PING while Redis is away and CONFIG GET at start call a command on a Queue's client
    (`q.r`): the console, CLI and exporter read through `Queue` and `queue.views`."""
    allowed = {"audit.py", "worker/lifecycle.py:config_get", "worker/fetcher.py:ping"}
    offenders = [
        f"{rel}:{i}:{m.group(1)}"
        for p in PACKAGE.rglob("*.py")
        if "queue" not in (rel := p.relative_to(PACKAGE).as_posix()).split("/")[:-1] and rel not in allowed
        for i, line in enumerate(p.read_text().splitlines(), start=1)
        for m in re.finditer(r"\bq\.r\.(\w+)", line)
        if f"{rel}:{m.group(1)}" not in allowed
    ]
    assert offenders == []

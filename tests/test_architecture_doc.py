"""The docs point only inside the repository: no stale DESIGN.md references, every relative link
resolves (anchors into markdown files included), and every module docs/ARCHITECTURE.md names exists."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
ARCHITECTURE = DOCS / "ARCHITECTURE.md"
PACKAGE = "distcomp_obs"

#: inline markdown links and images: [text](target) / ![alt](target "title")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
#: distcomp_obs/... paths, with globs
PACKAGE_PATH = re.compile(rf"\b{PACKAGE}/[\w./*-]*[\w*]")
#: distcomp_obs.x.y dotted module names (an attribute may end them: distcomp_obs.config.BASELINE)
DOTTED = re.compile(rf"\b{PACKAGE}(?:\.\w+)+")
#: file names in backticks: `worker/fetcher.py`, `lua/*.lua`, `lib.lua`
CODE_FILE = re.compile(r"`([\w./*-]+\.(?:py|lua))`")
#: qualified names in backticks: `keys.SCRIPT_KEYS`, `Queue.settle`, `Results._lock`
QUALIFIED = re.compile(r"`([A-Za-z_]\w*)\.([A-Za-z_]\w*)")
FENCE = re.compile(r"^(```|~~~)")


def markdown_files() -> list[Path]:
    return sorted(DOCS.glob("*.md")) + [REPO / "README.md"]


def prose(path: Path) -> str:
    """The file's text without fenced code blocks (links and headings inside them are not links)."""
    kept: list[str] = []
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            kept.append(line)
    return "\n".join(kept)


def github_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a markdown file (lowercase, punctuation dropped,
    spaces to hyphens; a repeated heading gets -1, -2, ...)."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose(path).splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def relative_links(path: Path) -> Iterator[tuple[str, Path, str]]:
    """(link as written, file it points to, #fragment or "") for every relative link in `path`."""
    for target in LINK.findall(prose(path)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
            continue  # http(s), mailto, ... and anchors within the page
        file_part, _, fragment = target.partition("#")
        yield target, (path.parent / file_part).resolve(), fragment


def test_no_doc_mentions_the_external_design_note() -> None:
    offenders = [p.relative_to(REPO).as_posix() for p in sorted(DOCS.rglob("*")) if p.is_file()]
    offenders = [name for name in offenders if b"DESIGN.md" in (REPO / name).read_bytes()]
    if b"DESIGN.md" in (REPO / "README.md").read_bytes():
        offenders.append("README.md")
    assert offenders == [], f"these cite DESIGN.md, which is not in the repository: {offenders}"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_point_into_the_repository(path: Path) -> None:
    broken: list[str] = []
    for target, resolved, fragment in relative_links(path):
        if not resolved.is_relative_to(REPO):
            broken.append(f"{target} (outside the repository)")
        elif not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and resolved.suffix == ".md" and fragment not in github_anchors(resolved):
            broken.append(f"{target} (no such heading)")
    assert broken == [], f"{path.name}: broken links: {broken}"


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.ImportFrom):
            names.update(a.asname or a.name for a in node.names)
    return names


def _module_exists(dotted: str) -> bool:
    base = REPO.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _defines(dotted_module: str, name: str) -> bool:
    """Whether the module (a file or a package's __init__) defines or imports `name` at top level."""
    base = REPO.joinpath(*dotted_module.split("."))
    source = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
    return name in _top_level_names(ast.parse(source.read_text(encoding="utf-8")))


def dotted_name_exists(dotted: str) -> bool:
    """A module, or a module and one name it defines (`distcomp_obs.config.BASELINE`)."""
    if _module_exists(dotted):
        return True
    module, _, name = dotted.rpartition(".")
    return "." in dotted and _module_exists(module) and _defines(module, name)


def code_file_exists(name: str) -> bool:
    """A file named in backticks: relative to the repository or the package, or (a bare file
    name) anywhere in the package; globs must match something."""
    for base in (REPO, REPO / PACKAGE):
        if any(base.glob(name)):
            return True
    return "/" not in name and any((REPO / PACKAGE).rglob(name))


def _class_attributes(cls: ast.ClassDef) -> set[str]:
    """Methods, class-level fields and `self.x = ...` assignments of a class."""
    attrs = _top_level_names(ast.Module(body=cls.body, type_ignores=[]))
    for node in ast.walk(cls):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        for target in targets:
            for leaf in ast.walk(target):
                if isinstance(leaf, ast.Attribute) and isinstance(leaf.value, ast.Name) and leaf.value.id == "self":
                    attrs.add(leaf.attr)
    return attrs


def package_index() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module short name -> names it defines, class name -> its attributes) over the package;
    a package's names include its submodules."""
    modules: dict[str, set[str]] = {}
    classes: dict[str, set[str]] = {}
    for path in (REPO / PACKAGE).rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        short = path.parent.name if path.name == "__init__.py" else path.stem
        names = modules.setdefault(short, set())
        names.update(_top_level_names(tree))
        if path.name == "__init__.py":
            names.update(p.stem for p in path.parent.glob("*.py"))
            names.update(p.name for p in path.parent.iterdir() if p.is_dir())
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                classes.setdefault(node.name, set()).update(_class_attributes(node))
    return modules, classes


def unknown_qualified_names(text: str) -> list[str]:
    """`module.name` of a package module, or `Class.attribute` of a package class, that does not
    exist; other dotted words (`threading.Event`, `stats.claimed`) are not checked."""
    modules, classes = package_index()
    unknown: set[str] = set()
    for owner, name in QUALIFIED.findall(text):
        if name in ("py", "lua", "md"):
            continue
        known = modules.get(owner) if owner[0].islower() else classes.get(owner)
        if known is not None and name not in known:
            unknown.add(f"{owner}.{name}")
    return sorted(unknown)


def test_architecture_names_only_modules_that_exist() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    missing = [p for p in sorted(set(PACKAGE_PATH.findall(text))) if not any(REPO.glob(p.rstrip("/")))]
    missing += [m for m in sorted(set(DOTTED.findall(text))) if not dotted_name_exists(m)]
    missing += [f for f in sorted(set(CODE_FILE.findall(text))) if not code_file_exists(f)]
    missing += unknown_qualified_names(text)
    assert missing == [], f"docs/ARCHITECTURE.md names what does not exist: {missing}"


def test_architecture_is_linked_from_the_docs() -> None:
    linking = [p.name for p in markdown_files() if any(r == ARCHITECTURE for _, r, _ in relative_links(p))]
    assert linking, "no doc links to docs/ARCHITECTURE.md"

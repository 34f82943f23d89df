"""The docs are part of the product: every command and option they name exists, every relative link resolves, the
design page's layout names every module, and the modules import one another without circles."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import typer.main

from openhermes.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SRC = ROOT / "src" / "openhermes"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", page.read_text(encoding="utf-8"), re.M)}


def _invocations(page: Path) -> list[str]:
    """`openhermes ...` command lines: in code blocks (one a line) and in inline code."""
    text = page.read_text(encoding="utf-8")
    found = []
    for block in re.findall(r"```(?:bash)?\n(.*?)```", text, re.S):
        found += [line.split("#")[0].strip() for line in block.splitlines() if line.strip().startswith("openhermes ")]
    outside = re.sub(r"```.*?```", "", text, flags=re.S)
    found += [m.strip() for m in re.findall(r"`(openhermes [^`]+)`", outside)]
    return found


def test_every_page_is_there():
    names = {p.name for p in PAGES}
    assert {"data.md", "training.md", "chat.md", "server.md", "evaluation.md", "export.md", "design.md",
            "benchmarks.md"} <= names
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 150
    for page in PAGES:  # current facts only: a figure's history belongs in git
        history = re.findall(r"\b(?:sessions?|earlier|previous(?:ly)?)\b", page.read_text(encoding="utf-8"), re.I)
        assert not history, f"{page.name} speaks of {history}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: link to {target} does not resolve"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{page.name}: {target}: no such heading in {dest.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_and_option_named_exists(page):
    root = typer.main.get_command(app)
    for line in _invocations(page):
        first, *rest = line.split()[1:]
        for name in first.split("/"):  # "openhermes chat/serve/generate FOLDER" names three
            words, cmd = [name, *rest], root
            while words and hasattr(cmd, "commands") and words[0] in cmd.commands:
                cmd = cmd.commands[words.pop(0)]
            assert cmd is not root or name.startswith("--"), f"{page.name}: {line!r}: no such openhermes command"
            known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
            for word in words:
                option = word.split("=")[0]
                if option.startswith("--"):
                    assert option in known, f"{page.name}: {line!r}: `{cmd.name or 'openhermes'}` has no {option}"


def test_design_layout_names_every_module():
    layout = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    missing = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
               if p.name != "__init__.py" and not re.search(rf"\b{re.escape(p.stem)}\b", layout)]
    assert not missing, f"docs/design.md's layout does not name {missing}"


def _module_imports() -> dict[str, set[str]]:
    """Each openhermes module's module-level imports of other openhermes modules (imports inside functions are
    deferred, so they cannot make a circle at import time)."""
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        deps = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("openhermes"):
                deps.add(node.module)
                deps |= {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("openhermes")}
        graph[name] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def test_no_import_circles():
    graph = _module_imports()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1 and not m.startswith(d + "."):  # a package's own __init__ importing it is no circle
                raise AssertionError("import circle: " + " -> ".join(path[path.index(d):] + [m, d]))
            if d not in state:
                visit(d, path + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])

"""Dependencies point one way: boards run firmware apps and know nothing of the lab, the
firmware knows no board, the signing service knows neither nor the lab, and no package's
modules import each other in a circle.

Read from the source (every import statement, those inside functions too), so an
import that would only happen at run time is caught as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: folder -> the package it is (pyproject's package-dir)
PACKAGES = {"pledgeforge": "pledgeforge", "hsm": "pledgeforge.hsm", "firmware": "pledgeforge.firmware",
            "boards": "pledgeforge.boards", "registrar": "pledgeforge.registrar",
            "fastpath": "pledgeforge.fastpath", "keyserver": "pledgeforge.keyserver"}


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The project modules `name` imports (a package import counts as its __init__)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for candidate in candidates:
            # A module's own packages are imported before it anyway: no edge of its making.
            if candidate in MODULES and candidate != name and not name.startswith(candidate + "."):
                targets.add(candidate)
    return targets


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycle(nodes: set[str]) -> list[str] | None:
    """A cycle among `nodes` (following only edges inside them), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node] & nodes):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(nodes):
        if node not in state and (found := visit(node)):
            return found
    return None


def _in(package: str) -> set[str]:
    return {m for m in MODULES if m == package or m.startswith(package + ".")}


@pytest.mark.parametrize("package", ["pledgeforge.boards", "pledgeforge.lab", "pledgeforge.firmware",
                                     "pledgeforge.keyserver"])
def test_no_package_imports_itself_in_a_circle(package):
    assert _cycle(_in(package)) is None


@pytest.mark.parametrize("package, forbidden", [
    ("pledgeforge.boards", ["pledgeforge.lab", "pledgeforge.registrar", "pledgeforge.commands",
                            "pledgeforge.cli", "pledgeforge.lab_pledge", "pledgeforge.demo"]),
    ("pledgeforge.firmware", ["pledgeforge.boards", "pledgeforge.lab", "pledgeforge.registrar",
                              "pledgeforge.commands"]),
    ("pledgeforge.hsm", ["pledgeforge.firmware", "pledgeforge.boards", "pledgeforge.lab",
                         "pledgeforge.registrar", "pledgeforge.commands", "pledgeforge.keyserver"]),
    ("pledgeforge.registrar", ["pledgeforge.firmware", "pledgeforge.boards", "pledgeforge.lab",
                               "pledgeforge.commands", "pledgeforge.keyserver"]),
    # The signing service serves keys to the registrar side; the lab and the CLI start it.
    ("pledgeforge.keyserver", ["pledgeforge.firmware", "pledgeforge.boards", "pledgeforge.lab",
                               "pledgeforge.commands", "pledgeforge.cli"]),
])
def test_dependencies_point_one_way(package, forbidden):
    wrong = sorted(f"{module} imports {target}" for module in _in(package) for target in GRAPH[module]
                   if any(target == f or target.startswith(f + ".") for f in forbidden))
    assert wrong == []


def test_the_check_sees_imports_inside_functions_and_relative_ones():
    # The board command line assembles boards inside a function; the lab imports boards.
    assert "pledgeforge.lab.manufacture" in GRAPH["pledgeforge.commands.board"]
    assert "pledgeforge.boards.provisioning" in GRAPH["pledgeforge.lab.manufacture"]
    assert "pledgeforge.boards.firmware_apps" in GRAPH["pledgeforge.boards.pledge_app"]
    assert _cycle({"pledgeforge.hsm.keyuri", "pledgeforge.hsm.keystore"}) is not None

"""Dependencies point one way: boards run firmware apps and know nothing of the lab, the
firmware knows no board, the signing service knows neither nor the lab, and no package's
modules import each other in a circle.

Read from the source (every import statement, those inside functions too), so an
import that would only happen at run time is caught as well.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: folder -> the package it is (pyproject's package-dir)
PACKAGES = {"pledgeforge": "pledgeforge", "hsm": "pledgeforge.hsm", "firmware": "pledgeforge.firmware",
            "boards": "pledgeforge.boards", "registrar": "pledgeforge.registrar",
            "fastpath": "pledgeforge.fastpath", "keyserver": "pledgeforge.keyserver",
            "station": "pledgeforge.station"}


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


@functools.cache
def graph() -> dict[str, set[str]]:
    """Every project module's imports of project modules. Built when a test first asks (a
    parse of the whole tree), not when the file is collected, which every test worker does."""
    return {name: _imports(name, path) for name, path in MODULES.items()}


def _cycle(nodes: set[str]) -> list[str] | None:
    """A cycle among `nodes` (following only edges inside them), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph()[node] & nodes):
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
                                     "pledgeforge.keyserver", "pledgeforge.station"])
def test_no_package_imports_itself_in_a_circle(package):
    assert _cycle(_in(package)) is None


@pytest.mark.parametrize("package, forbidden", [
    ("pledgeforge.boards", ["pledgeforge.lab", "pledgeforge.registrar", "pledgeforge.commands",
                            "pledgeforge.cli", "pledgeforge.lab_pledge", "pledgeforge.demo",
                            "pledgeforge.station"]),
    # The station reaches boards only through their consoles, and serves no lab in particular.
    ("pledgeforge.station", ["pledgeforge.boards", "pledgeforge.lab", "pledgeforge.commands",
                             "pledgeforge.cli", "pledgeforge.demo", "pledgeforge.bench"]),
    ("pledgeforge.firmware", ["pledgeforge.boards", "pledgeforge.lab", "pledgeforge.registrar",
                              "pledgeforge.commands", "pledgeforge.station"]),
    ("pledgeforge.hsm", ["pledgeforge.firmware", "pledgeforge.boards", "pledgeforge.lab",
                         "pledgeforge.registrar", "pledgeforge.commands", "pledgeforge.keyserver",
                         "pledgeforge.station"]),
    ("pledgeforge.registrar", ["pledgeforge.firmware", "pledgeforge.boards", "pledgeforge.lab",
                               "pledgeforge.commands", "pledgeforge.keyserver", "pledgeforge.station"]),
    # The signing service serves keys to the registrar side; the lab and the CLI start it.
    ("pledgeforge.keyserver", ["pledgeforge.firmware", "pledgeforge.boards", "pledgeforge.lab",
                               "pledgeforge.commands", "pledgeforge.cli", "pledgeforge.station"]),
])
def test_dependencies_point_one_way(package, forbidden):
    wrong = sorted(f"{module} imports {target}" for module in _in(package) for target in graph()[module]
                   if any(target == f or target.startswith(f + ".") for f in forbidden))
    assert wrong == []


def test_the_check_sees_imports_inside_functions_and_relative_ones():
    # The board command line assembles boards inside a function; the lab runs the station.
    assert "pledgeforge.boards.assembly" in graph()["pledgeforge.commands.board"]
    assert "pledgeforge.station.provisioner" in graph()["pledgeforge.lab.manufacture"]
    assert "pledgeforge.boards.firmware_apps" in graph()["pledgeforge.boards.pledge_app"]
    assert _cycle({"pledgeforge.hsm.keyuri", "pledgeforge.hsm.keystore"}) is not None

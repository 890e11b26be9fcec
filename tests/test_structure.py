"""The package's import graph: no circles, and the bottom modules stay at the bottom.

Every import counts, the ones inside functions too: a lazy import is still a dependency, and
two modules that need each other (even lazily) are one module in two files.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dbxml_magics"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom, known: set[str]) -> list[str]:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    target = ".".join(base + ([node.module] if node.module else []))
    # `from .pkg import sub` names a submodule; `from .mod import name` names the module.
    subs = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known]
    return subs or [target]


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    targets = _resolve(name, path.name == "__init__.py", node, known)
                elif node.module and node.module.startswith("dbxml_magics"):
                    targets = [node.module]
                else:
                    continue
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("dbxml_magics")]
            else:
                continue
            graph[name].update(t for t in targets if t in known and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_package_has_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_cycle_finder_sees_a_circle():
    # The check above must be able to fail: a lazy import back from the bottom is a circle.
    graph = import_graph()
    graph["dbxml_magics.targets"].add("dbxml_magics.link")
    assert find_cycle(graph) is not None


@pytest.mark.parametrize(
    "module, allowed",
    [
        ("dbxml_magics.errors", set()),
        ("dbxml_magics.masking", set()),
        ("dbxml_magics.targets", {"dbxml_magics.masking"}),
        ("dbxml_magics.stores", set()),
        ("dbxml_magics.userns", {"dbxml_magics.errors"}),
        ("dbxml_magics.experiments", {"dbxml_magics.errors", "dbxml_magics.masking", "dbxml_magics.targets"}),
    ],
)
def test_bottom_modules_import_only_the_bottom(module, allowed):
    assert import_graph()[module] <= allowed


def test_experiment_naming_lives_in_one_module():
    """The AML/Databricks name rules are applied only through experiments.py."""
    offenders = [
        name
        for name, path in _modules().items()
        if name != "dbxml_magics.experiments"
        and any(word in path.read_text() for word in ("aml_experiment_name(", "databricks_experiment_name("))
    ]
    assert offenders == []


def test_architecture_lists_modules_bottom_up():
    """ARCHITECTURE.md's module list is the direction of imports: each module imports only
    modules listed above it (a package's files in their own sub-list, its __init__ last), and
    every module of the package, and of its subpackages, is listed."""
    import re

    text = (PACKAGE.parent / "ARCHITECTURE.md").read_text()
    block = text[text.index("## Modules"):]
    block = block[block.index("```") + 3:]
    block = block[: block.index("```")]
    order, package = [], None
    for line in block.splitlines():
        top = re.match(r"^  (\S+)", line)
        sub = re.match(r"^    (\S+)\.py\b", line)
        if top and not line.startswith("    "):
            name = top.group(1)
            package = name[:-1] if name.endswith("/") else None
            if name.endswith(".py"):
                order.append("dbxml_magics" if name == "__init__.py" else "dbxml_magics." + name[:-3])
        elif sub and package:
            stem = sub.group(1)
            order.append(f"dbxml_magics.{package}" + ("" if stem == "__init__" else f".{stem}"))
    position = {module: i for i, module in enumerate(order)}
    graph = import_graph()
    assert [m for m in graph if m not in position] == []
    upward = [(module, dep) for module in order for dep in graph.get(module, ()) if position[dep] > position[module]]
    assert upward == []

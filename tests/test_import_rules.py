"""The import rule of the design: dependencies point one way, and no module imports one that imports it back.

Parsed from the source: every import statement, also inside functions and under `if TYPE_CHECKING:`, so
neither a lazy import nor a type-only one hides a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("rig", "protocols", "hardware", "online")
LINK_LEAF = {"online.wire", "online.transport"}
TASK_MODULE = "protocols.directional_licking"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Project modules named by the import statements of one module."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target
            yield from (f"{target}.{alias.name}" for alias in node.names)
        stack.extend(ast.iter_child_nodes(node))


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        named = _imports(tree, module, path.name == "__init__.py")
        graph[module] = {name for name in named if name in files and name != module}
    return graph


GRAPH = _graph()


def _package(module: str) -> str:
    return module.split(".")[0]


def _violations(rule: str) -> list[str]:
    found = []
    for module, targets in sorted(GRAPH.items()):
        for target in sorted(targets):
            if _breaks(rule, module, target):
                found.append(f"{module} imports {target}")
    return found


def _breaks(rule: str, module: str, target: str) -> bool:
    source, dest = _package(module), _package(target)
    if source == dest and rule != "link leaf":
        return False
    if rule == "link leaf":
        return module in LINK_LEAF and target not in LINK_LEAF
    if rule == "protocols":
        return source == "protocols" and target not in LINK_LEAF
    if rule == "hardware":
        return source == "hardware" and target not in LINK_LEAF
    if rule == "online":
        return source == "online" and (dest == "rig" or target == TASK_MODULE)
    if rule == "nothing imports rig":
        return dest == "rig"
    raise ValueError(rule)


@pytest.mark.parametrize("rule", ["link leaf", "protocols", "hardware", "online", "nothing imports rig"])
def test_dependencies_point_one_way(rule: str) -> None:
    """rig -> protocols, hardware, online; the link leaf (online/wire.py, online/transport.py) imports
    nothing else of the project and everyone may use it; apart from it, protocols and hardware import none
    of the others; online imports no rig and not the task (it learns epochs from the rig's events)."""
    assert _violations(rule) == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
    return components


def _without_package_reexports(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's __init__ re-exporting its own modules is not a circle with them."""
    return {module: {t for t in targets if not (t.startswith(module + ".") or module.startswith(t + "."))}
            for module, targets in graph.items()}


def test_no_import_circles() -> None:
    assert _cycles(_without_package_reexports(GRAPH)) == []


def test_the_checks_see_a_violation_and_a_circle() -> None:
    """The rule and the circle finder find what they must (so an empty list above means something)."""
    assert _breaks("hardware", "hardware.bpod.client", "protocols.outcome")
    assert _breaks("protocols", "protocols.outcome", "hardware.bpod.codec")
    assert not _breaks("protocols", "protocols.contexts", "online.wire")
    assert not _breaks("hardware", "hardware.sim.scope", "online.transport")
    assert _breaks("link leaf", "online.wire", "online.store")
    assert _breaks("online", "online.process", "rig.settings")
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    assert "protocols.contexts" in GRAPH["protocols.outcome"]  # a plain import is seen
    assert "online.settings" in GRAPH["online.config"]  # and one of a package's own module


SIM_TRUTH_NAMES = ("sim-truth", "sim-patterns", "subject-state")
"""The simulator's ground truth and its subject's state (hardware/sim/subject_file.py): for tests only."""
SIM_TRUTH_MODULE = "hardware.sim.subject_file"
SIM_TRUTH_WRITER = "rig.simulated_rig"


def _names_truth(path: Path) -> bool:
    text = path.read_text(encoding="utf-8")
    return any(name in text for name in SIM_TRUTH_NAMES)


def test_the_product_never_opens_the_simulators_ground_truth() -> None:
    """online/ never names the truth files (it cannot import hardware, so it would have to spell them),
    and in rig/ only the simulated rig, which writes them, uses the module that names them."""
    assert [p for p in (REPO / "online").rglob("*.py") if _names_truth(p)] == []
    assert [p for p in (REPO / "rig").rglob("*.py") if _names_truth(p)] == []
    users = sorted(m for m, targets in GRAPH.items() if SIM_TRUTH_MODULE in targets and m.startswith("rig"))
    assert users == [SIM_TRUTH_WRITER]
    assert _names_truth(REPO / "hardware" / "sim" / "subject_file.py")  # the check sees the names

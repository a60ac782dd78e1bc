"""The import graph of the code: layers import one way, and no module imports itself back.

Layers, bottom to top (STYLE.md): ``redflag`` (settings, errors, the API base) < ``events_app`` <
``tokens_app`` < ``agents_app``; ``agent_client`` stands beside them all and imports none of them.
Every ``import`` statement counts, at module level or inside a function (a function-level import
hides a cycle, it does not remove it); only ``if TYPE_CHECKING:`` blocks are left out, since they
never run. ``python -m tests.test_architecture`` prints the graph between packages.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agent_client", "redflag", "events_app", "tokens_app", "agents_app", "advisories_app", "policies_app",
            "notifications_app", "reports_app", "accounts_app")
SERVER_APPS = ("events_app", "tokens_app", "agents_app", "advisories_app", "policies_app", "notifications_app",
               "reports_app", "accounts_app")
# What each package may import of the others. redflag's entry points (asgi.py, wsgi.py) are the
# composition root Django loads by dotted path: nothing imports them, so they may start what they serve.
ALLOWED = {
    "agent_client": set(),
    "redflag": set(),
    "events_app": {"redflag"},
    "tokens_app": {"redflag", "events_app", "agent_client"},
    "agents_app": {"redflag", "events_app", "tokens_app", "agent_client"},
    # Vulnerability data reads the fleet's updates; the fleet never imports it (its admin extends the fleet's).
    "advisories_app": {"redflag", "events_app", "agents_app"},
    # Unattended patching acts on the fleet through its write paths; it may weigh vulnerability data.
    "policies_app": {"redflag", "events_app", "tokens_app", "agents_app", "advisories_app"},
    # Notifications watch the events (and the fleet's groups); reports build on all of the above.
    "notifications_app": {"redflag", "events_app", "agents_app", "advisories_app", "policies_app"},
    "reports_app": {"redflag", "events_app", "agents_app", "advisories_app", "policies_app", "notifications_app"},
    # People and access sit on top: they scope every other app's pages (through redflag's access hook).
    "accounts_app": {"redflag", "events_app", "tokens_app", "agents_app", "advisories_app", "policies_app",
                     "notifications_app", "reports_app"},
}
ENTRY_POINTS = {"redflag.asgi", "redflag.wsgi"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.parts:
                modules[module_name(path)] = path
    return modules


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ours that ``name`` imports (a submodule when the imported name is one)."""
    found: set[str] = set()
    is_package = path.name == "__init__.py"

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return {target for target in found if target.split(".")[0] in PACKAGES and target != name}


def import_graph() -> dict[str, set[str]]:
    modules = source_modules()
    return {name: {target for target in imports_of(name, path, modules) if target in modules}
            for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    between: dict[str, set[str]] = defaultdict(set)
    for source, targets in graph.items():
        for target in targets:
            if source.split(".")[0] != target.split(".")[0]:
                between[source.split(".")[0]].add(target.split(".")[0])
    return between


def backward_imports(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for source, targets in sorted(graph.items()):
        if source in ENTRY_POINTS:
            continue
        package = source.split(".")[0]
        for target in sorted(targets):
            other = target.split(".")[0]
            if other != package and other not in ALLOWED[package]:
                wrong.append(f"{source} imports {target}")
    return wrong


# --- the tests ---------------------------------------------------------------------------------------


def test_the_graph_sees_every_kind_of_import():
    """The walker itself: relative, function-level and submodule imports count; TYPE_CHECKING does not."""
    modules = source_modules()
    graph = import_graph()
    assert len(graph) > 100
    assert "agents_app.services.commands" in graph["agents_app.services.results"]
    assert "agents_app.admin.agents" in graph["agents_app.admin"]  # `from agents_app.admin import agents`
    # events_app.services names the Agent model for type checkers only.
    assert not any(target.startswith("agents_app") for target in graph["events_app.services"])
    source = "def f():\n    from agents_app.models import Agent\nif TYPE_CHECKING:\n    import tokens_app.models\n"
    probe = ROOT / "events_app" / "_probe_for_the_import_test.py"
    try:
        probe.write_text(source)
        assert imports_of("events_app._probe_for_the_import_test", probe, modules) == {"agents_app.models"}
    finally:
        probe.unlink()


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_imports_flow_one_way():
    assert backward_imports(import_graph()) == []


def test_the_agent_imports_nothing_of_the_server_nor_django():
    modules = source_modules()
    for name, path in modules.items():
        if name.split(".")[0] != "agent_client":
            continue
        tree = ast.parse(path.read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not {module for module in imported
                    if module.split(".")[0] in ("django", "rest_framework", "django_q", *SERVER_APPS, "redflag")}, name


def main() -> None:
    graph = import_graph()
    for package, targets in sorted(package_graph(graph).items()):
        print(f"{package} -> {', '.join(sorted(targets))}")
    for component in cycles(graph):
        print("cycle:", " <-> ".join(component))
    for line in backward_imports(graph):
        print("backward:", line)


if __name__ == "__main__":
    main()

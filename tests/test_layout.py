"""The package's import structure, read statically: no import cycle among hf_l0 modules (function-local imports
count: a local import that dodges a cycle at import time still ties two concerns together), no module importing the
package root, the version written once."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import hf_l0

ROOT = Path(hf_l0.__file__).parent


def package_modules() -> dict[str, Path]:
    """Every module of hf_l0 (``hf_l0.hub`` for ``hf_l0/hub/__init__.py``) -> its file."""
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports(source: str, module: str, is_package: bool, known: set[str], module_level: bool) -> list[tuple[int, str]]:
    """``(line, imported hf_l0 module)`` of ``source``: ``from x import y`` names the submodule ``x.y`` when there is
    one, else ``x``. With ``module_level`` only the imports that run when the module is imported (function bodies,
    the accepted place to break a cycle, and ``if TYPE_CHECKING:`` blocks, which never run, are skipped)."""
    package = module if is_package else module.rpartition(".")[0]
    found = []

    def visit(node: ast.AST) -> None:
        if module_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if module_level and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "hf_l0")
        elif isinstance(node, ast.ImportFrom):
            base = (
                importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                if node.level
                else node.module
            )
            if base.split(".")[0] == "hf_l0":
                found.extend(
                    (node.lineno, f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
                    for alias in node.names
                )
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def import_graph(module_level: bool = False) -> dict[str, set[str]]:
    """module -> the hf_l0 modules its imports execute (with ``module_level``, only those that run at import time):
    the imported module and the packages between it and the root (their ``__init__`` runs first), except the
    importer's own packages, already being imported."""
    modules = package_modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        own = {module.rsplit(".", i)[0] for i in range(module.count(".") + 1)}
        edges = set()
        for _, target in imports(path.read_text(), module, path.name == "__init__.py", set(modules), module_level):
            parts = target.split(".")
            edges |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)} - own
        graph[module] = edges & set(modules)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_cycles_through_packages():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    graph = {
        "hf_l0.pruning.prune": {"hf_l0.hub.own_methods"},
        "hf_l0.hub.own_methods": {"hf_l0.hub", "hf_l0.hub.save"},
        "hf_l0.hub": {"hf_l0.hub.load"},
        "hf_l0.hub.load": {"hf_l0.pruning.prune"},
        "hf_l0.hub.save": set(),
    }
    assert find_cycle(graph) == [
        "hf_l0.hub",
        "hf_l0.hub.load",
        "hf_l0.pruning.prune",
        "hf_l0.hub.own_methods",
        "hf_l0.hub",
    ]


def test_no_import_cycle_among_hf_l0_modules_even_through_function_local_imports():
    graph = import_graph()
    assert "hf_l0.training.trainer" in graph["hf_l0"]  # a function-local import (the root's lazy __getattr__) counts
    assert {"hf_l0.hub.save", "hf_l0.hub.card"} <= graph["hf_l0.hub"]  # the package's own imports are seen
    assert "hf_l0.hub.export" in graph["hf_l0.hub.card"] and "hf_l0.hub" in graph["hf_l0.demo.gguf"]
    assert find_cycle(graph) is None


def test_no_module_imports_the_package_root():
    """Inside hf_l0 nothing reads names from ``hf_l0/__init__.py`` (it is half-initialised while its submodules load):
    no ``import hf_l0``, no ``from hf_l0 import name`` / ``from .. import name`` of a non-module name."""
    modules = package_modules()
    offenders = []
    for module, path in modules.items():
        if module == "hf_l0":
            continue
        tree = ast.parse(path.read_text())
        found = imports(path.read_text(), module, path.name == "__init__.py", set(modules), False)
        offenders += [f"{module} line {line}" for line, target in found if target == "hf_l0"]
        offenders += [
            f"{module} line {node.lineno}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Import) and any(alias.name.split(".")[0] == "hf_l0" for alias in node.names)
        ]
    assert offenders == []


def test_the_version_is_written_once():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
        import tomli as tomllib

    from hf_l0 import version

    project = tomllib.loads((ROOT.parent / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "hf_l0.version.__version__"}
    assert hf_l0.__version__ is version.__version__


def test_hub_package_keeps_the_public_names_of_the_hub_module():
    names = (
        "AUTO_CLASSES",
        "CARD_FILE",
        "EXPORT_FORMAT",
        "EXPORT_KEY",
        "HEATMAP_FILE",
        "MODELING_FILE",
        "PIPELINE_TAGS",
        "REMOTE_CODE_PREFIX",
        "CompactModelUpload",
        "ExportPlan",
        "auto_class_name",
        "export_plan",
        "flat_module_name",
        "flatten_imports",
        "from_pretrained",
        "load_config",
        "load_weights_strictly",
        "module_source",
        "push_to_hub",
        "remote_code_files",
        "save_pretrained",
        "tied_groups",
    )
    assert [name for name in names if not hasattr(hf_l0.hub, name)] == []
    assert set(hf_l0.hub.__all__) >= set(names)

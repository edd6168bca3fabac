"""The floor plan: layers that import only downwards, no cycles, and light modules kept light."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Lowest first: a module may import its own layer and those before it, never one after.
LAYERS = ["config", "run", "data", "model", "train", "evaluate", "report", "batch", "front"]
FRONT_DOORS = {"cli", "predict", "widgets", "bench", "__main__"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in (ROOT / "bcnb").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        found[name] = path
    return found


def _imports(path: Path, modules) -> set[str]:
    """The bcnb modules ``path`` imports, anywhere in it (lazy imports count: they run too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bcnb"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in modules else node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("bcnb")}
    return found


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return 0  # the package itself, imported before any of its modules: it holds config only
    name = parts[1]
    return LAYERS.index("front" if name in FRONT_DOORS else name)


def test_each_module_imports_only_its_layer_and_those_below():
    modules = _modules()
    upward = [
        f"{module} -> {target}"
        for module, path in modules.items()
        for target in _imports(path, modules)
        if target in modules and _layer(target) > _layer(module)
    ]
    assert upward == []


def test_the_package_itself_imports_config_only():
    """Every ``import bcnb.anything`` runs bcnb/__init__.py first: it must stay that light."""
    modules = _modules()
    assert _imports(modules["bcnb"], modules) == {"bcnb.config"}


def test_there_is_no_import_cycle():
    modules = _modules()
    graph = {module: _imports(path, modules) & set(modules) for module, path in modules.items()}
    finished, on_path = set(), []

    def visit(module):
        if module in on_path:
            pytest.fail("import cycle: " + " -> ".join(on_path[on_path.index(module) :] + [module]))
        if module in finished:
            return
        on_path.append(module)
        for target in graph[module]:
            visit(target)
        on_path.pop()
        finished.add(module)

    for module in graph:
        visit(module)


def test_the_top_level_holds_config_and_the_front_doors_only():
    top = {path.stem for path in (ROOT / "bcnb").glob("*.py")}
    assert top <= {"__init__", "config"} | FRONT_DOORS and len(top) <= 8
    folders = {
        path.name for path in (ROOT / "bcnb").iterdir() if path.is_dir() and path.name != "__pycache__"
    }
    assert folders == set(LAYERS) - {"config", "front"}


@pytest.mark.parametrize(
    "module",
    ["bcnb.config", "bcnb.cli", "bcnb.run.record", "bcnb.run.artifacts", "bcnb.report.run_report",
     "bcnb.report.model_card", "bcnb.report.caveats", "bcnb.batch.sweep", "bcnb.predict"],
)  # fmt: skip
def test_light_modules_start_no_tensorflow(module):
    """The command line checks its arguments, and the reports read a run, in a second, not ten."""
    script = f"import sys, {module}; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["False", "False"], result.stderr[-1000:]

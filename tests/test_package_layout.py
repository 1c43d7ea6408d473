"""The package is a stack of stages (see ``detconvert/__init__.py``): a module may import its own stage and
the stages below it, never one above, lazily (inside a function) or not. The file tree then says where a
change goes, and the CLI can answer cheap commands without importing the heavy stages."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "detconvert"

# Low to high; a name is a top-level module or sub-package of detconvert.
STAGES = [
    ("errors", "spec", "structures", "_paths"),
    ("io",),
    ("config",),
    ("inspect",),
    ("zoo",),
    ("ops",),
    ("modeling",),
    ("data",),
    ("parallel",),
    ("inference",),
    ("evaluation",),
    ("export",),
    ("train",),
    ("doctor",),
    ("demo", "commands", "cli", "__main__"),
]
RANK = {name: rank for rank, names in enumerate(STAGES) for name in names}
# The only top-level modules; everything else lives in a stage folder.
TOP_LEVEL_MODULES = {"__init__", "__main__", "cli", "errors", "spec", "structures", "demo", "_paths"}


def _stage_of_module(dotted: str) -> str:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "detconvert":
                for alias in node.names:
                    yield node.lineno, f"detconvert.{alias.name}"
            elif node.module.startswith("detconvert."):
                yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("detconvert."):
                    yield node.lineno, alias.name


def test_top_level_holds_only_the_entry_modules():
    stray = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in TOP_LEVEL_MODULES)
    assert stray == [], f"modules outside a stage folder: {stray}"


def test_every_folder_has_a_stage():
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert [f for f in folders if f not in RANK] == []


def test_no_import_runs_from_a_lower_stage_to_a_higher_one():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        own = relative.parts[1] if len(relative.parts) > 1 else ""
        if own == "__init__":  # the package root re-exports the public API lazily
            continue
        for lineno, module in _imports(path):
            target = _stage_of_module(module)
            if target in ("__version__", ""):
                continue
            if RANK[target] > RANK[own]:
                violations.append(f"{relative}:{lineno} ({own}) imports {module} ({target})")
    assert violations == [], "\n".join(violations)


@pytest.mark.parametrize("module", ["detconvert.inspect", "detconvert.config", "detconvert.io.weights"])
def test_layout_test_sees_lazy_imports(module):
    # guard against an _imports() that silently finds nothing
    package_dir = PACKAGE / module.split(".")[1]
    found = [m for p in package_dir.rglob("*.py") for _, m in _imports(p)]
    assert found, f"no detconvert imports found under {package_dir}"

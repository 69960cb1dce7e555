"""Imports point one way; no import cycle (lazy imports included); library code has no side effects.

Core modules (``medlsam/*.py``) rank among themselves:
errors/organs -> volume -> io -> ini/weights -> config -> boxes/png/records/download/dicom_seg
-> preprocess/checkpoint/devices/export_cache/boxplot -> engine -> (stages) -> api.
Above the core, stage packages: localization and segment (beside each other) and evaluation
(reads files only: never a model, never torch) -> train -> pipeline -> bench -> cli.
A module may import modules of a lower rank, or of its own package; a package's
``__init__`` counts as part of the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medlsam"

#: core modules, by name
CORE = {
    "errors": 0,
    "organs": 0,
    "volume": 1,
    "io": 2,
    "ini": 3,
    "weights": 3,
    "config": 4,
    "boxes": 5,
    "records": 5,
    "download": 5,
    "dicom_seg": 5,
    "preprocess": 6,
    "checkpoint": 6,
    "devices": 6,
    "export_cache": 6,
    "engine": 7,
    "api": 19,  # the public functions: above every stage, below the commands
}

#: subpackages (every module inside shares the rank)
PACKAGES = {
    "figures": 6,
    "synth": 7,
    "localization": 10,
    "segment": 10,
    "evaluation": 10,
    "train": 12,
    "pipeline": 15,
    "bench": 18,
    "cli": 20,
}

RANKS = {**CORE, **PACKAGES}

#: core modules and packages that never import torch (names a user types are checked, and
#: predictions are scored, without loading a model)
TORCH_FREE = {
    "errors",
    "organs",
    "volume",
    "io",
    "ini",
    "weights",
    "config",
    "boxes",
    "download",
    "dicom_seg",
    "preprocess",
    "evaluation",
    "figures",
}


def _group(module: str) -> str:
    """The rank key of ``medlsam.segment.sam`` (``segment``) or ``medlsam.config`` (``config``)."""
    parts = module.split(".")
    if len(parts) < 2:
        raise AssertionError(f"{module}: not a medlsam module")
    name = parts[1]
    if name in RANKS:
        return name
    raise AssertionError(f"medlsam.{name} has no rank in tests/test_layering.py: add it")


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        yield ".".join(parts), path


MODULES = dict(_modules())


def _imports(path: Path) -> set[str]:
    """Every module name imported anywhere in the file (top level, in functions, in ``if``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = {f"{node.module}.{alias.name}" for alias in node.names}
            found |= names
            if not names <= MODULES.keys():  # `from pkg import submodule` needs no pkg edge
                found.add(node.module)
    return found


def _medlsam_imports(path: Path) -> set[str]:
    """The medlsam modules (not names in them) that a file imports."""
    return {t for t in _imports(path) if t in MODULES and t != "medlsam"}


@pytest.mark.parametrize("module,path", list(MODULES.items()), ids=lambda v: str(v))
def test_imports_point_one_way(module, path):
    if module == "medlsam":
        return
    mine = _group(module)
    for target in _medlsam_imports(path):
        theirs = _group(target)
        if theirs == mine:
            continue
        assert RANKS[theirs] < RANKS[mine], (
            f"{module} (rank {RANKS[mine]}) imports {target} (rank {RANKS[theirs]})"
        )
    if mine in TORCH_FREE:
        assert not any(t == "torch" or t.startswith("torch.") for t in _imports(path)), module


def test_every_subpackage_and_core_module_has_a_rank():
    for module in MODULES:
        if module != "medlsam":
            _group(module)


def test_no_import_cycles():
    """Depth-first search over every medlsam import, lazy (function-level) imports included.

    A package's ``__init__`` importing its own submodules is not a cycle by itself; it becomes
    one only if such a submodule imports the package back while the ``__init__`` runs, which
    the edge from the submodule to the package then closes.
    """
    graph = {m: sorted(_medlsam_imports(p) - {m}) for m, p in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module)


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    """The check above is not vacuous: two modules importing each other lazily are caught."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("def f():\n    from medlsam.b import g\n")
    b.write_text("from medlsam.a import f\n")
    monkeypatch.setitem(MODULES, "medlsam.a", a)
    monkeypatch.setitem(MODULES, "medlsam.b", b)
    with pytest.raises(AssertionError, match="import cycle"):
        test_no_import_cycles()


@pytest.mark.parametrize("module,path", list(MODULES.items()), ids=lambda v: str(v))
def test_no_print_or_global_seeding_in_library_code(module, path):
    if module.startswith("medlsam.cli") or path.name == "__main__.py":
        return
    tree = ast.parse(path.read_text())
    # seeding inside `with torch.random.fork_rng(...)` leaves the caller's state untouched
    forked = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.With)
        and any("fork_rng" in ast.unparse(item.context_expr) for item in node.items)
        for inner in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in forked:
            continue
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in ("print", "input", "exit"), f"{module}: {node.func.id}()"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = node.func.attr
            owner = ast.unparse(node.func.value)
            assert not (name == "manual_seed" and owner == "torch"), f"{module}: torch.manual_seed"
            assert not (name == "seed" and owner in ("np.random", "random")), (
                f"{module}: global seed"
            )


#: the longest function body the package allows (signature and docstring included)
MAX_FUNCTION_LINES = 80


@pytest.mark.parametrize("module,path", list(MODULES.items()), ids=lambda v: str(v))
def test_no_function_over_80_lines(module, path):
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{module}: split by responsibility: {', '.join(long)}"


def test_only_the_commands_import_the_benchmark():
    """``medlsam.bench`` sits above the pipeline: nothing in the library imports it (the
    commands may)."""
    checked = 0
    for module, path in MODULES.items():
        if module.split(".")[:2] in (["medlsam", "bench"], ["medlsam", "cli"]):
            continue
        found = [t for t in _medlsam_imports(path) if t.split(".")[:2] == ["medlsam", "bench"]]
        assert not found, f"{module} imports {found}"
        checked += 1
    assert checked > 50  # the library's modules, not only the benchmark's


def _patches(path: Path) -> list[str]:
    """Monkeypatching and import-path edits in a file: ``sys.path`` used at all; a value
    assigned to an attribute of an imported module (``module.name = ...``), to ``forward`` or
    to ``__dict__``; ``setattr`` on an imported module."""
    tree = ast.parse(path.read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = {a.name: a.asname or a.name for a in node.names}
            modules |= {
                alias for name, alias in names.items() if f"{node.module}.{name}" in MODULES
            }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and ast.unparse(node) == "sys.path":
            found.append(f"line {node.lineno}: sys.path")
        targets = node.targets if isinstance(node, ast.Assign) else []
        for target in targets:
            for leaf in ast.walk(target):
                if not isinstance(leaf, ast.Attribute):
                    continue
                owner = leaf.value.id if isinstance(leaf.value, ast.Name) else None
                if owner in modules or leaf.attr in ("forward", "__dict__"):
                    found.append(f"line {leaf.lineno}: {ast.unparse(leaf)} = ...")
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "setattr" and node.args:
            if isinstance(node.args[0], ast.Name) and node.args[0].id in modules:
                found.append(f"line {node.lineno}: setattr({node.args[0].id}, ...)")
    return found


BENCHMARK_FILES = sorted((PACKAGE / "bench").glob("*.py")) + [
    PACKAGE.parent / "scripts" / "benchmark.py"
]


@pytest.mark.parametrize("path", BENCHMARK_FILES, ids=lambda p: p.name)
def test_the_benchmark_patches_nothing(path):
    """The benchmark times through the stages' own counters and wrappers it passes in."""
    assert not _patches(path), f"{path.name}: {_patches(path)}"


def test_the_patch_check_finds_patches(tmp_path):
    """The check above is not vacuous."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import sys\nimport medlsam.localization.localizer as loc\n"
        "from medlsam.pipeline import case\n"
        "sys.path.insert(0, 'x')\nloc.medlam_image = None\ncase.run_case = None\n"
        "model.forward = None\nsetattr(loc, 'x', 1)\n"
    )
    found = _patches(bad)
    assert len(found) == 5, found

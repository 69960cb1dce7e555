"""Imports only point left along the stages; library code stays free of side effects.

Order (a module may import medlsam modules of a lower rank only):
errors -> volume -> io -> ini -> config -> boxes -> preprocess -> medlam -> localization
-> segmentation -> assembly -> pipeline; evaluation reads files only (errors, io, config,
boxes, metrics); synth and training sit beside the pipeline; cli sits on top of everything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medlsam"

RANKS = {
    "errors": 0,
    "volume": 1,
    "io": 2,
    "ini": 3,
    "config": 4,
    "boxes": 5,
    "figures": 5,
    "run_files": 5,
    "preprocess": 6,
    "checkpoint": 6,
    "medlam": 7,
    "matching": 8,
    "prototypes": 9,
    "localize": 10,
    "fast_sam": 11,
    "segment": 12,
    "assemble": 13,
    "pipeline": 14,
    "metrics": 6,
    "box_eval": 7,
    "eval_case": 8,
    "eval_report": 8,
    "eval_figures": 9,
    "eval_html": 9,
    "evaluate": 10,
    "synth": 6,
    "train": 15,
    "losses": 14,
    "cli": 20,
}

#: modules that must never import torch (names a user types are checked before models load)
TORCH_FREE = {
    "errors", "volume", "io", "ini", "config", "boxes", "preprocess", "metrics", "figures"
}


def _group(module: str) -> str:
    """Rank key of a module path like ``medlsam.segment.sam`` or ``medlsam.train_data``."""
    parts = module.split(".")
    name = parts[1] if len(parts) > 1 else parts[0]
    for key in sorted(RANKS, key=len, reverse=True):
        if name == key or name.startswith(key + "_"):
            return key
    raise AssertionError(f"medlsam.{name} has no rank in tests/test_layering.py: add it")


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        yield ".".join(parts), path


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


@pytest.mark.parametrize("module,path", list(_modules()), ids=lambda v: str(v))
def test_imports_point_left(module, path):
    if module == "medlsam":
        return
    mine = _group(module)
    for target in _imports(path):
        if not target.startswith("medlsam.") or target.count(".") < 1:
            continue
        try:
            theirs = _group(target)
        except AssertionError:
            continue  # a name imported from a module, not a module
        if theirs == mine:
            continue
        assert RANKS[theirs] < RANKS[mine], f"{module} imports {target} (rank {RANKS[theirs]})"
    if mine in TORCH_FREE:
        assert not any(t == "torch" or t.startswith("torch.") for t in _imports(path)), module


@pytest.mark.parametrize("module,path", list(_modules()), ids=lambda v: str(v))
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

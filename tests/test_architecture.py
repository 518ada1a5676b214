"""Imports stay one-way along the data flow of docs/architecture.md: no module of the package
imports one above it (lazy imports inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "torch_featureviz"

#: Lowest first. A module may import only modules of a lower layer.
LAYERS: list[set[str]] = [
    {"naming", "_png", "sharding", "background", "schedule", "channels", "images"},
    {"_validation"},
    {"discovery"},
    {"budget", "render", "chain", "models"},
    {"capture", "tb_plugin.metadata", "tb_plugin.layout", "timelapse"},
    {"statistics", "figures", "tensorboard"},
    {"sink", "config"},
    {"monitor"},
    {"lightning", "demo", "tb_plugin.plugin"},
    {"tb_plugin", "__init__"},
    {"cli"},
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or "__init__"


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "torch_featureviz":
                found.add("__init__")
            elif node.module.startswith("torch_featureviz."):
                found.add(node.module.removeprefix("torch_featureviz."))
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("torch_featureviz.") for a in node.names
                         if a.name.startswith("torch_featureviz."))
    return found


def test_every_module_is_placed_in_one_layer() -> None:
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    placed = [m for layer in LAYERS for m in layer]
    assert len(placed) == len(set(placed))
    assert modules == set(placed), "add new modules to LAYERS (and to docs/architecture.md)"


def test_imports_only_go_down() -> None:
    rank = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    upward = [
        f"{_module_name(p)} imports {dep}"
        for p in sorted(PACKAGE.rglob("*.py"))
        for dep in sorted(_imports(p))
        if rank[dep] >= rank[_module_name(p)]
    ]
    assert upward == []

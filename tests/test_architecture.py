"""Imports stay one-way along the data flow of docs/architecture.md.

Two rules, both on every import (lazy imports inside functions included):

- between subpackages: a subpackage imports only subpackages of a lower layer of ``PACKAGES``;
- inside a subpackage: a module imports only modules of a lower layer of its ``MODULES`` entry.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "torch_featureviz"

#: The subpackages (and top-level modules), lowest first: find layers -> capture -> render ->
#: log -> monitor -> view, with the shells on top.
PACKAGES: list[set[str]] = [
    {"naming"},
    {"_validation"},
    {"loading"},
    {"capture"},
    {"render"},
    {"log"},
    {"meaning"},
    {"monitor"},
    {"viewer"},
    {"integrations", "demo"},
    {"__init__"},
    {"cli"},
]

#: Inside each subpackage, lowest first. ``__init__`` only re-exports, so it sits on top.
MODULES: dict[str, list[set[str]]] = {
    "loading": [{"images", "errors"}, {"sources", "checkpoints"}, {"models"}, {"__init__"}],
    "capture": [
        {"compat", "pooling", "handles", "state"},
        {"discovery", "passes"},
        {"selection", "tracker"},
        {"chain", "hooks"},
        {"probe"},
        {"__init__"},
    ],
    "render": [
        {"png", "tiles"},
        {"filters"},
        {"grids"},
        {"canvas", "overlay"},
        {"comparison"},
        {"figures"},
        {"__init__"},
    ],
    "log": [{"metadata", "remote"}, {"tensorboard"}, {"__init__"}],
    "meaning": [{"examples", "receptive"}, {"collect"}, {"figure"}, {"__init__"}],
    "monitor": [
        {"sharding", "background", "schedule", "channels"},
        {"budget", "statistics", "config"},
        {"sink", "plan", "lifetime", "agreement", "parts"},
        {"weights"},
        {"cycle", "assembly"},
        {"feature_monitor"},
        {"__init__"},
    ],
    "viewer": [{"timelapse", "layout"}, {"plugin"}, {"__init__"}],
    "integrations": [{"lightning"}, {"__init__"}],
    "cli": [
        {"common"},
        {"loading"},
        {"infer"},
        {"info", "filters", "maps", "examples", "demo", "bench", "timelapse"},
        {"app"},
        {"__init__"},
        {"__main__"},
    ],
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.partition(".")[0] != "torch_featureviz":
                continue
            module = node.module.removeprefix("torch_featureviz").removeprefix(".")
            folder = PACKAGE.joinpath(*module.split(".")) if module else PACKAGE
            for alias in node.names:  # `from package import submodule` imports the submodule
                if (folder / f"{alias.name}.py").exists() or (folder / alias.name).is_dir():
                    found.add(f"{module}.{alias.name}" if module else alias.name)
                else:
                    found.add(module or "__init__")
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("torch_featureviz.") for a in node.names
                         if a.name.startswith("torch_featureviz."))
    return found


def _split(module: str) -> tuple[str, str]:
    """``"monitor.sink"`` -> ``("monitor", "sink")``; ``"monitor"`` -> ``("monitor", "__init__")``;
    a top-level module is its own package."""
    package, _, rest = module.partition(".")
    return package, rest or "__init__"


def _ranks(layers: list[set[str]]) -> dict[str, int]:
    return {m: i for i, layer in enumerate(layers) for m in layer}


def test_every_module_is_placed_in_one_layer() -> None:
    placed = [p for layer in PACKAGES for p in layer]
    assert len(placed) == len(set(placed))
    for path in PACKAGE.rglob("*.py"):
        package, module = _split(_module_name(path))
        assert package in placed, f"add {package} to PACKAGES (and to docs/architecture.md)"
        if path.parent != PACKAGE:
            inner = [m for layer in MODULES[package] for m in layer]
            assert len(inner) == len(set(inner))
            assert module in inner, f"add {package}.{module} to MODULES"


def test_imports_only_go_down() -> None:
    package_rank = _ranks(PACKAGES)
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        package, module = _split(_module_name(path))
        for dep in sorted(_imports(path)):
            dep_package, dep_module = _split(dep)
            if dep_package != package:
                if package_rank[dep_package] >= package_rank[package]:
                    upward.append(f"{package}.{module} imports {dep}")
            else:
                rank = _ranks(MODULES[package])
                if rank[dep_module] >= rank[module]:
                    upward.append(f"{package}.{module} imports {dep}")
    assert upward == []


def test_subpackage_inits_only_re_export() -> None:
    """An ``__init__.py`` holds imports, ``__all__`` and at most a lazy ``__getattr__``."""
    for path in PACKAGE.rglob("__init__.py"):
        for node in ast.parse(path.read_text()).body:
            ok = isinstance(node, ast.Import | ast.ImportFrom | ast.FunctionDef) or (
                isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            ) or (isinstance(node, ast.Assign | ast.AnnAssign))
            assert ok, f"{path.relative_to(PACKAGE)} does work at import: line {node.lineno}"

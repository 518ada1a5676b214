"""Small rooms and a documented surface (issue 28, parts 2 and 7).

- no module over :data:`MAX_MODULE` lines, no class over :data:`MAX_CLASS` lines, no function or
  method over :data:`MAX_FUNCTION` lines of code (its docstring not counted);
- every public name (the ``__all__`` of the package and of each subpackage) has a docstring with
  an example (a doctest ``>>>`` or an ``Example`` section); constants, which cannot carry a
  docstring, need a ``#:`` comment on the line above their assignment instead;
- the top-level ``__all__`` holds at most :data:`MAX_TOP_LEVEL` names.

The sizes are read from the source with :mod:`ast`, nothing is imported for them; the docstring
check imports the package (Lightning's callback included, as users reach it).
"""

from __future__ import annotations

import ast
import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "torch_featureviz"

MAX_MODULE = 500
MAX_CLASS = 300
MAX_FUNCTION = 80
MAX_TOP_LEVEL = 40

#: TEMPORARY: rooms that still break a limit and are being split on other branches (issue 28).
#: Each entry is ``(module path under torch_featureviz/, qualified name or "" for the module)``.
#: Remove an entry when its split lands: an entry that no longer breaks a limit fails
#: :func:`test_the_allowlist_has_no_stale_entries`, so the list can only shrink.
ALLOWED: frozenset[tuple[str, str]] = frozenset({
    # house-monitor: the monitor as a facade (StepCycle, LogPlan, a ~40-line __init__).
    ("monitor/feature_monitor.py", ""),
    ("monitor/feature_monitor.py", "FeatureMonitor"),
    ("monitor/feature_monitor.py", "FeatureMonitor.__init__"),
    # house-monitor: the capture's publishing and settings refactor.
    ("capture/hooks.py", ""),
    ("capture/hooks.py", "FeatureCapture"),
    # the demo's helper: run_demo in steps.
    ("demo.py", "run_demo"),
})


@dataclass(frozen=True)
class Violation:
    path: str
    name: str  # "" for the module itself
    what: str
    lines: int
    limit: int

    def __str__(self) -> str:
        room = f"{self.path}:{self.name}" if self.name else self.path
        return f"{room}: {self.what} of {self.lines} lines (limit {self.limit})"


def _docstring_lines(node: ast.AST) -> int:
    body = getattr(node, "body", [])
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and (
        isinstance(body[0].value.value, str)
    ):
        return body[0].end_lineno - body[0].lineno + 1  # type: ignore[operator]
    return 0


def _rooms(path: str, source: str) -> list[Violation]:
    """Every module, class and function of ``source`` that is over its limit."""
    found = []
    lines = len(source.splitlines())
    if lines > MAX_MODULE:
        found.append(Violation(path, "", "module", lines, MAX_MODULE))

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                size = child.end_lineno - child.lineno + 1  # type: ignore[operator]
                if isinstance(child, ast.ClassDef):
                    if size > MAX_CLASS:
                        found.append(Violation(path, name, "class", size, MAX_CLASS))
                else:
                    size -= _docstring_lines(child)
                    if size > MAX_FUNCTION:
                        found.append(Violation(path, name, "function", size, MAX_FUNCTION))
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def _all_violations() -> list[Violation]:
    found = []
    for file in sorted(PACKAGE.rglob("*.py")):
        found += _rooms(file.relative_to(PACKAGE).as_posix(), file.read_text())
    return found


def test_no_room_is_over_its_limit() -> None:
    over = [str(v) for v in _all_violations() if (v.path, v.name) not in ALLOWED]
    assert over == [], "split these into helpers or modules:\n" + "\n".join(over)


def test_the_allowlist_has_no_stale_entries() -> None:
    still = {(v.path, v.name) for v in _all_violations()}
    stale = sorted(ALLOWED - still)
    assert stale == [], f"these are within the limits now: remove them from ALLOWED: {stale}"


def test_the_size_check_finds_each_kind_of_room() -> None:
    """The checker itself: one room of each kind just over its limit, and one just within."""
    body = "    x = 1\n"
    long_function = "def f():\n" + '    """Doc\n\n    more doc.\n    """\n' + body * 79
    assert _rooms("m.py", long_function) == []  # 80 lines of code: the docstring is not counted
    assert [str(v) for v in _rooms("m.py", long_function + body)] == [
        "m.py:f: function of 81 lines (limit 80)"
    ]
    method = "class C:\n    def g(self):\n" + "        y = 2\n" * 80
    assert [(v.name, v.what) for v in _rooms("m.py", method)] == [("C.g", "function")]
    big_class = "class C:\n" + body * 300
    assert [(v.name, v.what, v.lines) for v in _rooms("m.py", big_class)] == [("C", "class", 301)]
    module = "x = 1\n" * 501
    assert [(v.name, v.what) for v in _rooms("m.py", module)] == [("", "module")]


def _public_modules() -> list[str]:
    return sorted(
        "torch_featureviz" + "".join(f".{p}" for p in init.parent.relative_to(PACKAGE).parts)
        for init in PACKAGE.rglob("__init__.py")
    )


def _has_example(doc: str | None) -> bool:
    return doc is not None and (">>>" in doc or "Example" in doc)


def _documented_constant(name: str) -> bool:
    """A ``#:`` comment on the line above an assignment to ``name`` in some module (constants
    are re-exported, so the one that defines it is not known from the value)."""
    for file in PACKAGE.rglob("*.py"):
        lines = file.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.startswith((f"{name} =", f"{name}:")) and i and lines[i - 1].startswith("#:"):
                return True
    return False


def _undocumented(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    missing = []
    for name in getattr(module, "__all__", []):
        if name.startswith("__"):  # __version__ and friends: conventions, not API
            continue
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj):
            ok = _has_example(inspect.getdoc(obj))
        else:
            ok = _documented_constant(name)
        if not ok:
            missing.append(f"{module_name}.{name}")
    return missing


#: TEMPORARY: public names of modules being refactored on other branches (issue 28) that have
#: no example yet. Remove an entry when its example lands (a stale entry fails the test).
UNDOCUMENTED_ALLOWED: frozenset[str] = frozenset({
    # house-monitor (capture/hooks.py, monitor/**).
    "torch_featureviz.capture_feature_maps",
    "torch_featureviz.preserved_state",
    "torch_featureviz.capture.PassObserver",
    "torch_featureviz.capture.PassRecord",
    "torch_featureviz.capture.capture_feature_maps",
    "torch_featureviz.capture.preserved_state",
    "torch_featureviz.monitor.MonitorConfig",
    # house-bench (what `featureviz bench` runs moves with the benchmarks).
    "torch_featureviz.cli.bench_script",
    # integrations/lightning.py: on no branch of this round; the lead's.
    "torch_featureviz.integrations.FeatureMonitorCallback",
})


@pytest.mark.parametrize(
    "module_name",
    [  # importing Lightning (for the callback's docstring) takes seconds
        pytest.param(m, marks=pytest.mark.slow) if m.endswith(".integrations") else m
        for m in _public_modules()
    ],
)
def test_every_public_name_has_a_docstring_with_an_example(module_name: str) -> None:
    missing = set(_undocumented(module_name))
    mine = {n for n in UNDOCUMENTED_ALLOWED if n.rpartition(".")[0] == module_name}
    assert sorted(missing - mine) == [], "add a docstring with an example (>>> or Example)"
    assert sorted(mine - missing) == [], "documented now: remove from UNDOCUMENTED_ALLOWED"


def test_the_top_level_surface_is_small() -> None:
    import torch_featureviz

    assert len(torch_featureviz.__all__) <= MAX_TOP_LEVEL
    assert len(set(torch_featureviz.__all__)) == len(torch_featureviz.__all__)

"""The README and the docs pages say what the code does: the README's Python example runs as
printed, every Python block in them parses, every command line in them parses with the real
``featureviz`` parser, and every relative link points at a file that exists."""

import ast
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from torch_featureviz.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
PAGES = [p for p in PAGES if p.exists()]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def _blocks(page: Path, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(page.read_text()) if lang == language]


def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    block = re.search(r"## The Python API in 15 lines\n\n```python\n(.*?)```", text, re.S)
    assert block, "the README lost its Python example"
    code = block.group(1)
    assert len(code.strip().splitlines()) <= 20
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert out.getvalue().strip() == "53 torch.Size([64, 56, 56])"
    assert (tmp_path / "figures" / "maps_hook_overview.png").exists()
    assert any((tmp_path / "runs" / "resnet50").glob("events.out.tfevents.*"))


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_second():
    text = README.read_text()
    block = re.search(r"## Two commands for a new machine\n\n```bash\n(.*?)```", text, re.S)
    assert block
    commands = [ln for ln in block.group(1).splitlines() if ln and not ln.startswith("#")]
    assert len(commands) == 2
    assert commands[1] == "bash .ci/run"
    assert "featureviz demo" in commands[0]


def test_readme_is_a_short_guide_with_a_picture_near_the_top():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200
    picture = next(i for i, line in enumerate(lines) if line.startswith("!["))
    assert picture < 40, "the screenshot belongs near the top, after the two commands"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_python_block_parses(page: Path) -> None:
    for body in _blocks(page, "python"):
        ast.parse(body, filename=str(page))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_featureviz_command_line_parses(page: Path) -> None:
    parser = build_parser()
    for body in _blocks(page, "bash"):
        for line in body.splitlines():
            line = re.split(r"\s#\s", line)[0].strip()
            if not line.startswith("featureviz "):
                continue
            argv = shlex.split(line)[1:]
            args, extra = parser.parse_known_args(argv)
            assert getattr(args, "func", None), f"{page.name}: no command in {line!r}"
            if not getattr(args, "passthrough", False):
                assert extra == [], f"{page.name}: unknown options {extra} in {line!r}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_point_at_files(page: Path) -> None:
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if "://" in target:
            continue
        assert (page.parent / target).exists(), f"{page.name} links to missing {target}"

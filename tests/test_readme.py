"""The README's Python example must run as printed and say what it claims."""

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


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

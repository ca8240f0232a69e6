"""The README's quick start runs and prints what the README says it prints."""

import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_quick_start_runs_as_documented():
    text = README.read_text()
    block = text.split("## Quick start", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    promised = re.search(r"#\s*(.+)$", block.strip().splitlines()[-1]).group(1).strip()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "README quick start", "exec"), {})
    assert out.getvalue().strip() == promised


def test_readme_gives_exactly_two_setup_commands_and_ci_runs_the_test_one():
    text = README.read_text()
    setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.+?)\n```", setup, flags=re.S)
    assert len(commands) == 2
    ci = (README.parent / ".ci" / "run").read_text()
    assert commands[1].strip() in ci
    assert "pytest" in commands[1] and "demo" in commands[0]


def test_choosing_lam_example_runs_as_documented():
    text = README.read_text()
    block = text.split("## Choosing lam", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    promised = next(line for line in block.splitlines() if line.startswith("# dct"))
    promised = promised[2:].split("  (", 1)[0].strip()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "README choosing lam", "exec"), {})
    assert out.getvalue().strip() == promised

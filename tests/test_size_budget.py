"""tools/loc.py, which `make lint` runs with the source's line budget."""

import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "loc.py"
SOURCE = '''"""Module docstring,
two lines."""

# a comment
import os


def f(x):
    """Docstring."""
    text = """a string
    that is code"""
    return x  # trailing comment
'''


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "top.py").write_text(SOURCE)
    (tmp_path / "pkg" / "sub" / "inner.py").write_text("x = 1\n\ny = 2\n")
    return tmp_path / "pkg"


def run(*args):
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True)


def test_code_lines_leave_out_blanks_comments_and_docstrings_but_not_other_strings(tree):
    result = run(str(tree))
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:]}
    assert rows["core"] == ["12", "5"]  # import, def, the two lines of `text`, return
    assert rows["sub"] == ["3", "2"]
    assert rows["total"] == ["15", "7"]


def test_over_the_budget_is_one_line_and_exit_1(tree):
    assert run(str(tree), "--budget", "7").returncode == 0
    result = run(str(tree), "--budget", "6")
    assert result.returncode == 1
    assert "7 code lines is over the budget of 6" in result.stdout.splitlines()[-1]

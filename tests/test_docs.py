"""The documentation stays true: its examples run, its links resolve, its tables match the code.

- Every `>>>` example in docs/*.md runs as a doctest (the markdown fences are blanked first, so a
  block's expected output ends where its code block does), each file in its own namespace, in the
  test's empty working directory.
- The docstring examples of the modules in DOCTEST_MODULES run as doctests.
- docs/config-reference.md is what `gradloop.cli.reference` renders from the schema now.
- The guide's hook table lists exactly the hooks of `callbacks.base.HOOKS`.
- Every relative link in docs/*.md and README.md points at a file that exists.
"""

import doctest
import importlib
import re
from pathlib import Path

import pytest

from gradloop.callbacks.base import HOOKS
from gradloop.cli import reference

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
DOCTEST_MODULES = (
    "gradloop.util",
    "gradloop.step",
    "gradloop.names.losses",
    "gradloop.persistence.weights",
    "gradloop.callbacks.early_stopping",
    "gradloop.callbacks.lr",
)
_FENCE = re.compile(r"^\s*```.*$", re.MULTILINE)
_EXAMPLE = re.compile(r"^>>> ", re.MULTILINE)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def markdown_files():
    return sorted(DOCS.glob("*.md"))


def _report(runner_output, failures, where):
    assert failures == 0, f"{failures} doctest example(s) in {where} failed:\n{''.join(runner_output)}"


@pytest.mark.parametrize("path", [p for p in markdown_files() if _EXAMPLE.search(p.read_text())], ids=lambda p: p.name)
def test_markdown_examples_run(path):
    text = _FENCE.sub("", path.read_text())  # line numbers stay as they are in the file
    test = doctest.DocTestParser().get_doctest(text, {"__name__": path.stem}, path.name, str(path), 0)
    output = []
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    runner.run(test, out=output.append)
    _report(output, runner.failures, path.name)


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    output = []
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    tests = [t for t in doctest.DocTestFinder().find(module) if t.examples]
    assert tests, f"{name} is listed in DOCTEST_MODULES but has no docstring examples"
    for test in tests:
        runner.run(test, out=output.append)
    _report(output, runner.failures, name)


def test_config_reference_is_current():
    committed = (DOCS / "config-reference.md").read_text(encoding="utf-8")
    assert committed == reference.render(), (
        f"docs/config-reference.md is stale (the schema in src/gradloop/cli/config.py changed): regenerate it with "
        f"`{reference.COMMAND}` (or `make docs`)"
    )


def test_reference_lists_every_key():
    from gradloop.cli.config import Config

    text = reference.render()
    for section in ("data", "model", "train"):
        assert f"## `[{section}]`" in text
        model = Config.model_fields[section].annotation
        for key, field in model.model_fields.items():
            assert f"| `{key}` |" in text, f"[{section}] {key} is missing from the reference"
            assert field.description, f"[{section}] {key} has no Field(description=...) in cli/config.py"
    callbacks = Config.model_fields["callbacks"].annotation
    for name in callbacks.model_fields:
        assert f"## `[callbacks.{name}]`" in text


def test_reference_writes_the_file(tmp_path):
    out = tmp_path / "reference.md"
    assert reference.main(["--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == reference.render()


def test_guide_hook_table_matches_the_hooks():
    text = (DOCS / "guide.md").read_text()
    rows = re.findall(r"^\| `(on_\w+)` \|", text, re.MULTILINE)
    assert rows, "the guide has no hook table (rows like | `on_fit_start` | ... |)"
    assert sorted(rows) == sorted(HOOKS), f"the guide's hook table lists {rows}; callbacks/base.py HOOKS are {list(HOOKS)}"
    assert rows == list(HOOKS), "the guide's hook table should list the hooks in the order of HOOKS"


def test_relative_links_resolve():
    broken = []
    for path in [ROOT / "README.md", *markdown_files()]:
        for target in _LINK.findall(path.read_text(encoding="utf-8")):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):  # a URL, or an anchor in the same file
                continue
            file = target.split("#", 1)[0]
            if not (path.parent / file).exists():
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_guide_anchors_resolve():
    """Links inside the guide (#a-first-run) name headings it has (GitHub's rule: lower case, punctuation dropped)."""
    text = (DOCS / "guide.md").read_text()
    headings = {_anchor(h) for h in re.findall(r"^#+ (.+)$", _strip_code_blocks(text), re.MULTILINE)}
    missing = [a for a in re.findall(r"\]\(#([^)]+)\)", text) if a not in headings]
    assert not missing, f"guide.md links to anchors it does not have: {missing}"


def _strip_code_blocks(text):
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


def _anchor(heading):
    heading = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")

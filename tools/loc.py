"""Lines of source per package: all lines, and code lines (no blanks, comments or docstrings).

    python tools/loc.py [SRC_DIR] [--budget N]     # default: src/gradloop

With --budget, exits 1 when the code lines of the whole tree exceed N: size is a budget, and
raising it is a decision made in the Makefile, not an accident.

A module directly in the package counts as "core"; a subpackage counts as itself.
"""

from __future__ import annotations

import argparse
import ast
import io
import sys
import tokenize
from collections import Counter
from pathlib import Path


def _docstring_lines(source: str) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                lines.update(range(body[0].lineno, (body[0].end_lineno or body[0].lineno) + 1))
    return lines


def code_lines(source: str) -> int:
    """The lines holding a token that is not a comment, a docstring or layout."""
    docstrings = _docstring_lines(source)
    layout = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in layout:
            lines.update(line for line in range(token.start[0], token.end[0] + 1) if line not in docstrings)
    return len(lines)


def count(root: Path) -> tuple[Counter[str], Counter[str]]:
    total: Counter[str] = Counter()
    code: Counter[str] = Counter()
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        package = parts[0] if len(parts) > 1 else "core"
        source = path.read_text()
        total[package] += len(source.splitlines())
        code[package] += code_lines(source)
    return total, code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="src/gradloop", type=Path)
    parser.add_argument("--budget", type=int, help="fail when the code lines exceed this")
    args = parser.parse_args()
    total, code = count(args.root)
    print(f"{'package':<14}{'lines':>8}{'code':>8}")
    for package in sorted(total, key=lambda p: (p != "core", p)):
        print(f"{package:<14}{total[package]:>8}{code[package]:>8}")
    print(f"{'total':<14}{sum(total.values()):>8}{sum(code.values()):>8}")
    if args.budget is not None and sum(code.values()) > args.budget:
        print(f"error: {sum(code.values())} code lines is over the budget of {args.budget}: cut, or raise LOC_BUDGET in the Makefile")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

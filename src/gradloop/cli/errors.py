"""The one error type the command line reports as `gradloop: error: ...` with exit code 2."""
from __future__ import annotations

import difflib
from typing import Iterable


class UsageError(Exception):
    """Bad input from the user (config, data, paths): one line that names the problem and the fix."""


def did_you_mean(name: str, choices: Iterable[str], prefix: str = "") -> str:
    """` (did you mean 'x'?)` for the closest choice (written as `prefix + choice`), or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""


def one_line(text: str) -> str:
    """The first non-empty line of `text` (error messages from libraries can span many)."""
    for line in str(text).strip().splitlines():
        if line.strip():
            return line.strip()
    return ""

"""TOML files: reading (one-line errors), `--set section.key=value` overrides, compact writing.

Override values are parsed as TOML (`0.01`, `[64, 32]`, `true`, `"x"`); a value that is not valid
TOML is taken as a string (`--set data.name=wine`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import tomli_w

from .errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parses a TOML file; a missing or malformed file is a UsageError naming it."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"config file {str(path)!r} does not exist")
    if path.is_dir():
        raise UsageError(f"config {str(path)!r} is a directory: pass a .toml file")
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"{path}: invalid TOML: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"config file {str(path)!r} cannot be read: {err}") from None


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Applies `section.key=value` overrides (values parsed as TOML) to a raw config dict."""
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) < 2 or not all(parts):
            raise UsageError(f"--set {item!r}: expected section.key=value, e.g. --set train.lr=0.01")
        table = raw
        for part in parts[:-1]:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise UsageError(f"--set {item!r}: {part!r} is a value, not a section")
        table[parts[-1]] = parse_value(text.strip())
    return raw


def parse_value(text: str) -> Any:
    """A TOML value (`0.01`, `true`, `[64, 32]`, `"x"`), or the text itself when it is not TOML."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def dumps_toml(tables: dict[str, Any]) -> str:
    """TOML with one `[section]` per table (`[callbacks.<name>]` for callbacks) and arrays on one
    line (tomli-w alone writes every array over several lines)."""
    sections = [(f"callbacks.{_key(name)}", options) for name, options in tables.get("callbacks", {}).items()]
    sections = [(name, values) for name, values in tables.items() if name != "callbacks"] + sections
    lines = []
    for name, values in sections:
        lines += [f"[{name}]", *(f"{_key(k)} = {toml_literal(v)}" for k, v in values.items()), ""]
    return "\n".join(lines)


def _key(key: str) -> str:
    return tomli_w.dumps({key: 0}).split(" = ", 1)[0]


def toml_literal(value: Any) -> str:
    """A value as TOML writes it: `true`, `"adam"`, `[128, 64]`, `0.001`, `{}`."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {toml_literal(v)}" for k, v in value.items()) + " }" if value else "{}"
    return tomli_w.dumps({"v": value}).split(" = ", 1)[1].strip()

"""The config reference, rendered from the schema in `config.py`: every section and key, with its
type, default and description. `docs/config-reference.md` is its output:

    python -m gradloop.cli.reference --out docs/config-reference.md     # or: make docs

Without `--out` the markdown goes to stdout. A test fails when the committed file is stale.
"""

from __future__ import annotations

import argparse
import inspect
import types
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from ..util import atomic_write
from .config import Config, section_model
from .tomlfile import toml_literal

COMMAND = "python -m gradloop.cli.reference --out docs/config-reference.md"
_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean", Any: "any value"}
_BOUNDS = ((annotated_types.Ge, "≥"), (annotated_types.Gt, ">"), (annotated_types.Le, "≤"), (annotated_types.Lt, "<"))

_HEADER = f"""# Config reference

Every key a `gradloop fit` / `gradloop doctor` config (TOML) accepts, section by section, with its
type, default and meaning. Every key is optional except `[data]` and one of `data.name` or
`data.path`; unknown keys and wrong types are an error (exit code 2) naming the key.
`--set SECTION.KEY=VALUE` overrides any key from the command line (`--set train.lr=0.01`,
`--set callbacks.early_stopping.patience=3`). A run writes its resolved settings to
`RUN_DIR/config.toml`, which `gradloop resume` reads back.

This file is generated from the schema (`src/gradloop/cli/config.py`); regenerate it with
`{COMMAND}` (or `make docs`).
"""


def render() -> str:
    """The whole reference as markdown."""
    parts = [_HEADER]
    for title, section, field in _sections(Config, ()):
        parts.append(_render_section(title, section, field))
    return "\n".join(parts)


def _sections(model: type[BaseModel], path: tuple[str, ...]) -> Iterator[tuple[str, type[BaseModel], FieldInfo | None]]:
    """(TOML table name, its model, the field that holds it) for every table, depth first; a table
    that only holds tables (`[callbacks]`) is not listed itself."""
    for name, field in model.model_fields.items():
        inner = section_model(field.annotation)
        if inner is None:
            continue
        if any(section_model(f.annotation) is None for f in inner.model_fields.values()) or not inner.model_fields:
            yield ".".join((*path, name)), inner, field
        yield from _sections(inner, (*path, name))


def _render_section(title: str, model: type[BaseModel], holder: FieldInfo | None) -> str:
    lines = [f"## `[{title}]`", ""]
    doc = inspect.cleandoc(model.__doc__ or "")
    if doc:
        lines += [doc, ""]
    if holder is not None and holder.is_required():
        lines += ["This table is required.", ""]
    elif title.startswith("callbacks."):
        lines += [f"Present (even empty, `[{title}]`), it turns the callback on.", ""]
    keys = {name: field for name, field in model.model_fields.items() if section_model(field.annotation) is None}
    if keys:
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        for name, field in keys.items():
            cells = (f"`{name}`", _type_of(field), _default_of(field), field.description or "")
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _type_of(field: FieldInfo) -> str:
    text = _type_name(field.annotation)
    bounds = [f"{sign} {getattr(m, type(m).__name__.lower())}" for m in field.metadata for kind, sign in _BOUNDS if isinstance(m, kind)]
    return f"{text}, {' and '.join(bounds)}" if bounds else text


def _type_name(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        named = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(named) + (" (optional)" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(toml_literal(a) for a in args)
    if origin is list:
        return f"array of {_type_name(args[0])}s" if args else "array"
    if origin is dict:
        return "table"
    return _SCALARS.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default_of(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
    if value is PydanticUndefined or value is None:
        return "unset"
    if isinstance(value, BaseModel):
        return "—"
    return f"`{toml_literal(value)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gradloop.cli.reference", description="render the config reference as markdown")
    parser.add_argument("--out", metavar="FILE", help="write it here (atomically) instead of stdout")
    args = parser.parse_args(argv)
    text = render()
    if args.out is None:
        print(text, end="")
    else:
        atomic_write(Path(args.out), text, durable=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

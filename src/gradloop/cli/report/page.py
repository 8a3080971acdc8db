"""The report page: self-contained HTML (inline CSS and SVG, no script, nothing fetched when opened).

The data behind it travel in the page as JSON, `<script type="application/json" id="gradloop-data">`
(never executed): `{"gradloop": version, "runs": [{"label", "path", "metrics": metrics.csv rows
(NaN as null), "settings", "checkpoints", "doctor"}]}`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from html import escape
from typing import Any, Sequence

from ...callbacks.monitor import infer_mode
from ...persistence.verification import size_text
from ..summary import NOT_METRICS, best_epoch, fmt
from . import charts
from .collect import RunData

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; }
body { margin: 0 auto; max-width: 1180px; padding: 16px 24px 48px; }
h1 { font-size: 22px; margin: 8px 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 16px 0 6px; } .note { color: #666; }
table { border-collapse: collapse; margin: 6px 0 12px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 12px 24px; }
figure { margin: 0; } figcaption { font-weight: 600; margin-bottom: 2px; }
svg.chart { width: 100%; height: auto; background: #fff; }
svg.chart .plot { fill: #fcfcfc; stroke: #bbb; } svg.chart .grid { stroke: #e6e6e6; } svg.chart .tick { font-size: 11px; fill: #555; }
svg.chart .axis { font-size: 12px; fill: #333; } svg.chart .series { fill: none; stroke-width: 2; stroke-linejoin: round; }
svg.chart .point { opacity: 0.8; } svg.chart .point:hover { r: 5; opacity: 1; }
ul.legend { list-style: none; padding: 0; margin: 2px 0 0; display: flex; flex-wrap: wrap; gap: 2px 14px; font-size: 12px; }
.split { color: #666; }
tr.differs td { background: #fff4d6; } tr.differs td.mark { color: #b35c00; font-weight: 700; }
#only-differences:checked ~ table.settings tr.same { display: none; }
td.ok { color: #1a7f37; } td.fail { color: #c62828; font-weight: 600; } td.warn { color: #9a6700; font-weight: 600; }
td.winner { font-weight: 700; background: #eaf6ec; }
"""


def render(runs: Sequence[RunData]) -> str:
    from ... import __version__

    names = ", ".join(r.label for r in runs)
    body = [
        f"<h1>gradloop report: {escape(names)}</h1>",
        _note(f"{len(runs)} run{'s' if len(runs) != 1 else ''}, written {time.strftime('%Y-%m-%d %H:%M')} by gradloop {__version__}"),
        _overview(runs),
        _curves(runs),
        _settings(runs),
        _metrics(runs),
        _doctor(runs),
        _checkpoints(runs),
        f'<script type="application/json" id="gradloop-data">{_json_data(runs, __version__)}</script>',
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>gradloop report: {escape(names)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(part for part in body if part)
        + "\n</body>\n</html>\n"
    )


def _attrs(css: str = "", **data: object) -> str:
    """` class="css" data-a-b="..."` (escaped), for `data_a_b=...` keywords."""
    text = f' class="{escape(css)}"' if css else ""
    return text + "".join(f' data-{k.replace("_", "-")}="{escape(str(v))}"' for k, v in data.items())


def _td(text: str, css: str = "", **data: object) -> str:
    return f"<td{_attrs(css, **data)}>{escape(text)}</td>"


def _tr(cells: Sequence[str], css: str = "", **data: object) -> str:
    return f"<tr{_attrs(css, **data)}>{''.join(cells)}</tr>"


def _table(head: Sequence[str], rows: Sequence[str], css: str = "") -> str:
    cells = "".join(f"<th>{escape(h)}</th>" for h in head)
    return f"<table{_attrs(css)}><thead><tr>{cells}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def _overview(runs: Sequence[RunData]) -> str:
    columns = [c for c in runs[0].overview if c not in ("best", "final")]  # the metrics table has both, per metric
    rows = [_tr([*(_td(r.label if c == "run" else r.overview[c]) for c in columns), _td(str(r.path))]) for r in runs]
    return "<h2>Runs</h2>" + _table([*columns, "directory"], rows)


def _curves(runs: Sequence[RunData]) -> str:
    figures = []
    for quantity, series in charts.quantities([(r.label, r.rows) for r in runs]):
        notes = "".join(_note(n) for n in charts.not_drawn(series))
        figures.append(
            f"<figure{_attrs(quantity=quantity)}><figcaption>{escape(quantity)}</figcaption>"
            f"{charts.svg_chart(quantity, series)}{charts.legend(series)}{notes}</figure>"
        )
    explain = _note("Per epoch, from each run's metrics.csv (epochs counted from 0): train solid, validation dashed.")
    return f'<h2>Curves</h2>{explain}<div class="charts">{"".join(figures)}</div>'


def _settings(runs: Sequence[RunData]) -> str:
    rows, count = [], 0
    for key in dict.fromkeys(k for r in runs for k in r.settings):
        values = [r.settings.get(key) for r in runs]
        differs = len(runs) > 1 and len(set(values)) > 1
        count += differs
        cells = [_td("≠" if differs else "", "mark"), _td(key), *(_td("(not set)" if v is None else v) for v in values)]
        rows.append(_tr(cells, "differs" if differs else "same", setting=key, differs=str(differs).lower()))
    missing = "none found (no config.toml, no checkpoint that verifies)"
    sources = _note("From " + "; ".join(f"{r.label}: {r.settings_source or missing}" for r in runs) + ".")
    toggle = (
        f'<input type="checkbox" id="only-differences"> <label for="only-differences">show only the {count} settings that differ</label>'
        if len(runs) > 1
        else ""
    )
    table = _table(["", "setting", *(r.label for r in runs)], rows, "settings") if rows else _note("no settings found")
    return f"<h2>Settings</h2>{sources}<div>{toggle}{table}</div>"


def _metrics(runs: Sequence[RunData]) -> str:
    names = dict.fromkeys(k for r in runs for row in r.rows for k, v in row.items() if k not in NOT_METRICS and isinstance(v, float))
    rows = []
    for name in names:
        mode = infer_mode(name, "auto", fallback="min")
        bests = [best_epoch(r.rows, name) for r in runs]
        finite = [b[1] for b in bests if b is not None]
        winner = (min if mode == "min" else max)(finite) if len(runs) > 1 and finite else None
        cells = [_td(f"{name} ({mode})")]
        for r, best in zip(runs, bests):
            final = next((row[name] for row in reversed(r.rows) if name in row), math.nan)
            if best is None:
                cells.append(_td(f"final {fmt(final)}", final=repr(final)))
                continue
            epoch = r.rows[best[0]].get("epoch", best[0])
            text = f"best {fmt(best[1])} @ epoch {epoch} · final {fmt(final)}"
            css = "winner" if best[1] == winner else ""
            cells.append(_td(text, css, best=repr(best[1]), best_epoch=epoch, final=repr(final)))
        rows.append(_tr(cells, metric=name))
    return "<h2>Best and final metrics</h2>" + _table(["metric", *(r.label for r in runs)], rows, "metrics")


def _doctor(runs: Sequence[RunData]) -> str:
    if not any(r.doctor is not None or r.doctor_error for r in runs):
        return _note("No doctor findings: none of these runs has a doctor.json (gl.doctor(model, data, run_dir=RUN_DIR) writes one).")
    parts = ["<h2>Doctor</h2>"]
    for r in runs:
        parts.append(f"<h3>{escape(r.label)}</h3>")
        if r.doctor is None:
            parts.append(_note(r.doctor_error or "no doctor.json"))
            continue
        rows = []
        for check in (c for c in r.doctor["checks"] if isinstance(c, dict)):
            status, name, message, advice = (str(check.get(key) or "") for key in ("status", "name", "message", "advice"))
            rows.append(_tr([_td(status.upper(), status), _td(name), _td(message), _td(advice)]))
        parts.append(_note("no check failed" if r.doctor.get("ok") else "a check failed"))
        parts.append(_table(["status", "check", "evidence", "advice"], rows, "doctor"))
    return "".join(parts)


def _checkpoints(runs: Sequence[RunData]) -> str:
    parts = ["<h2>Checkpoints</h2>"]
    for r in runs:
        rows = []
        for f in r.files:
            verified = _td("ok", "ok") if f.ok else _td("FAIL", "fail")
            rows.append(_tr([_td(f.name), _td(size_text(f.size), "num"), verified, _td(f.detail)], file=f.name, verified=str(f.ok).lower()))
        table = (
            _table(["file", "size", "verifies", "holds / what is wrong"], rows, "files")
            if rows
            else _note("no checkpoints, no model.safetensors")
        )
        parts += [f"<h3>{escape(r.label)}</h3>", table]
    return "".join(parts)


def _json_data(runs: Sequence[RunData], version: str) -> str:
    data = {
        "gradloop": version,
        "runs": [
            {
                "label": r.label,
                "path": str(r.path),
                "metrics": [{k: _finite(v) for k, v in row.items()} for row in r.rows],
                "settings": r.settings,
                "checkpoints": [asdict(f) for f in r.files],
                "doctor": r.doctor,
            }
            for r in runs
        ],
    }
    text = json.dumps(data, allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")  # never ends the <script> early


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value

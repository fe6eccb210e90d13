"""The report's one self-contained HTML page: the figures inlined, the analysis, the table."""

from __future__ import annotations

import base64
from pathlib import Path

from app.report.load import Sweep


def _html(sweep: Sweep, out: Path, figures: list[str], header, rows, summary: str) -> str:
    import html

    imgs = "\n".join(
        f'<figure><img alt="{n}" src="data:image/png;base64,'
        f'{base64.b64encode((out / n).read_bytes()).decode()}"><figcaption>{n}</figcaption></figure>'
        for n in figures)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>{html.escape(sweep.experiment)} frontier report</title>
<style>body{{font-family:sans-serif;margin:2em}} img{{max-width:100%}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}
pre{{background:#f6f6f6;padding:1em;white-space:pre-wrap}}</style></head><body>
<h1>{html.escape(sweep.experiment)}: accuracy–calibration frontier</h1>
<p>Sweep run {sweep.parent_id}, model set {html.escape(sweep.name)}</p>
{imgs}
<h2>Analysis</h2><pre>{html.escape(summary)}</pre>
<h2>Full results</h2><table><tr>{head}</tr>{body}</table>
</body></html>
"""

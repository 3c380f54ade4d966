"""One self-contained HTML report of a study (figures embedded), beside the figures and result.json."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _pct(value: float | None) -> str:
    return "--" if value is None else f"{100 * value:.1f} %"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(result: Mapping[str, Any], figures: Mapping[str, Path], out: Path) -> Path:
    images = "".join(
        f"<h2>{html.escape(name)}</h2><img alt='{html.escape(name)}' src='data:image/png;base64,"
        f"{base64.b64encode(path.read_bytes()).decode('ascii')}'>" for name, path in figures.items())
    blocks = _table(["block", "context", "sessions", "trials", "correct R / L", "neurons", "decoded"],
                    [[b["label"], b["context"], str(len(b["sessions"])), str(b["trials"]),
                      f"{b['correct_right']} / {b['correct_left']}", str(b["neurons"]),
                      "yes" if b["decoded"] else "no (too few trials)"] for b in result["blocks"]])
    criterion = _table(["block", "context", "trials to criterion"],
                       [[c["block_label"], c["context"], "not reached" if c["trials"] is None
                         else str(c["trials"])] for c in result["trials_to_criterion"]])
    trace = result.get("memory_trace")
    trace_text = ("<p>Not computed: the study needs blocks 1, 2 and 1' with enough trials.</p>"
                  if not trace else
                  f"<p>CD of block {html.escape(trace['cd_block'])} decodes "
                  f"{html.escape(trace['prev_block'])} "
                  f"at {_pct(trace['prev_context_accuracy'])} and {html.escape(trace['return_block'])} at "
                  f"{_pct(trace['return_context_accuracy'])} (one-sided permutation test p = "
                  f"{trace['p_value']:.3g}, {trace['neurons']} neurons).</p>")
    options = html.escape(json.dumps(result["options"]))
    title = html.escape(result["subject"])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1800px}}img{{max-width:100%}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px;font-size:13px}}</style></head>
<body><h1>Subject {html.escape(result['subject'])}</h1>
<p>{len(result['sessions'])} sessions, {result['neurons']['subject_wide']} neurons subject-wide,
{result['neurons']['matched_pairs']} ROI matches between sessions. Options: <code>{options}</code></p>
<h2>Blocks</h2>{blocks}<h2>Trials to criterion</h2>{criterion}<h2>Memory trace</h2>{trace_text}{images}
</body></html>"""
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path

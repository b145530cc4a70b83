"""The black-box suite's report: the matrix as rows, written as JSON and one HTML page.

A row is one probe of one case: which table, which VM on which node, what the thesis expected
(where it has a say), what this suite expects today, what happened (``ok`` or the refusing
layer), libvirt's error code, the time it took, and the test's verdict. Rendering is pure
(rows, versions and settings in, text out) so it is tested without a lab.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import libvirt

VERDICTS = {
    "passed": ("pass", "as expected"),
    "failed": ("fail", "NOT as expected"),
    "xfailed": ("xfail", "unprotected, as the control run expects"),
    "xpassed": ("fail", "the control run saw protection it cannot have"),
    "skipped": ("skip", "skipped"),
    "": ("skip", "not run"),
}


@dataclass
class Row:
    table: str
    case: str
    node: str
    action: str
    thesis: str
    expected: str
    actual: str
    code: str
    seconds: float
    note: str = ""
    test: str = ""  # pytest node id
    verdict: str = ""  # pytest outcome: passed | failed | xfailed | xpassed | skipped
    data: str = ""  # what the writer guests left on the exclusive disks (lab.suite.data)
    replay: str = ""  # the command that replays this row's test (lab.scenario)


def write_json(path: str, rows: Iterable[Row], meta: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "rows": [asdict(r) for r in rows]}, f, indent=2)


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top;font-size:90%}
th{background:#f0f0f0}
tr.pass td.v{background:#d9f2d9} tr.fail td.v{background:#f7c6c6}
tr.xfail td.v{background:#fde9b8} tr.skip td.v{background:#eee}
td.note{color:#555;max-width:40em} code{font-size:90%}
"""

COLUMNS = (
    "case",
    "node",
    "step",
    "thesis (2018)",
    "expected",
    "actual",
    "code",
    "seconds",
    "verdict",
    "data on the disks",
    "note",
)


def _row_html(r: Row) -> str:
    css, word = VERDICTS.get(r.verdict, VERDICTS[""])
    cells = (
        r.case,
        r.node,
        r.action,
        r.thesis or "—",
        r.expected,
        r.actual,
        r.code or "",
        f"{r.seconds:.2f}",
    )
    tds = "".join(f"<td>{html.escape(str(c))}</td>" for c in cells)
    return (
        f"<tr class='{css}'>{tds}<td class='v'>{html.escape(word)}</td>"
        f"<td class='note'>{html.escape(r.data)}</td>"
        f"<td class='note'>{html.escape(r.note)}{_replay_html(r)}</td></tr>"
    )


def _replay_html(r: Row) -> str:
    """A failing row names the one command that replays it."""
    if not r.replay or VERDICTS.get(r.verdict, VERDICTS[""])[0] != "fail":
        return ""
    return f"<br>replay: <code>{html.escape(r.replay)}</code>"


def render_html(rows: list[Row], meta: dict[str, Any]) -> str:
    """One page: a summary line, then one table per suite table, then versions, settings."""
    tables: dict[str, list[Row]] = {}
    for r in rows:
        tables.setdefault(r.table, []).append(r)
    counts: dict[str, int] = {}
    for r in rows:
        word = VERDICTS.get(r.verdict, VERDICTS[""])[0]
        counts[word] = counts.get(word, 0) + 1
    summary = ", ".join(f"{n} {w}" for w, n in sorted(counts.items()))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    parts = [
        "<!doctype html><meta charset='utf-8'>",
        "<title>virtdlm two-node black-box suite</title>",
        f"<style>{_CSS}</style>",
        "<h1>virtdlm two-node black-box suite</h1>",
        f"<p>{html.escape(str(meta.get('started', '')))} · {len(rows)} rows: "
        f"{html.escape(summary)} · {html.escape(str(meta.get('duration', '')))}</p>",
        "<p>actual is <code>ok</code> or the layer that refused: <code>lock-manager</code> "
        f"(dlm.so / virtdlmd, libvirt code {libvirt.VIR_ERR_RESOURCE_BUSY}), "
        "<code>qemu-image-lock</code> (QEMU's own "
        "image lock), <code>lock-daemon-down</code>, <code>other</code>. The control run "
        'runs the protection rows with <code>lock_manager = "nop"</code> and must show them '
        "unprotected.</p>",
    ]
    for key in ("fencing", "writer guests"):  # what the lab's safety rests on
        if meta.get(key):
            parts.append(f"<p><b>{key}</b>: {html.escape(str(meta[key]))}</p>")
    for table, trs in tables.items():
        parts.append(f"<h2>{html.escape(table)}</h2>")
        parts.append(f"<table><tr>{head}</tr>{''.join(_row_html(r) for r in trs)}</table>")
    for title, key in (("Versions", "versions"), ("Lab settings", "settings")):
        values = meta.get(key) or {}
        if not values:
            continue
        parts.append(f"<h2>{title}</h2><table>")
        if key == "versions":  # {node: {component: version}}
            nodes = sorted(values)
            comps = sorted({c for n in nodes for c in values[n]})
            heads = "".join(f"<th>{html.escape(n)}</th>" for n in nodes)
            parts.append(f"<tr><th></th>{heads}</tr>")
            for c in comps:
                cells = "".join(f"<td>{html.escape(str(values[n].get(c, '')))}</td>" for n in nodes)
                parts.append(f"<tr><th>{html.escape(c)}</th>{cells}</tr>")
        else:
            for k in sorted(values):
                parts.append(
                    f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(values[k]))}</td></tr>"
                )
        parts.append("</table>")
    return "\n".join(parts) + "\n"


def render_text(rows: list[Row]) -> list[str]:
    """The matrix as terminal lines (pytest's summary)."""
    out = [
        f"{'table':<22} {'case':<26} {'node':<7} {'thesis':<10} {'expected':<16} "
        f"{'actual':<16} {'code':<5} {'s':>6}  verdict"
    ]
    for r in rows:
        thesis = r.thesis.split(":")[0] if r.thesis else "-"
        out.append(
            f"{r.table[:22]:<22} {r.case[:26]:<26} {r.node:<7} {thesis[:10]:<10} "
            f"{r.expected[:16]:<16} {r.actual[:16]:<16} {r.code:<5} {r.seconds:>6.2f}  "
            f"{VERDICTS.get(r.verdict, VERDICTS[''])[1]}"
        )
    return out

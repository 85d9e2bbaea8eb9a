"""The documents an evaluation writes: metrics.json (`metrics_document`), a self-contained HTML report (images
inlined as base64) and the init comparison table.

`write_report` shows the metrics and a grid of sample predictions: each sample's images with its text lines
(question / answer / prediction, retrieved captions, generated caption and references), green when right,
red when wrong. `compare_inits` turns two sets of evaluation metrics (fine-tuned from the platform's
pretrained checkpoint vs. from random init, same budget) into a markdown table and a JSON document.
"""

from __future__ import annotations

import base64
import html
import logging

from beit3core import data, io
from beit3core.tasks import TASKS

log = logging.getLogger(__name__)

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table.m{border-collapse:collapse;margin-bottom:1.5em}
table.m td,table.m th{border:1px solid #ccc;padding:4px 10px;text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:14px}
.card{border:2px solid #bbb;border-radius:6px;padding:8px;width:300px}
.card.ok{border-color:#2a2}.card.bad{border-color:#c33}
.card img{width:96px;height:96px;image-rendering:pixelated;margin:2px;border:1px solid #ddd}
.card dl{margin:4px 0}.card dt{font-weight:600;font-size:.85em;color:#555}.card dd{margin:0 0 4px 0}
"""


def _sniff_mime(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/jpeg"


def _img_tag(data_uri: str, ref: str) -> str:
    try:
        raw = data.image_bytes(data_uri, ref)
    except Exception as e:  # noqa: BLE001 - a report with a missing image is still a report
        log.warning("report: cannot read image %s: %s", ref, e)
        return f"<span>(image {html.escape(ref)} unreadable)</span>"
    b64 = base64.b64encode(raw).decode("ascii")
    return f'<img alt="{html.escape(ref)}" src="data:{_sniff_mime(raw)};base64,{b64}">'


def render_report(*, task: str, data_uri: str, metrics: dict, samples: list[dict], title: str = "") -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
                   for k, v in metrics.items() if not isinstance(v, dict))
    cards = []
    for s in samples:
        cls = "card" if s.get("ok") is None else ("card ok" if s["ok"] else "card bad")
        imgs = "".join(_img_tag(data_uri, ref) for ref in s.get("images", []))
        lines = "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>" for k, v in s.get("lines", []))
        cards.append(f'<div class="{cls}"><div>{imgs}</div><dl>{lines}</dl></div>')
    heading = html.escape(title or f"{task} evaluation")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{heading}</title><style>{_CSS}</style>"
            f"</head><body><h1>{heading}</h1><p>data: <code>{html.escape(data_uri)}</code></p>"
            f"<h2>Metrics</h2><table class='m'>{rows}</table>"
            f"<h2>Sample predictions</h2><div class='grid'>{''.join(cards)}</div></body></html>")


def write_report(uri: str, **kwargs) -> None:
    io.write_text(uri, render_report(**kwargs))


def _fmt(v) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def compare_inits(pretrained: dict[str, dict], random: dict[str, dict],
                  labels: tuple[str, str] = ("pretrained", "random")) -> tuple[str, dict]:
    """Two sets of metrics documents, {task: metrics.json} each -> (markdown table, JSON document).

    Each task row shows the task's selection metric (its metrics.json `selection_key`) for both inits and
    the difference; `better` is True when the pretrained init scored higher.
    """
    doc = {"columns": list(labels), "tasks": {}}
    lines = [f"| task | metric | {labels[0]} | {labels[1]} | difference |", "|---|---|---:|---:|---:|"]
    for task in sorted(set(pretrained) | set(random)):
        a, b = pretrained.get(task), random.get(task)
        key = (a or b).get("selection_key")
        va = a.get(key) if a else None
        vb = b.get(key) if b else None
        diff = va - vb if va is not None and vb is not None else None
        doc["tasks"][task] = {"metric": key, labels[0]: va, labels[1]: vb, "difference": diff,
                              "better": diff is not None and diff > 0}
        cell = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
        lines.append(f"| {task} | {key} | {cell(va)} | {cell(vb)} | {'–' if diff is None else f'{diff:+.2f}'} |")
    return "\n".join(lines) + "\n", doc


def write_comparison(pretrained_uris: dict[str, str], random_uris: dict[str, str], out_uri: str) -> dict:
    """Read metrics.json files ({task: uri}) and write out_uri/comparison.md and out_uri/comparison.json."""
    pre = {t: io.read_json(u) for t, u in pretrained_uris.items()}
    rnd = {t: io.read_json(u) for t, u in random_uris.items()}
    markdown, doc = compare_inits(pre, rnd)
    io.write_text(io.join(out_uri, "comparison.md"), markdown)
    io.write_json(io.join(out_uri, "comparison.json"), doc)
    return doc


def metrics_document(task: str, split: str, metrics: dict, data_uri: str) -> dict:
    """metrics.json: the metric values at the top level (so `--require acc>=50` can read them) plus context."""
    selection_key = TASKS[task].SELECTION_METRIC
    doc = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()}
    try:
        version = io.fingerprint(io.join(data_uri, "dataset.json"))
    except Exception:  # noqa: BLE001 - the fingerprint is informative only
        version = None
    doc.update(task=task, split=split, data=data_uri, dataset_version=version, selection_key=selection_key,
               selection_value=doc[selection_key])
    return doc

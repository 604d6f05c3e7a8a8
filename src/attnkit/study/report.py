"""The study's outputs: one self-contained HTML report (plots embedded) and one JSON file of
every figure, both written atomically into the output folder, plus each plot as a PNG file."""

from __future__ import annotations

import base64
import html
import json
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from attnkit import __version__


@dataclass(frozen=True)
class Figure:
    """A plot: a file-safe name, a caption, and the PNG image."""

    name: str
    caption: str
    png: bytes


@dataclass
class Section:
    """One measurement: what it shows, the verdict computed from its data, and the data."""

    key: str
    title: str
    claim: str  # the claim under test, in a sentence
    verdict: list[str]  # sentences computed from `data`, never written by hand
    data: dict[str, Any]  # every figure the section measured, JSON-ready
    header: list[str] = field(default_factory=list)  # the table, if any
    rows: list[list[str]] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # how it was measured


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "attnkit": __version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _write_atomically(path: Path, content: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(content)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2.5rem; border-bottom: 1px solid #ddd; }
.claim { color: #555; font-style: italic; }
.verdict { background: #f3f7ff; border-left: 4px solid #3a6ee8; padding: 0.5rem 1rem; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
td, th { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1rem 0; } figure img { max-width: 100%; }
figcaption, .notes { color: #555; font-size: 0.9rem; }
pre { background: #f7f7f7; padding: 0.8rem; overflow-x: auto; font-size: 0.8rem; }
"""


def _section_html(section: Section) -> str:
    e = html.escape
    parts = [f'<h2 id="{e(section.key)}">{e(section.title)}</h2>']
    parts.append(f'<p class="claim">{e(section.claim)}</p>')
    verdict = "".join(f"<li>{e(line)}</li>" for line in section.verdict)
    parts.append(f'<div class="verdict"><strong>Verdict</strong><ul>{verdict}</ul></div>')
    if section.header:
        head = "".join(f"<th>{e(h)}</th>" for h in section.header)
        body = "".join(
            "<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in section.rows
        )
        parts.append(f"<table><tr>{head}</tr>{body}</table>")
    for figure in section.figures:
        data = base64.b64encode(figure.png).decode("ascii")
        parts.append(
            f'<figure><img alt="{e(figure.caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{e(figure.caption)}</figcaption></figure>"
        )
    for note in section.notes:
        parts.append(f'<p class="notes">{e(note)}</p>')
    return "\n".join(parts)


def render_html(sections: list[Section], *, settings: dict, about: dict) -> str:
    """The whole report as one HTML page that needs no other file."""
    e = html.escape
    contents = "".join(f'<li><a href="#{e(s.key)}">{e(s.title)}</a></li>' for s in sections)
    summary = "".join(f"<li>{e(s.verdict[0])}</li>" for s in sections if s.verdict)
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            "<title>attnkit study: attention against recurrence</title>",
            f"<style>{_STYLE}</style></head><body>",
            "<h1>Attention against recurrence</h1>",
            f'<p class="notes">attnkit {e(__version__)} study, measured on '
            f"{e(str(about['processor']))} ({about['cpus']} CPUs, {about['torch_threads']} torch "
            f"threads), {e(about['platform'])}, torch {e(about['torch'])}.</p>",
            f"<h2>Summary</h2><ul>{summary}</ul>",
            f"<ul>{contents}</ul>",
            *(_section_html(section) for section in sections),
            "<h2>Settings and machine</h2>",
            f"<pre>{e(json.dumps({'settings': settings, 'machine': about}, indent=2))}</pre>",
            "</body></html>",
        ]
    )


def write_report(
    out_dir: Path, sections: list[Section], *, settings: dict, about: dict
) -> tuple[Path, Path]:
    """Write report.html, study.json and figures/*.png into `out_dir`; return the first two."""
    figures_dir = out_dir / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    for section in sections:
        for figure in section.figures:
            _write_atomically(figures_dir / f"{figure.name}.png", figure.png)
    figures = {
        "settings": settings,
        "machine": about,
        "sections": {
            s.key: {"title": s.title, "claim": s.claim, "verdict": s.verdict, "data": s.data}
            for s in sections
        },
    }
    json_path, html_path = out_dir / "study.json", out_dir / "report.html"
    _write_atomically(json_path, json.dumps(figures, indent=2).encode("utf-8"))
    page = render_html(sections, settings=settings, about=about)
    _write_atomically(html_path, page.encode("utf-8"))
    return html_path, json_path

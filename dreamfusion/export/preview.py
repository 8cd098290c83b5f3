"""The self-contained HTML preview: turntable video + interactive 3D viewer + mesh facts, one file.

Everything is inside the page (usable as a KFP HTML artifact, opened from disk, offline): the
video and poster as data: URIs, the GLB as base64 text parsed by the inlined viewer bundle
(``assets/viewer.min.js``: three.js + GLTFLoader + OrbitControls, built from ``tests/js/viewer``).
A Content-Security-Policy forbids every network fetch, so the page cannot leak a request.
"""

from __future__ import annotations

import base64
import html
import json
from importlib import resources
from pathlib import Path

CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data: blob:; "
    "media-src data: blob:; connect-src data: blob:"
)


def viewer_bundle() -> str:
    return resources.files("dreamfusion.export").joinpath("assets/viewer.min.js").read_text(encoding="utf-8")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _script_safe(js: str) -> str:
    return js.replace("</", "<\\/")


def render_html(
    title: str,
    video: bytes | None = None,
    poster_png: bytes | None = None,
    glb: bytes | None = None,
    facts: dict | None = None,
    caption: str = "",
) -> str:
    facts = facts or {}
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in facts.items()
    )
    video_html = ""
    if video is not None:
        poster = f' poster="data:image/png;base64,{_b64(poster_png)}"' if poster_png else ""
        video_html = (
            f'<figure><video id="turntable" autoplay muted loop playsinline controls{poster} '
            f'src="data:video/mp4;base64,{_b64(video)}"></video><figcaption>Turntable</figcaption></figure>'
        )
    elif poster_png:
        video_html = (
            f'<figure><img id="poster" alt="poster" src="data:image/png;base64,{_b64(poster_png)}"></figure>'
        )
    viewer_html = ""
    if glb is not None:
        viewer_html = (
            '<figure><canvas id="viewer" aria-label="interactive 3D view"></canvas>'
            "<figcaption>Drag to orbit, scroll to zoom</figcaption></figure>"
            f'<script id="glb" type="application/octet-stream">{_b64(glb)}</script>'
            f"<script>{_script_safe(viewer_bundle())}</script>"
            "<script>DreamfusionViewer.mount(document.getElementById('viewer'), "
            "document.getElementById('glb').textContent, {autoRotate: true});</script>"
        )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1rem; color: #222; background: #fff; }}
h1 {{ font-size: 1.2rem; margin: 0 0 .25rem; }}
p.caption {{ margin: 0 0 1rem; color: #555; }}
.panels {{ display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }}
figure {{ margin: 0; }}
video, img {{ display: block; max-width: min(100%, 1536px); height: auto; max-height: 512px;
  background: #f4f4f4; }}
canvas#viewer {{ display: block; width: 512px; height: 512px; max-width: 100%; background: #f4f4f4;
  touch-action: none; }}
figcaption {{ font-size: .8rem; color: #666; }}
table {{ border-collapse: collapse; margin-top: 1rem; font-size: .85rem; }}
th, td {{ text-align: left; padding: .15rem .8rem .15rem 0; }}
.viewer-error {{ color: #a00; }}
</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p class="caption">{html.escape(caption)}</p>
<div class="panels">{video_html}{viewer_html}</div>
<table>{rows}</table>
</body>
</html>
"""


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def write_preview(
    path: str | Path,
    title: str,
    video: str | Path | None = None,
    poster: str | Path | None = None,
    glb: str | Path | bytes | None = None,
    facts: dict | None = None,
    caption: str = "",
) -> Path:
    path = Path(path)
    rd = lambda p: None if p is None else (p if isinstance(p, bytes) else Path(p).read_bytes())  # noqa: E731
    from dreamfusion.files import write_text

    return write_text(path, render_html(title, rd(video), rd(poster), rd(glb), facts, caption))

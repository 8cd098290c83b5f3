"""A published catalog: every result of a catalog run under ``<catalog name>/<date>/`` in a
bucket, then ``index.json`` and an ``index.html`` gallery next to them.

    <name>/<date>/000-a-red-cube/mesh/{mesh.glb, mesh.obj, ...}
    <name>/<date>/000-a-red-cube/video/{turntable.mp4, poster.png, preview.html}
    <name>/<date>/index.json    {"catalog", "date", "prefix", "count", "items": [...]}
    <name>/<date>/index.html    posters linking to previews, GLB and MP4 links

Paths inside the index are relative to the prefix (the gallery's links work wherever the
prefix is served from); ``prefix + "/" + path`` is the object key. The index goes up last,
so whoever reads it finds every object it names.
"""

from __future__ import annotations

import datetime
import html
import json
import re
from dataclasses import dataclass
from pathlib import Path

from dreamfusion.errors import UserError
from dreamfusion.names import check_name, slug
from dreamfusion.store import Store

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
MESH_FILES = ("mesh.glb", "mesh.obj")
VIDEO_FILES = ("turntable.mp4", "poster.png", "preview.html")


def catalog_prefix(name: str, date: str = "") -> str:
    """``<name>/<date>``; ``date`` empty: today (UTC). A bad name or date is a UserError."""
    check_name(name, "catalog name")
    day = date or datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    try:
        if not _DATE.fullmatch(day):
            raise ValueError
        datetime.date.fromisoformat(day)
    except ValueError:
        raise UserError(f"catalog date {date!r}: must be YYYY-MM-DD (or empty for today)") from None
    return f"{name}/{day}"


@dataclass
class Result:
    """One prompt's outputs: the mesh-export folder and the video-render folder."""

    prompt: str
    mesh: Path
    video: Path

    @classmethod
    def from_folders(cls, prompt_set: str | Path, mesh: str | Path, video: str | Path) -> Result:
        try:
            prompt = json.loads((Path(prompt_set) / "prompts.json").read_text())["prompt"]
        except (OSError, KeyError, ValueError) as e:
            raise UserError(f"prompt set {prompt_set} is missing or corrupt ({type(e).__name__}: {e})") from None
        return cls(prompt, Path(mesh), Path(video))

    def check(self) -> None:
        for folder, names in ((self.mesh, MESH_FILES), (self.video, VIDEO_FILES)):
            missing = [n for n in names if not (folder / n).is_file()]
            if missing:
                raise UserError(f"result for {self.prompt!r} lacks {', '.join(missing)} in {folder}")


def item_folder(i: int, prompt: str) -> str:
    return f"{i:03d}-{slug(prompt)}"


def publish(store: Store, name: str, date: str, results: list[Result]) -> dict:
    """Upload every result under ``catalog_prefix(name, date)``, then index.json and index.html;
    returns the index."""
    prefix = catalog_prefix(name, date)
    if not results:
        raise UserError(f"catalog {name!r} has no results to publish")
    for r in results:
        r.check()  # before any upload: a catalog is published whole or not at all
    items = []
    for i, r in enumerate(results):
        folder = item_folder(i, r.prompt)
        store.put_tree(r.mesh, f"{prefix}/{folder}/mesh")
        store.put_tree(r.video, f"{prefix}/{folder}/video")
        items.append({
            "prompt": r.prompt,
            "folder": folder,
            "glb": f"{folder}/mesh/mesh.glb",
            "obj": f"{folder}/mesh/mesh.obj",
            "video": f"{folder}/video/turntable.mp4",
            "poster": f"{folder}/video/poster.png",
            "preview": f"{folder}/video/preview.html",
        })
    doc = {"catalog": name, "date": prefix.rsplit("/", 1)[1], "prefix": prefix, "count": len(items), "items": items}
    store.put_bytes(f"{prefix}/index.json", json.dumps(doc, indent=2).encode(), "application/json")
    store.put_bytes(f"{prefix}/index.html", gallery_html(doc).encode(), "text/html; charset=utf-8")
    return doc


def gallery_html(doc: dict) -> str:
    e = html.escape
    cards = "\n".join(
        f'<figure><a href="{e(i["preview"])}"><img src="{e(i["poster"])}" alt=""></a>'
        f'<figcaption>{e(i["prompt"])}<br><a href="{e(i["glb"])}">GLB</a> · '
        f'<a href="{e(i["video"])}">MP4</a></figcaption></figure>'
        for i in doc["items"]
    )
    title = f'{e(doc["catalog"])} · {e(doc["date"])}'
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>'
        "<style>body{font-family:sans-serif}main{display:flex;flex-wrap:wrap;gap:16px}"
        "figure{width:256px;margin:0}img{width:256px;height:256px;object-fit:contain;background:#eee}</style>"
        f'</head><body><h1>{title} · {doc["count"]} models</h1><main>\n{cards}\n</main></body></html>\n'
    )

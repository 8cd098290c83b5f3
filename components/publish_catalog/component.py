"""publish-catalog: every result of a catalog run, plus index.json and an index.html gallery,
to an object-store bucket under <catalog name>/<date>/."""

from typing import List

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Output

from components.platform import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def publish_catalog(
    prompt_sets: Input[List[Artifact]],
    meshes: Input[List[Artifact]],
    videos: Input[List[Artifact]],
    gallery: Output[HTML],
    index: Output[Artifact],
    catalog_name: str,
    store_endpoint: str,
    store_bucket: str,
    store_secure: bool = False,
    date: str = "",
) -> str:
    """Returns the key prefix the catalog was published under. ``date`` empty: today (UTC)."""
    import datetime
    import html
    import json
    import os
    import re

    from dreamfusion.store import Store

    if not (len(prompt_sets) == len(meshes) == len(videos)):
        raise ValueError(f"mismatched results: {len(prompt_sets)} prompt sets, {len(meshes)} meshes, {len(videos)} videos")
    day = date or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    prefix = f"{catalog_name.strip('/')}/{day}"
    store = Store(store_endpoint, store_bucket, store_secure, create_bucket=True)
    entries = []
    for i, (ps, mesh, video) in enumerate(zip(prompt_sets, meshes, videos)):
        prompt = json.load(open(os.path.join(ps.path, "prompts.json")))["prompt"]
        slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:48] or "item"
        item = f"{i:03d}-{slug}"
        store.put_tree(mesh.path, f"{prefix}/{item}/mesh")
        store.put_tree(video.path, f"{prefix}/{item}/video")
        entries.append({
            "prompt": prompt,
            "folder": item,
            "glb": f"{item}/mesh/mesh.glb",
            "obj": f"{item}/mesh/mesh.obj",
            "video": f"{item}/video/turntable.mp4",
            "poster": f"{item}/video/poster.png",
            "preview": f"{item}/video/preview.html",
        })
    doc = {"catalog": catalog_name, "date": day, "count": len(entries), "items": entries}
    cards = "\n".join(
        f'<figure><a href="{html.escape(e["preview"])}"><img src="{html.escape(e["poster"])}" alt=""></a>'
        f'<figcaption>{html.escape(e["prompt"])}<br><a href="{html.escape(e["glb"])}">GLB</a> · '
        f'<a href="{html.escape(e["video"])}">MP4</a></figcaption></figure>'
        for e in entries
    )
    page = (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(catalog_name)} {day}</title>'
        "<style>body{font-family:sans-serif}main{display:flex;flex-wrap:wrap;gap:16px}"
        "figure{width:256px;margin:0}img{width:256px;height:256px;object-fit:contain;background:#eee}</style>"
        f"</head><body><h1>{html.escape(catalog_name)} · {day} · {len(entries)} models</h1><main>\n{cards}\n</main></body></html>"
    )
    with open(index.path, "w") as f:
        json.dump(doc, f, indent=2)
    with open(gallery.path, "w") as f:
        f.write(page)
    store.put_file(f"{prefix}/index.json", index.path, "application/json")
    store.put_file(f"{prefix}/index.html", gallery.path, "text/html")
    index.metadata.update({"bucket": store_bucket, "prefix": prefix, "count": len(entries)})
    print(f"publish-catalog: {len(entries)} results -> {store_bucket}/{prefix}/index.html")
    return prefix

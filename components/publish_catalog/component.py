"""publish-catalog: every result of a catalog run, plus index.json and an index.html gallery,
to an object-store bucket under <catalog name>/<date>/ (dreamfusion.store.catalog)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Output

from components.platform import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def publish_catalog(
    prompt_sets: Input[list[Artifact]],
    meshes: Input[list[Artifact]],
    videos: Input[list[Artifact]],
    gallery: Output[HTML],
    index: Output[Artifact],
    catalog_name: str,
    store_endpoint: str,
    store_bucket: str,
    store_secure: bool = False,
    date: str = "",
) -> str:
    """Returns the key prefix the catalog was published under. ``date`` empty: today (UTC).
    Credentials come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (the store Secret)."""
    import json

    from dreamfusion.errors import UserError
    from dreamfusion.store import Store
    from dreamfusion.store.catalog import Result, gallery_html, publish

    if not (len(prompt_sets) == len(meshes) == len(videos)):
        counts = f"{len(prompt_sets)} prompt sets, {len(meshes)} meshes, {len(videos)} videos"
        raise ValueError(f"mismatched results: {counts}")
    try:
        results = [Result.from_folders(p.path, m.path, v.path) for p, m, v in zip(prompt_sets, meshes, videos)]
        store = Store(store_endpoint, store_bucket, store_secure, create_bucket=True)
        doc = publish(store, catalog_name, date, results)
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    with open(index.path, "w") as f:
        json.dump(doc, f, indent=2)
    with open(gallery.path, "w") as f:
        f.write(gallery_html(doc))
    index.metadata.update({"bucket": store_bucket, "prefix": doc["prefix"], "count": doc["count"]})
    print(f"publish-catalog: {doc['count']} results -> {store_bucket}/{doc['prefix']}/index.html")
    return doc["prefix"]

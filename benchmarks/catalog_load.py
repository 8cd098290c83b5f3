"""A catalog of 50 prompts through kfp.local: every prompt of the shapes world (a template) and 20
literal ones chosen to collide as keys (case, spacing, punctuation, path characters, device names,
emoji), with the offline prior and a few steps each, published to a local S3 server. Checks that
the index lists every prompt exactly once, in a folder of its own, with every file, and that each
item's preview is titled with its own prompt (no mixed-up results); prints the wall time.

    python -m benchmarks.catalog_load [--steps 8] [--parallelism 4]
"""

from __future__ import annotations

import argparse
import html
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = "a {red|green|blue|yellow|white|purple} {cube|sphere|cylinder|cone|torus}"
LITERAL = [
    "A Red Cube", "a  red cube", "a red cube.", "a red cube!", "A RED CUBE", "a red cube?", "../red cube",
    "red/../cube", "a red\\cube", "con", "NUL", "aux.cube", "🍔", "🍔🍔", "a 🍔 cube", "cube", "CUBE", "c u b e",
    "-a red cube", ".a red cube",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.catalog_load", description=__doc__)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--parallelism", type=int, default=4)
    p.add_argument("--count", type=int, default=50, help="the last COUNT of the 50 prompts (a quick check)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import os

    from kfp import local

    from dreamfusion.config.presets import PRESETS, SHAPES_GUIDANCE_SCALE
    from dreamfusion.data.templates import expand_template
    from dreamfusion.store import Store
    from dreamfusion.store.local_server import LocalS3
    from pipelines.catalog import build_catalog

    prompts = expand_template(TEMPLATE) + LITERAL
    assert len(prompts) == len(set(prompts)) == 50
    work = Path(tempfile.mkdtemp(prefix="catalog-load-"))
    with LocalS3(work / "weed") as s3:
        os.environ.update(s3.env)
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        Store(s3.endpoint, "ckpt", create_bucket=True).ensure_bucket()
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(work / "root"))
        shapes = [o for o in PRESETS["cpu"] + PRESETS["shapes"]
                  if not o.startswith(("guidance=", "model.guidance_scale=", "model.data.train_dataset.width",
                                       "model.data.train_dataset.height"))]
        run_prompts = prompts[-args.count:]
        began = time.time()
        build_catalog(parallelism=args.parallelism)(
            catalog_name="load", prompts=run_prompts, templates=[], date="2030-01-02", seed=0,
            iterations=args.steps, guidance_scale=SHAPES_GUIDANCE_SCALE, guidance="shapes", guidance_model="",
            resolution=32,
            mesh_resolution=32, video_frames=2, video_size=32, video_renderer="raster",
            overrides=[*shapes, "trainer.compile=false", "trainer.val_check_interval=0",
                       "model.renderer.grid_resolution=16"],
            dmtet=False, store_endpoint=s3.endpoint, checkpoint_bucket="ckpt", catalog_bucket="catalog",
        )
        wall = time.time() - began
        store = Store(s3.endpoint, "catalog")
        index = json.loads(store.get_bytes("load/2030-01-02/index.json"))
        listed = [e["prompt"] for e in index["items"]]
        assert sorted(listed) == sorted(run_prompts), set(listed) ^ set(run_prompts)
        assert len(listed) == len(set(listed)) == len(run_prompts)
        folders = [e["folder"] for e in index["items"]]
        assert len(set(folders)) == len(folders) and len(set(f.lower() for f in folders)) == len(folders)
        keys = {o.key for o in store.list("load/2030-01-02/")}
        for e in index["items"]:
            for field in ("glb", "obj", "video", "poster", "preview"):
                assert f"load/2030-01-02/{e[field]}" in keys, (e["prompt"], field)
            page = store.get_bytes(f"load/2030-01-02/{e['preview']}").decode()
            assert html.escape(e["prompt"]) in page, e["prompt"]  # titled with its own prompt
        print(f"catalog-load: {len(run_prompts)} prompts, {args.steps} steps each, parallelism {args.parallelism}: "
              f"index lists each once in {len(set(folders))} distinct folders, every file present; "
              f"wall time {wall:.0f} s ({wall / len(run_prompts):.1f} s a prompt)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

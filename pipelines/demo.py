"""``make demo``: the text_to_3d pipeline on this machine through kfp.local, with the offline prior.

    python -m pipelines.demo [--prompt "a red cube"] [--iterations 600] [--output outputs/demo]

The same DAG as on a cluster (prompt-expansion -> nerf-sds -> dmtet-finetune -> mesh-export ->
video-render), each task a local subprocess, on the CPU, guided by the shapes prior that ships in
the package, so nothing is downloaded. Both training stages run their ``cpu`` and ``shapes``
presets: 600 NeRF steps at 32x32, then 200 DMTet steps (4 views of 32x32 each) on a 32^3 tet grid
with the torch rasterizer. Prints where the GLB, the MP4 and the HTML preview are.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from dreamfusion.config.presets import SHAPES_GUIDANCE_SCALE, expand

SWITCH = (
    "For Stable Diffusion (GPU, model hub or a local copy): python -m dreamfusion.stages.nerf_sds --output DIR "
    "guidance=sd_huggingface model.prompt='a hamburger', or submit pipelines/text_to_3d.yaml to Kubeflow."
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.demo", description=__doc__.split("\n")[0])
    p.add_argument("--prompt", default="a red cube")
    p.add_argument("--iterations", type=int, default=600, help="nerf-sds steps")
    p.add_argument("--dmtet-iterations", type=int, default=200, help="dmtet-finetune steps (0: no DMTet stage)")
    p.add_argument("--output", type=Path, default=Path("outputs/demo"))
    p.add_argument("--guidance-model", default="dreamfusion-shapes", help="prior folder (default: the shipped one)")
    args = p.parse_args(argv)

    from kfp import local

    from pipelines.stages import dmtet_presets
    from pipelines.text_to_3d import text_to_3d

    print(f"demo: '{args.prompt}' with the offline shapes prior (guidance=shapes), on the CPU through kfp.local.")
    print(f"demo: {SWITCH}")
    root = args.output.resolve() / "pipeline_root"
    shutil.rmtree(root, ignore_errors=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    began = time.time()
    text_to_3d(
        prompt=args.prompt, seed=0, iterations=args.iterations, guidance_scale=SHAPES_GUIDANCE_SCALE, guidance="shapes",
        guidance_model=args.guidance_model, resolution=32, mesh_resolution=128, video_frames=60, video_size=256,
        video_renderer="raster",
        overrides=expand(["cpu", "shapes"]) + ["trainer.val_check_interval=200", "trainer.checkpoint_interval=200"],
        dmtet=args.dmtet_iterations > 0, dmtet_iterations=max(args.dmtet_iterations, 1), dmtet_resolution=32,
        dmtet_grid=32,
        dmtet_overrides=dmtet_presets("cpu", "shapes")
        + ["trainer.val_check_interval=0", "trainer.checkpoint_interval=100"],
        checkpoint_store_endpoint="",
    )
    found = {name: sorted(root.rglob(name)) for name in ("mesh.glb", "turntable.mp4", "preview")}
    print(f"demo: finished in {time.time() - began:.0f} s")
    for name, paths in found.items():
        print(f"demo: {name:14s} {paths[-1] if paths else 'MISSING'}")
    return 0 if all(found.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

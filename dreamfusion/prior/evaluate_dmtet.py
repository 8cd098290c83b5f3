"""What the DMTet fine-tune does to the exported mesh, in the shapes world.

    python -m dreamfusion.prior.evaluate_dmtet [--prompts "a red cube" ...] [--seed 0] [--jobs 2] [--card]

For each prompt: nerf-sds with ``--preset cpu --preset shapes`` (as ``make demo``), mesh-export of
the NeRF; dmtet-finetune from that checkpoint with ``--preset cpu --preset shapes``, mesh-export
of its checkpoint; both meshes scored against the true primitive by
``dreamfusion.prior.score`` (silhouette IoU, Chamfer distance as a fraction of the size,
non-manifold edges, the cube's normal noise). Both exports use make demo's settings (128 cells,
the default face count). Prints a table, writes a before/after picture and a JSON report, and with
``--card`` puts both into the prior's model card.

Prompts run ``--jobs`` at once, each on ``--threads`` CPU threads (default 1): a CPU reduction's
result depends on how many threads share it, and 600 SDS steps carry that last-bit difference into
a visibly different NeRF, so the thread count is fixed, not the machine's, and one seed gives the
same figures on every run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dreamfusion.prior import score
from dreamfusion.prior.evaluate import PROMPTS_3D, parse_prompt
from dreamfusion.prior.pool import worker_pool
from dreamfusion.stages import cli

CARD = Path(__file__).parent / "shapes" / "README.md"
PICTURE = Path(__file__).parent / "shapes" / "dmtet_before_after.png"
CARD_MARK = "\n### DMTet fine-tune\n"
MESH_RESOLUTION = 128


def run(stage, argv: list[str]) -> None:
    if cli.run(stage.main, argv) != 0:
        raise SystemExit(f"{stage.__name__} failed: {argv}")


def evaluate(
    prompt: str, seed: int, iters: int, dmtet_iters: int, folder: Path, extra: list[str], threads: int = 1
) -> dict:
    from dreamfusion.stages import dmtet_finetune, mesh_export, nerf_sds

    torch.set_num_threads(threads)
    cli.quiet_libraries()
    began = time.time()
    run(nerf_sds, ["--output", str(folder / "nerf"), "--preset", "cpu", "--preset", "shapes", "--quiet",
                   f"model.prompt={prompt}", f"trainer.seed={seed}", f"trainer.max_steps={iters}",
                   "trainer.val_check_interval=0", "trainer.checkpoint_interval=0"])
    nerf_seconds = time.time() - began
    began = time.time()
    run(dmtet_finetune, ["--checkpoint", str(folder / "nerf" / "checkpoints" / "last.pt"), "--output",
                         str(folder / "dmtet"), "--preset", "cpu", "--preset", "shapes", "--quiet",
                         f"trainer.max_steps={dmtet_iters}", "trainer.val_check_interval=0",
                         "trainer.checkpoint_interval=0", *extra])
    dmtet_seconds = time.time() - began
    out = {"prompt": prompt, "shape": parse_prompt(prompt)[1], "nerf_seconds": nerf_seconds,
           "dmtet_seconds": dmtet_seconds, "threads": threads}
    for name in ("nerf", "dmtet"):
        mesh_dir = folder / f"mesh-{name}"
        run(mesh_export, ["--checkpoint", str(folder / name / "checkpoints" / "last.pt"), "--output",
                          str(mesh_dir), "--resolution", str(MESH_RESOLUTION), "--texture", "512", "--quiet"])
        out[name] = score.score(prompt, mesh=mesh_dir / "mesh.glb")["mesh"]
        out[f"{name}_glb"] = str(mesh_dir / "mesh.glb")
    return out


def picture(results: list[dict], path: Path, size: int = 160) -> None:
    """Rows: prompts; columns: NeRF mesh (colour, normals), DMTet mesh (colour, normals)."""
    from dreamfusion.export.turntable import TurntableOptions, cameras, load_mesh, shade_mesh

    cams = cameras(TurntableOptions(frames=8, size=size, elevation=25.0))
    view = 1  # azimuth 45: two faces of a cube
    rows = []
    for r in results:
        tiles = []
        for name in ("nerf", "dmtet"):
            mesh = load_mesh(r[f"{name}_glb"])
            img = shade_mesh(mesh, cams.c2w[view], float(cams.fovy[view]), size, ("rgb", "normal"),
                             (1.0, 1.0, 1.0), 3.2)
            tiles.append(img)
        rows.append(torch.cat(tiles, 1))
    grid = (torch.cat(rows, 0).clamp(0, 1) * 255).round().byte().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)


def table(results: list[dict]) -> list[str]:
    lines = [
        "| prompt | IoU NeRF -> DMTet | Chamfer / size NeRF -> DMTet | non-manifold edges | bodies "
        "| cube normal noise |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        a, b = r["nerf"], r["dmtet"]
        noise = (f"{a['normal_noise_deg']:.1f} -> {b['normal_noise_deg']:.1f} deg"
                 if "normal_noise_deg" in a else "")
        lines.append(
            f"| {r['prompt']} | {a['iou']:.3f} -> {b['iou']:.3f} | {a['chamfer']:.4f} -> {b['chamfer']:.4f} "
            f"| {a['non_manifold_edges']} -> {b['non_manifold_edges']} | {a['bodies']} -> {b['bodies']} | {noise} |"
        )
    return lines


def passed(r: dict) -> bool:
    a, b = r["nerf"], r["dmtet"]
    ok = b["iou"] >= a["iou"] and b["chamfer"] < a["chamfer"] and b["non_manifold_edges"] == 0
    if "normal_noise_deg" in a:
        ok = ok and b["normal_noise_deg"] <= a["normal_noise_deg"] / 2
    return ok


def put_card_section(card: Path, mark: str, body: str) -> None:
    """Replace the model card's section that starts at ``mark`` (up to the next ``## `` or ``### ``
    heading, so the subsections after it stay) with ``body``, or insert it before ``## Limits``
    when the card has none yet."""
    text = card.read_text()
    head, found, rest = text.partition(mark)
    if not found:
        head, sep, rest = text.partition("\n## Limits")
        rest = sep + rest
    else:
        ends = [i for i in (rest.find("\n## "), rest.find("\n### ")) if i >= 0]
        rest = rest[min(ends) :] if ends else "\n"
    card.write_text(head + mark + body + rest)


def write_card(results: list[dict], seed: int, iters: int, dmtet_iters: int) -> None:
    body = [
        "",
        f"By `python -m dreamfusion.prior.evaluate_dmtet` (seed {seed}): nerf-sds {iters} steps, then "
        f"dmtet-finetune {dmtet_iters} steps, both with `--preset cpu --preset shapes` as `make demo` runs them; "
        f"each checkpoint through mesh-export at {MESH_RESOLUTION} cells; scored against the true primitive "
        "(`dreamfusion.prior.score`: silhouette IoU over 24 azimuths at 64x64, the cube at its best yaw, "
        "symmetric Chamfer "
        "distance of 20,000 surface samples as a fraction of the size, edges with more than two faces, "
        "connected pieces of surface, and for the cube the mean angle between adjacent face normals on its flat "
        "faces):",
        "",
        *table(results),
        "",
        "Criteria (IoU does not drop, Chamfer lower, no non-manifold edges, cube normal noise at least halved): "
        + "; ".join(f"{r['prompt']} {'pass' if passed(r) else 'FAIL'}" for r in results)
        + f". Each prompt ran on {results[0]['threads']} CPU thread{'' if results[0]['threads'] == 1 else 's'}: "
        "with one seed and one thread count "
        "the NeRFs and meshes are the same on every run; another thread count sums in another order and, "
        "600 steps later, gives another NeRF (its figures move by as much as DMTet's gains).",
        "",
        "DMTet starts on mesh-export's surface of the NeRF's largest body (`MeshScene.init_from_nerf`: the "
        "signs from that solid, the values near it each grid vertex's distance to its marching-cubes mesh; "
        "\"DMTet: the start\" below): closed cavities inside the NeRF's density, which no render shows and SDS "
        "therefore never removes, are filled, and floaters are dropped; the surface it outputs is the same "
        "rule applied to what training left "
        "(`DMTet.mesh(solid=True)`: training can close a dent into a cavity). mesh-export of the NeRF keeps both "
        "(the bodies column: the NeRF's surface and one per cavity or floater).",
        "",
        f"![NeRF mesh (left pair) and DMTet mesh (right pair), colour and normals]({PICTURE.name})",
        "",
    ]
    put_card_section(CARD, CARD_MARK, "\n".join(body))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dreamfusion.prior.evaluate_dmtet", description=__doc__.split("\n")[0])
    p.add_argument("--prompts", nargs="+", default=list(PROMPTS_3D))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iters", type=int, default=600, help="nerf-sds steps (make demo's)")
    p.add_argument("--dmtet-iters", type=int, default=200, help="dmtet-finetune steps (make demo's)")
    p.add_argument("--report", type=Path, default=Path("outputs/eval_dmtet.json"))
    p.add_argument("--picture", type=Path, default=None, help=f"before/after picture (default with --card: {PICTURE})")
    p.add_argument("--card", action="store_true", help="write the table and picture into the model card")
    p.add_argument("--jobs", type=int, default=2, help="prompts at once, each in its own process")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of each (fixed: see above)")
    p.add_argument("overrides", nargs="*", help="extra overrides for dmtet-finetune")
    args = p.parse_args(argv)
    if args.jobs < 1 or args.threads < 1:
        p.error("--jobs and --threads must be at least 1")
    cli.quiet_libraries()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep, not spin
    with tempfile.TemporaryDirectory() as tmp:
        with worker_pool(min(args.jobs, len(args.prompts))) as pool:
            futures = [
                pool.submit(evaluate, prompt, args.seed, args.iters, args.dmtet_iters,
                            Path(tmp) / prompt.replace(" ", "_"), args.overrides, args.threads)
                for prompt in args.prompts
            ]
            results = [f.result() for f in futures]
        pic = args.picture or (PICTURE if args.card else args.report.with_suffix(".png"))
        picture(results, pic)
    for line in table(results):
        print(line)
    for r in results:
        print(f"{r['prompt']}: {'PASS' if passed(r) else 'FAIL'} (nerf {r['nerf_seconds']:.0f} s, "
              f"dmtet {r['dmtet_seconds']:.0f} s)")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(results, indent=2, default=_plain))
    if args.card:
        write_card(results, args.seed, args.iters, args.dmtet_iters)
    return 0 if all(passed(r) for r in results) else 1


def _plain(x):
    return float(x) if isinstance(x, (np.floating, np.integer)) else str(x)


if __name__ == "__main__":
    sys.exit(main())

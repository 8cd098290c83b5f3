"""The whole shapes world in 3D: every prompt through the stages as ``make demo`` runs them, scored.

    python -m dreamfusion.prior.evaluate_world [--jobs 2] [--seeds 0] [--lowest 6] [--card] [--keep-nerf]
        [--prompts "a red cube" ...] [--results outputs/eval_world.json] [overrides ...]

For each of the 30 prompts (5 shapes x 6 colours) and seed 0: prompt-expansion, nerf-sds (600
steps) and mesh-export (128 cells), each with make demo's settings (``--preset cpu --preset
shapes``), then ``dreamfusion.prior.score`` on the NeRF's albedo renders and on the exported mesh.
The ``--lowest`` prompts (lowest IoU of the NeRF or the mesh) run again with seeds 1 and 2. Runs
go to ``--jobs`` processes at once (the cores split between them); a line per finished run shows
progress. Results are written after every run and a later call with the same settings skips what
is done, so an interrupted evaluation resumes (the settings include make demo's presets and a digest
of the package's code: after a change to either, it starts again). ``--card`` puts the tables and a picture of every
mesh into the prior's model card. Exit 0 when every run passes and the mean IoU (NeRF and mesh) is
at least ``MIN_MEAN_IOU``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from concurrent.futures import as_completed
from pathlib import Path

from dreamfusion import files
from dreamfusion.config.presets import expand
from dreamfusion.names import slug
from dreamfusion.prior.data import COLOURS, SHAPES, caption
from dreamfusion.prior.evaluate_dmtet import put_card_section
from dreamfusion.prior.pool import worker_pool

CARD = Path(__file__).parent / "shapes" / "README.md"
PICTURE = Path(__file__).parent / "shapes" / "world_meshes.png"
CARD_MARK = "\n### Whole world\n"
MIN_MEAN_IOU = 0.85
ITERS = 600
MESH_RESOLUTION = 128
WORLD = tuple(caption(c, s) for s in SHAPES for c in COLOURS)


def code_digest(root: Path | None = None) -> str:
    """SHA-256 (12 hex) of the package's Python sources under ``root`` (default: this package), the
    evaluations' own modules (``prior/evaluate*.py``: tables and cards, not results) left out."""
    root = root or Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[:-1] == ("prior",) and rel.name.startswith("evaluate"):
            continue
        h.update(rel.as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def _slug(prompt: str, seed: int) -> str:
    return f"{slug(prompt)}-s{seed}"


def run_one(
    prompt: str, seed: int, iters: int, folder: str, overrides: list[str], threads: int, keep_nerf: bool = False
) -> dict:
    """One prompt and seed through prompt-expansion, nerf-sds and mesh-export; its score."""
    import torch

    torch.set_num_threads(threads)
    from dreamfusion.prior import score
    from dreamfusion.renderer.scene import Scene
    from dreamfusion.stages import cli, mesh_export, nerf_sds, prompt_expansion

    cli.quiet_libraries()
    work = Path(folder)
    shutil.rmtree(work, ignore_errors=True)
    presets = ["--preset", "cpu", "--preset", "shapes"]
    began = time.time()

    def stage(module, argv):
        rc = cli.run(module.main, argv)
        if rc != 0:
            raise RuntimeError(f"{module.__name__.rsplit('.', 1)[-1]} exited with {rc} for {prompt!r} seed {seed}")

    # the overrides reach prompt-expansion too: it encodes with the guidance model they may name
    stage(prompt_expansion, ["--output", str(work / "prompts"), *presets, f"model.prompt={prompt}", *overrides])
    stage(nerf_sds, ["--output", str(work / "nerf"), "--prompts", str(work / "prompts"), *presets, "--quiet",
                     f"trainer.seed={seed}", f"trainer.max_steps={iters}", "trainer.val_check_interval=0",
                     "trainer.checkpoint_interval=0", *overrides])
    nerf_seconds = time.time() - began
    ckpt = work / "nerf" / "checkpoints" / "last.pt"
    stage(mesh_export, ["--checkpoint", str(ckpt), "--output", str(work / "mesh"),
                        "--resolution", str(MESH_RESOLUTION), "--quiet"])
    scene, _ = Scene.from_checkpoint(ckpt)
    out = score.score(prompt, nerf=score.nerf_views(scene), mesh=work / "mesh" / "mesh.glb")
    out.update(seed=seed, nerf_seconds=round(nerf_seconds, 1), seconds=round(time.time() - began, 1))
    if keep_nerf:  # its last checkpoint, to export or score again
        for extra in (work / "nerf" / "checkpoints").glob("step-*.pt"):
            extra.unlink()
    else:  # keep the mesh (for the picture), not the checkpoints
        shutil.rmtree(work / "nerf", ignore_errors=True)
    shutil.rmtree(work / "prompts", ignore_errors=True)
    return out


def lowest_iou(s: dict) -> float:
    return min(s[k]["iou"] for k in ("nerf", "mesh") if k in s)


def _write_json(path: Path, data: dict) -> None:
    files.write_text(path, json.dumps(data, indent=1, default=float))


def summary(runs: list[dict]) -> dict:
    seed0 = [r for r in runs if r["seed"] == 0]
    ious = [r[k]["iou"] for r in seed0 for k in ("nerf", "mesh")]
    return {
        "runs": len(runs),
        "passed": sum(r["passed"] for r in runs),
        "seed0_passed": sum(r["passed"] for r in seed0),
        "seed0_runs": len(seed0),
        "mean_nerf_iou": sum(r["nerf"]["iou"] for r in seed0) / max(len(seed0), 1),
        "mean_mesh_iou": sum(r["mesh"]["iou"] for r in seed0) / max(len(seed0), 1),
        "mean_iou": sum(ious) / max(len(ious), 1),
    }


def table(runs: list[dict]) -> list[str]:
    lines = ["| prompt | seed | NeRF IoU | mesh IoU | mesh vs NeRF | shape (NeRF / mesh) | colour (NeRF / mesh) | |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        n, m = r["nerf"], r["mesh"]
        lines.append(
            f"| {r['prompt']} | {r['seed']} | {n['iou']:.3f} | {m['iou']:.3f} "
            f"| {m.get('iou_vs_nerf', float('nan')):.3f} "
            f"| {n['best_shape']} / {m['best_shape']} | {n['colour']} / {m['colour']} "
            f"| {'pass' if r['passed'] else 'FAIL: ' + ', '.join(r['failures'])} |"
        )
    return lines


def picture(runs: list[dict], root: Path, path: Path, size: int = 96) -> None:
    """One view (azimuth 45, elevation 25) of every seed-0 mesh: a row per shape, a column per colour."""
    import torch
    from PIL import Image

    from dreamfusion.export.turntable import TurntableOptions, cameras, load_mesh, shade_mesh

    cams = cameras(TurntableOptions(frames=8, size=size, elevation=25.0))
    by_prompt = {r["prompt"]: r for r in runs if r["seed"] == 0}
    rows = []
    for shape in SHAPES:
        tiles = []
        for colour in COLOURS:
            glb = root / _slug(caption(colour, shape), 0) / "mesh" / "mesh.glb"
            if caption(colour, shape) in by_prompt and glb.is_file():
                tiles.append(shade_mesh(load_mesh(glb), cams.c2w[1], float(cams.fovy[1]), size, ("rgb",),
                                        (1.0, 1.0, 1.0), 3.2))
            else:
                tiles.append(torch.ones(size, size, 3))
        rows.append(torch.cat(tiles, 1))
    grid = (torch.cat(rows, 0).clamp(0, 1) * 255).round().byte().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)


def write_card(runs: list[dict], settings: dict, seconds: float) -> None:
    s = summary(runs)
    seed0 = [r for r in runs if r["seed"] == 0]
    again = [r for r in runs if r["seed"] != 0]
    body = [
        "",
        f"By `python -m dreamfusion.prior.evaluate_world --card` (`make eval-world`): every prompt of the world "
        f"through prompt-expansion, nerf-sds ({settings['iters']} steps) and mesh-export ({MESH_RESOLUTION} cells) "
        "with make demo's settings, scored by `dreamfusion.prior.score` (silhouette IoU against the true primitive "
        "over 24 azimuths at 64x64, the cube at its best yaw, 2x2 rays per pixel for the NeRF, the mesh and the "
        "truth alike, the best-matching "
        "primitive, the colour; the mesh also against the NeRF's own renders and for manifoldness)"
        + (f", extra overrides `{' '.join(settings['overrides'])}`" if settings["overrides"] else "")
        + f". Seed 0: {s['seed0_passed']}/{s['seed0_runs']} pass; mean IoU NeRF {s['mean_nerf_iou']:.3f}, "
        f"mesh {s['mean_mesh_iou']:.3f}. All runs: {s['passed']}/{s['runs']}. Wall time {seconds / 60:.0f} min "
        f"({settings['jobs']} processes on {os.cpu_count()} cores).",
        "",
        *table(seed0),
        "",
    ]
    if again:
        body += ["The lowest prompts again, with other seeds:", "", *table(again), ""]
    body += [f"![One mesh per prompt: a row per shape, a column per colour]({PICTURE.name})", ""]
    put_card_section(CARD, CARD_MARK, "\n".join(body))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dreamfusion.prior.evaluate_world",
                                description=__doc__.split("\n")[0])
    p.add_argument("--prompts", nargs="+", default=list(WORLD))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--lowest", type=int, default=6, help="prompts run again with seeds 1 and 2")
    p.add_argument("--iters", type=int, default=ITERS, help="nerf-sds steps (make demo's)")
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 1)))
    p.add_argument("--results", type=Path, default=Path("outputs/eval_world.json"))
    p.add_argument("--card", action="store_true", help="write the tables and the picture into the model card")
    p.add_argument("--keep-nerf", action="store_true", help="keep each run's last NeRF checkpoint")
    p.add_argument("overrides", nargs="*", help="extra overrides for nerf-sds")
    args = p.parse_args(argv)
    from dreamfusion.prior.evaluate import prompt_error

    bad = prompt_error(args.prompts)
    if bad:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    if args.jobs < 1 or args.iters < 1 or args.lowest < 0:
        print("error: --jobs and --iters must be at least 1, --lowest at least 0", file=sys.stderr)
        return 2
    settings = {"iters": args.iters, "overrides": args.overrides, "mesh_resolution": MESH_RESOLUTION,
                "presets": expand(["cpu", "shapes"]), "code": code_digest()}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    work = args.results.with_suffix("")
    work.mkdir(parents=True, exist_ok=True)
    data = json.loads(args.results.read_text()) if args.results.is_file() else {}
    if data.get("digest") != digest:
        data = {"digest": digest, "settings": settings, "runs": {}, "seconds": 0.0}
    done: dict[str, dict] = data["runs"]
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # workers' idle OpenMP threads sleep, not spin
    began = time.time()
    spent_before = data.get("seconds", 0.0)

    def batch(pairs: list[tuple[str, int]]) -> None:
        todo = [(pr, sd) for pr, sd in pairs if _slug(pr, sd) not in done]
        if not todo:
            return
        print(f"evaluate_world: {len(todo)} runs ({len(pairs) - len(todo)} already done), {args.jobs} at once, "
              f"{threads} threads each", flush=True)
        t0 = time.time()
        with worker_pool(args.jobs) as pool:
            futures = {pool.submit(run_one, pr, sd, args.iters, str(work / _slug(pr, sd)), args.overrides, threads,
                                   args.keep_nerf):
                       (pr, sd) for pr, sd in todo}
            for i, fut in enumerate(as_completed(futures), 1):
                pr, sd = futures[fut]
                try:
                    res = fut.result()
                except Exception as e:  # a failed run is a result, not the end of the evaluation
                    print(f"  {pr!r} seed {sd}: {e}", flush=True)
                    continue
                done[_slug(pr, sd)] = res
                data["seconds"] = spent_before + time.time() - began
                _write_json(args.results, data)
                from dreamfusion.prior.score import headline

                eta = (time.time() - t0) / i * (len(todo) - i)
                print(f"[{i}/{len(todo)}] seed {sd} {headline(res)}  ({res['seconds']:.0f} s; "
                      f"about {eta / 60:.0f} min left)", flush=True)

    batch([(pr, sd) for sd in args.seeds for pr in args.prompts])
    seed0 = sorted((r for r in done.values() if r["seed"] == 0 and r["prompt"] in args.prompts), key=lowest_iou)
    lowest = [r["prompt"] for r in seed0[: args.lowest]]
    batch([(pr, sd) for sd in (1, 2) for pr in lowest])
    order = {pr: i for i, pr in enumerate(args.prompts)}
    runs = sorted((r for r in done.values() if r["prompt"] in order), key=lambda r: (r["seed"], order[r["prompt"]]))
    for line in table(runs):
        print(line)
    s = summary(runs)
    print(f"evaluate_world: seed 0 {s['seed0_passed']}/{s['seed0_runs']} pass, all runs {s['passed']}/{s['runs']}; "
          f"mean IoU {s['mean_iou']:.3f} (NeRF {s['mean_nerf_iou']:.3f}, mesh {s['mean_mesh_iou']:.3f}); "
          f"wall time {data['seconds'] / 60:.1f} min")
    if args.card:
        picture(runs, work, PICTURE)
        write_card(runs, {**settings, "jobs": args.jobs}, data["seconds"])
    ok = s["passed"] == s["runs"] and s["mean_iou"] >= MIN_MEAN_IOU
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""The shapes prior drives the nerf-sds engine to the named object (a quick, looser version of
``make eval-prior``: fewer iterations, a lower IoU bound)."""

from pathlib import Path

import pytest

from dreamfusion.prior.evaluate import analyse_renders, eval_cameras, judge_3d
from dreamfusion.prior.model import SHAPES_DIR

pytestmark = pytest.mark.skipif(not (Path(SHAPES_DIR) / "unet").is_dir(), reason="no trained prior (make prior)")


def test_blue_sphere_in_a_few_hundred_steps(tmp_path):
    from dreamfusion.prior.evaluate_3d import train_and_render

    cams = eval_cameras(8, 64)
    rgb, opacity = train_and_render("a blue sphere", cams, iters=250, seed=0, folder=tmp_path, progress=False)
    verdict = judge_3d("a blue sphere", analyse_renders(rgb, opacity, cams, "sphere"), min_iou=0.6)
    assert verdict["colour"] == "blue", verdict
    assert verdict["iou"] >= 0.6, verdict

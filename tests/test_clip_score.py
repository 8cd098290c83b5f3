"""The CLIP score of regression runs outside the shapes world (dreamfusion.guidance.clip_score), on a
tiny CLIP built from configs: against the score computed by hand from the model's towers and the
CLIP normalisation; read from real MP4 files; gating a regression run against a real S3 server."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dreamfusion.errors import UserError
from dreamfusion.export.video import write_mp4
from dreamfusion.guidance.clip_score import CLIPScorer, video_frames
from dreamfusion.guidance.tiny import build_tiny_clip
from dreamfusion.store import Store
from dreamfusion.store.regression import RegressionError, check_regression, collect_metrics

CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711])


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A tiny CLIP whose text projection is negated: its random towers give negative cosines for
    every image and prompt tried, which the score floors at 0; negated, they are positive."""
    from transformers import CLIPModel

    folder = build_tiny_clip(tmp_path_factory.mktemp("clip"))
    m = CLIPModel.from_pretrained(folder)
    with torch.no_grad():
        m.text_projection.weight.neg_()
    m.save_pretrained(folder)
    return folder


def by_hand(folder, images: np.ndarray, prompt: str) -> np.ndarray:
    """100 x cos(image, text) per image from the towers and projections, with CLIP's mean/std
    normalisation written out (images already at the model's 32x32: no resize or crop)."""
    from transformers import CLIPModel, CLIPTokenizer

    m, tok = CLIPModel.from_pretrained(folder).eval(), CLIPTokenizer.from_pretrained(folder)
    x = ((torch.from_numpy(images).float() / 255 - CLIP_MEAN) / CLIP_STD).permute(0, 3, 1, 2)
    with torch.no_grad():
        iv = m.visual_projection(m.vision_model(pixel_values=x).pooler_output)
        tv = m.text_projection(m.text_model(**tok([prompt], return_tensors="pt")).pooler_output)
    return (100 * torch.nn.functional.cosine_similarity(iv, tv)).numpy()


def frames(seed: int, n: int = 4, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("prompt", ["a hamburger", "a castle on a hill, front view"])
def test_score_is_the_clipped_mean_cosine(clip, prompt):
    scorer = CLIPScorer(clip)
    for seed in range(3):
        im = frames(seed)
        ref = by_hand(clip, im, prompt)
        assert (ref > 0).any()
        assert scorer.score(im, prompt) == pytest.approx(float(np.clip(ref, 0, None).mean()), abs=1e-3)


def test_negative_cosines_score_zero(tmp_path):
    folder = build_tiny_clip(tmp_path / "clip")  # as built: every cosine below 0 for these images
    im = frames(0)
    assert (by_hand(folder, im, "a hamburger") < 0).all()
    assert CLIPScorer(folder).score(im, "a hamburger") == 0.0


def test_video_frames_are_read_evenly_spaced(tmp_path):
    """Ten frames of flat grey levels 0, 25, ..., 225: all ten come back, or four evenly spaced."""
    levels = np.arange(10) * 25
    clip = np.stack([np.full((16, 24, 3), v, np.uint8) for v in levels])
    path = write_mp4(clip, tmp_path / "turntable.mp4", fps=10)
    got = video_frames(path)
    assert got.shape == (10, 16, 24, 3)
    np.testing.assert_allclose(got.reshape(10, -1).mean(1), levels, atol=3)
    four = video_frames(path, limit=4)
    np.testing.assert_allclose(four.reshape(4, -1).mean(1), levels[[0, 3, 6, 9]], atol=3)

    (tmp_path / "junk.mp4").write_bytes(b"not a video" * 10)
    with pytest.raises(UserError, match="is not a readable video|holds no frames"):
        video_frames(tmp_path / "junk.mp4")
    with pytest.raises(UserError, match="does not exist"):
        video_frames(tmp_path / "none.mp4")


def test_missing_or_broken_model_is_one_line(tmp_path):
    with pytest.raises(UserError, match="no such model folder"):
        CLIPScorer(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot be loaded"):
        CLIPScorer(tmp_path)


def _run(tmp_path, name, prompt, seed, video_seed):
    ps, rd, mesh, video = (tmp_path / name / kind for kind in ("ps", "rd", "mesh", "video"))
    for d in (ps, rd, mesh, video):
        d.mkdir(parents=True)
    (ps / "prompts.json").write_text(json.dumps({"prompt": prompt}))
    (rd / "metrics.json").write_text(json.dumps({"loss": 0.5, "occupied_fraction": 0.1, "seed": seed}))
    write_mp4(frames(video_seed, n=6), video / "turntable.mp4", fps=6)
    return [ps], [rd], [mesh], [video]


def test_clip_score_gates_a_run_outside_the_shapes_world(clip, s3_env, tmp_path):
    """Baseline: two seeds' turntables. A run whose turntable scores as well passes; one whose
    score falls by more than 3 x the seeds' spread (and the 5% floor) fails naming ``clip``.
    Without a CLIP model the report says the prompt's quality is not measured."""
    store = Store(s3_env.endpoint, "clip-baselines", secure=False, create_bucket=True)
    prompt = "a hamburger"
    # turntables (random frames through H.264) ranked by their score, computed by hand on the decoded frames
    videos = {s: _run(tmp_path, f"v{s}", prompt, s, s) for s in range(12)}
    scores = {s: float(np.clip(by_hand(clip, video_frames(v[3][0] / "turntable.mp4"), prompt), 0, None).mean())
              for s, v in videos.items()}
    ranked = sorted(scores, key=scores.get)
    low, best = ranked[0], ranked[-3:]
    assert scores[best[0]] - scores[low] > 0.05 * scores[best[0]] + 1.0

    runs = [collect_metrics(*videos[s], clip_model=clip) for s in best[:2]]
    for r, s in zip(runs, best[:2]):
        assert r[prompt][0]["clip"] == pytest.approx(scores[s], abs=1e-3)
    base = {prompt: runs[0][prompt] + runs[1][prompt]}
    recorded = check_regression(store, "sd", base)
    assert recorded.status == "recorded" and recorded.notes == []

    healthy = collect_metrics(*videos[best[2]], clip_model=clip)
    assert check_regression(store, "sd", healthy).status == "passed"
    worse = collect_metrics(*videos[low], clip_model=clip)
    with pytest.raises(RegressionError, match=r"^1 regression.*'a hamburger' clip \d+(\.\d+)? < baseline"):
        check_regression(store, "sd", worse)

    unscored = collect_metrics(*videos[best[0]][:3])
    r = check_regression(store, "sd-noclip", unscored)
    assert r.notes == ["'a hamburger': quality not measured (not a shapes-world prompt, and no clip_model to score "
                       "its turntable with); only its size is compared"]
    with pytest.raises(UserError, match="needs the runs' videos"):
        collect_metrics(*_run(tmp_path, "novideo", prompt, 0, 0)[:3], clip_model=clip)

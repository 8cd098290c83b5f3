"""The prior's evaluation code (colour by hue, shape by silhouette) on true renders, and its tokenizer."""

import colorsys

import pytest
import torch

from dreamfusion.config.schema import TrainDatasetConfig
from dreamfusion.data.cameras import sample_train
from dreamfusion.prior.data import BACKGROUND, COLOURS, SHAPES, random_batch, render, silhouette
from dreamfusion.prior.evaluate import (
    ShapeMatcher,
    analyse_renders,
    classify_colour,
    eval_cameras,
    foreground_mask,
    iou_matrix,
    parse_prompt,
    rgb_to_hsv,
    silhouette_iou,
)
from dreamfusion.prior.score import score


@pytest.fixture(scope="module")
def matcher():
    return ShapeMatcher(size=32, n_cameras=256)


def test_rgb_to_hsv_matches_colorsys():
    x = torch.rand(200, 3, generator=torch.Generator().manual_seed(0))
    ours = rgb_to_hsv(x)
    for row, o in zip(x.tolist(), ours.tolist()):
        h, s, v = colorsys.rgb_to_hsv(*row)
        assert o[0] == pytest.approx(h * 360, abs=1e-3) or abs(o[0] - h * 360) == pytest.approx(360, abs=1e-3)
        assert o[1] == pytest.approx(s, abs=1e-5) and o[2] == pytest.approx(v, abs=1e-5)


@pytest.mark.parametrize("colour", list(COLOURS))
def test_colour_of_shaded_renders(colour):
    cams = eval_cameras(4, 32)
    for ambient in (0.1, 0.5, 1.0):
        rgb, mask = render(cams, "sphere", colour, ambient=ambient)
        for i in range(4):
            assert classify_colour(rgb[i], mask[i] > 0).colour == colour, (colour, ambient)


def test_colour_without_foreground():
    assert classify_colour(torch.ones(8, 8, 3), torch.zeros(8, 8, dtype=torch.bool)).colour == "none"


def test_foreground_mask_recovers_the_true_mask():
    g = torch.Generator().manual_seed(3)
    cams = sample_train(TrainDatasetConfig(width=32, height=32, fovy_range=[20.0, 30.0]), 20, g)
    shapes = [SHAPES[i % 5] for i in range(20)]
    cols = [list(COLOURS)[i % 6] for i in range(20)]
    rgb, mask = render(cams, shapes, cols, ambient=0.4)
    fg = foreground_mask(rgb)
    agree = (fg == (mask > 0)).float().mean()
    assert agree > 0.99


def test_iou_matrix():
    a = torch.zeros(2, 4, 4, dtype=torch.bool)
    a[0, :2] = True
    a[1] = True
    m = iou_matrix(a, a)
    assert torch.allclose(m, torch.tensor([[1.0, 0.5], [0.5, 1.0]]))


def test_shape_matcher_on_true_renders(matcher):
    g = torch.Generator().manual_seed(99)  # not the bank's cameras
    b = random_batch(150, g, p_empty=0.0)
    hwc = ((b.images + 1) / 2).permute(0, 2, 3, 1)
    fg = foreground_mask(hwc, background=torch.tensor(BACKGROUND))
    pred = matcher.classify(fg)
    acc = sum(p == s for p, s in zip(pred, b.shapes)) / len(pred)
    assert acc >= 0.93
    cols = [classify_colour(hwc[i], fg[i]).colour for i in range(len(hwc))]
    assert sum(c == t for c, t in zip(cols, b.colours)) / len(cols) >= 0.97


def test_analyse_renders_finds_the_true_primitive():
    cams = eval_cameras(8, 48)
    for shape, colour in (
        ("cube", "red"),
        ("sphere", "blue"),
        ("cone", "yellow"),
        ("torus", "green"),
        ("cylinder", "purple"),
    ):
        rgb, _ = render(cams, shape, colour, ambient=0.3)
        opacity = silhouette(cams, shape, supersample=2)
        a = analyse_renders(rgb, opacity, cams)
        assert a.best_shape == shape and a.ious[shape] > 0.97 and a.margin > 0.1, (shape, a.ious)
        assert a.colour == colour
        res = score(f"a {colour} {shape}", nerf=(rgb, opacity), cams=cams)
        assert res["passed"] and res["nerf"]["iou"] == pytest.approx(a.ious[shape])
        wrong = score(f"a {colour} {'sphere' if shape != 'sphere' else 'cube'}", nerf=(rgb, opacity), cams=cams)
        assert not wrong["passed"] and not wrong["nerf"]["shape_ok"]


def test_analyse_renders_a_blob_is_not_a_cube():
    """A ball larger than the world's sphere (radius 0.3) is a sphere, never a cube; the score's IoU bar
    (0.80) takes one of radius 0.32 (disc areas 0.88 of each other) and refuses one of 0.34 (0.78)."""
    from dreamfusion.data.cameras import rays
    from dreamfusion.prior.data import intersect_sphere

    cams = eval_cameras(8, 48)
    rgb, _ = render(cams, "sphere", "red")
    ro, rd = rays(cams)
    for r, passes in ((0.32, True), (0.34, False)):
        t, _ = intersect_sphere(ro.reshape(-1, 3), rd.reshape(-1, 3), r=r)
        opacity = torch.isfinite(t).float().reshape(8, 48, 48)
        a = analyse_renders(rgb, opacity, cams)
        assert a.best_shape == "sphere"
        assert score("a red cube", nerf=(rgb, opacity), cams=cams)["failures"] == ["nerf iou", "nerf shape"]
        sphere = score("a red sphere", nerf=(rgb, opacity), cams=cams)
        assert sphere["passed"] is passes and sphere["failures"] == ([] if passes else ["nerf iou"]), r


def test_silhouette_iou_and_errors():
    x = torch.zeros(2, 4, 4)
    x[:, :2] = 1
    y = torch.zeros(2, 4, 4)
    y[:, :1] = 1
    assert silhouette_iou(x, y) == pytest.approx(0.5)
    cams = eval_cameras(2, 4)
    with pytest.raises(ValueError):
        analyse_renders(torch.zeros(3, 4, 4, 3), torch.zeros(3, 4, 4), cams)


def test_parse_prompt():
    assert parse_prompt("a red cube") == ("red", "cube")
    assert parse_prompt("a Yellow cone, front view") == ("yellow", "cone")
    with pytest.raises(ValueError):
        parse_prompt("a hamburger")


def test_tokenizer_words_are_single_tokens(tmp_path):
    from transformers import CLIPTokenizer

    from dreamfusion.prior.model import MAX_LENGTH, WORDS, write_tokenizer

    write_tokenizer(tmp_path)
    assert (tmp_path / "vocab.json").exists() and (tmp_path / "merges.txt").exists()
    tok = CLIPTokenizer.from_pretrained(tmp_path)
    assert tok.model_max_length == MAX_LENGTH
    for w in WORDS:
        ids = tok(w, add_special_tokens=False).input_ids
        assert len(ids) == 1, (w, tok.convert_ids_to_tokens(ids))
    ids = tok(
        ["a red cube, front view"],
        padding="max_length",
        max_length=tok.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    assert tok.convert_ids_to_tokens(ids[0].tolist())[:8] == [
        "<|startoftext|>",
        "a</w>",
        "red</w>",
        "cube</w>",
        ",</w>",
        "front</w>",
        "view</w>",
        "<|endoftext|>",
    ]
    # unknown words fall back to letters instead of failing
    assert len(tok("hamburger", add_special_tokens=False).input_ids) > 1


def test_a_card_section_is_replaced_up_to_the_next_heading(tmp_path):
    from dreamfusion.prior.evaluate_dmtet import put_card_section

    card = tmp_path / "README.md"
    card.write_text("# Card\n## Evaluation\n### 3D\nold 3D\n### DMTet fine-tune\nold dmtet\n### Whole world\n"
                    "old world\n## Limits\nlimits\n")
    put_card_section(card, "\n### DMTet fine-tune\n", "new dmtet\n")
    put_card_section(card, "\n### Whole world\n", "new world\n")
    put_card_section(card, "\n### Added\n", "added\n")
    assert card.read_text() == ("# Card\n## Evaluation\n### 3D\nold 3D\n### DMTet fine-tune\nnew dmtet\n\n"
                                "### Whole world\nnew world\n\n### Added\nadded\n\n## Limits\nlimits\n")


def test_sds_pull_projects_the_descent_step_on_the_way_to_the_background():
    import math

    from dreamfusion.prior.sds_pull import towards_background

    z = torch.zeros(1, 3, 1, 3)  # mid grey, pale (0.5: halfway to the background 1), the background
    z[..., 1] = 0.5
    z[..., 2] = 1.0
    grad = torch.zeros(1, 3, 1, 3)
    grad[..., 0] = -1.0  # descent moves the grey pixel by (1, 1, 1): straight towards the background
    grad[0, :, 0, 1] = torch.tensor([1.0, -1.0, 0.0])  # sideways: orthogonal to (1, 1, 1)
    grad[..., 2] = -5.0  # at the background there is no direction: 0
    got = towards_background(z, grad)[0, 0]
    assert torch.allclose(got, torch.tensor([math.sqrt(3), 0.0, 0.0]), atol=1e-6)


def test_sds_pull_rejects_bad_arguments_in_one_line(capsys):
    from dreamfusion.prior.sds_pull import main

    for argv in (["--prompts", "a grey pyramid"], ["--t", "500", "300"], ["--guidance", "-1"], ["--size", "1"],
                 ["--fovy", "30", "20"], ["--radius", "0", "3"], ["--model", "/nonexistent/prior"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ")


def test_evaluate_3d_refuses_a_prompt_outside_the_world_before_training(capsys, monkeypatch):
    """One line and exit 2 before any NeRF is trained (the valid first prompt is not trained either)."""
    from dreamfusion.prior import evaluate_3d

    def no_training(*a, **k):
        raise AssertionError("trained before the prompts were checked")

    monkeypatch.setattr(evaluate_3d, "train_and_render", no_training)
    with pytest.raises(SystemExit) as e:
        evaluate_3d.main(["--prompts", "a red cube", "a red box", "--report", "/nonexistent/never.json"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("'a red box'") and "error: not a shapes-world prompt" in err[-1]
    assert "Traceback" not in "\n".join(err)

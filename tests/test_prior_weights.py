"""The shipped prior: loads with the standard from_pretrained calls, and samples the right objects."""

import json
import os
from pathlib import Path

import pytest
import torch

from dreamfusion.prior import model as M

PRIOR_DIR = Path(os.environ.get("DREAMFUSION_PRIOR_DIR", M.SHAPES_DIR))
pytestmark = pytest.mark.skipif(
    not (PRIOR_DIR / "unet" / "config.json").exists(),
    reason=f"no trained prior at {PRIOR_DIR} (run `make prior`)",
)


@pytest.fixture(scope="module")
def prior():
    return M.load(PRIOR_DIR)


def test_folder_layout_and_size():
    for sub in ("unet", "text_encoder", "tokenizer", "scheduler"):
        assert (PRIOR_DIR / sub).is_dir(), sub
    assert not (PRIOR_DIR / "vae").exists()
    assert (PRIOR_DIR / "tokenizer" / "vocab.json").exists() and (PRIOR_DIR / "tokenizer" / "merges.txt").exists()
    assert list((PRIOR_DIR / "unet").glob("*.safetensors")) and list((PRIOR_DIR / "text_encoder").glob("*.safetensors"))
    index = json.loads((PRIOR_DIR / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and "vae" not in index
    weights = sum(p.stat().st_size for p in PRIOR_DIR.rglob("*.safetensors"))
    assert weights <= 25 * 2**20
    card = (PRIOR_DIR / "README.md").read_text()
    assert "loss_curve.png" in card and "samples.png" in card
    assert (PRIOR_DIR / "loss_curve.png").exists() and (PRIOR_DIR / "samples.png").exists()


def test_loads_with_the_standard_calls():
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    d = str(PRIOR_DIR)
    unet = UNet2DConditionModel.from_pretrained(d, subfolder="unet", local_files_only=True)
    te = CLIPTextModel.from_pretrained(d, subfolder="text_encoder")
    tok = CLIPTokenizer.from_pretrained(d, subfolder="tokenizer")
    sch = DDPMScheduler.from_pretrained(d, subfolder="scheduler")
    assert sch.config.num_train_timesteps == 1000 and sch.config.prediction_type == "epsilon"
    assert unet.config.in_channels == 3 and unet.config.out_channels == 3
    s = unet.config.sample_size
    prompts = ["a red cube, front view", ""]
    ids = tok(
        prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    emb = te(ids)[0]
    assert emb.shape == (2, tok.model_max_length, unet.config.cross_attention_dim)
    x = torch.randn(2, 3, s, s)
    with torch.no_grad():
        eps = unet(x, torch.tensor([500, 500]), encoder_hidden_states=emb).sample
    assert eps.shape == x.shape and torch.isfinite(eps).all()


def test_sampling_subset_right_colour_and_shape(prior):
    from dreamfusion.prior.evaluate import evaluate_2d

    pairs = [
        ("red", "cube"),
        ("blue", "sphere"),
        ("yellow", "cone"),
        ("green", "torus"),
        ("purple", "cylinder"),
    ]
    res = evaluate_2d(prior, samples=2, steps=25, guidance_scale=3.0, seed=0, prompts=pairs, progress=False, eta=1.0)
    t = res["total"]
    assert t["colour"] >= 0.9, res["per_prompt"]
    assert t["shape"] >= 0.8, res["per_prompt"]

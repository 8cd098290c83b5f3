"""The camera input of the shapes prior: its features, the zero-start fine-tune, and SDS passing the
renders' cameras (against hand computations and the text-only model it starts from)."""

import math

import pytest
import torch

from dreamfusion.data.cameras import CAMERA_FEATURES, camera_embedding, sample_train
from dreamfusion.errors import UserError
from dreamfusion.guidance.stable_diffusion import GuidanceConfig, StableDiffusionGuidance
from dreamfusion.prior import model as M
from dreamfusion.prior.data import random_batch, world_cameras


def test_camera_embedding_analytic_values():
    e = camera_embedding(torch.tensor([90.0, 30.0]), torch.tensor([0.0, 90.0]))
    assert e.shape == (2, CAMERA_FEATURES)
    want0 = [1, 0, 1] + [0, 0, 0, 0] + [1, 1, 1, 1]
    want1 = [1, math.cos(math.radians(30)), 0.5] + [1, 0, -1, 0] + [0, -1, 0, 1]
    assert torch.allclose(e[0], torch.tensor(want0, dtype=torch.float32), atol=1e-6)
    assert torch.allclose(e[1], torch.tensor(want1, dtype=torch.float32), atol=1e-6)


def test_camera_embedding_tells_azimuths_within_a_quarter_turn_apart():
    phi = torch.tensor([0.0, 20.0, 45.0, 90.0, -90.0])
    e = camera_embedding(torch.full((5,), 80.0), phi)
    # a quarter turn apart: the 4th harmonic is the same, the first differs (a cube looks the same, the
    # camera is not the same); 20 and 45 degrees apart: the 4th harmonic differs by a clear margin
    assert torch.allclose(e[3, [6, 10]], e[0, [6, 10]], atol=1e-6)
    assert (e[3, [3, 7]] - e[0, [3, 7]]).abs().max() > 0.9
    assert (e[1, [6, 10]] - e[0, [6, 10]]).norm() > 1.0
    assert (e[2, [6, 10]] - e[0, [6, 10]]).norm() > 1.9


def test_random_batch_cameras_and_their_dropout():
    kept = random_batch(16, torch.Generator().manual_seed(0), size=8, render_size=16)
    cams = sample_train(world_cameras(16), 16, torch.Generator().manual_seed(0))
    assert torch.allclose(kept.cameras, camera_embedding(cams.theta, cams.phi))
    dropped = random_batch(16, torch.Generator().manual_seed(0), size=8, render_size=16, p_no_camera=1.0)
    assert torch.equal(dropped.cameras, torch.zeros(16, CAMERA_FEATURES))
    # no dropout draw: the images are those of the same generator without cameras
    assert torch.equal(kept.images, random_batch(16, torch.Generator().manual_seed(0), size=8, render_size=16).images)


@pytest.fixture(scope="module")
def text_only(tmp_path_factory):
    torch.manual_seed(0)
    prior = M.build_new(tmp_path_factory.mktemp("tok"), camera=False)
    with torch.no_grad():  # an untrained UNet's output layer is zero: give it some weights
        for p in prior.unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return prior


def test_add_camera_starts_from_the_text_only_predictions(text_only):
    cam = M.add_camera(text_only)
    assert M.camera_conditioned(cam.unet) and not M.camera_conditioned(text_only.unet)
    x = torch.randn(3, 3, 32, 32)
    t = torch.tensor([5, 400, 900])
    emb = M.encode(text_only, ["a red cube", "a blue sphere", ""])
    cams = sample_train(world_cameras(32), 3, torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = text_only.unet(x, t, encoder_hidden_states=emb).sample
        got = cam.unet(x, t, encoder_hidden_states=emb, class_labels=M.camera_labels(cam.unet, cams, 3)).sample
        assert want.abs().mean() > 1e-3
        assert torch.allclose(got, want, atol=1e-6)
        # once the projection is not zero the camera changes the prediction
        cam.unet.class_embedding.linear_2.weight.normal_(0, 0.1)
        moved = cam.unet(x, t, encoder_hidden_states=emb, class_labels=M.camera_labels(cam.unet, cams, 3)).sample
    assert (moved - want).abs().max() > 1e-3


@pytest.fixture(scope="module")
def camera_prior_dir(text_only, tmp_path_factory):
    cam = M.add_camera(text_only)
    with torch.no_grad():
        cam.unet.class_embedding.linear_2.weight.normal_(0, 0.1)
    folder = tmp_path_factory.mktemp("camera_prior")
    M.save(cam, folder)
    return folder


def test_sds_passes_each_renders_camera_to_both_texts(camera_prior_dir):
    g = StableDiffusionGuidance(GuidanceConfig(precision="32", model_key=str(camera_prior_dir)))
    assert g.camera_conditioned
    emb = g.encode_text(["a red cube", ""])
    cond, uncond = emb[:1].expand(2, -1, -1), emb[1:].expand(2, -1, -1)
    cams = sample_train(world_cameras(32), 2, torch.Generator().manual_seed(3))
    z = torch.rand(2, 3, 32, 32) * 2 - 1
    with pytest.raises(ValueError, match="camera-conditioned"):
        g.sds(z, cond, uncond, 3.0)
    _, info = g.sds(z, cond, uncond, 3.0, generator=torch.Generator().manual_seed(4), cameras=cams)
    t, noise = info["t"], info["noise"]
    abar = g.scheduler.alphas_cumprod[t].view(2, 1, 1, 1)
    x_t = abar.sqrt() * z + (1 - abar).sqrt() * noise
    labels = camera_embedding(cams.theta, cams.phi)
    with torch.no_grad():
        eu = g.unet(x_t, t, encoder_hidden_states=uncond, class_labels=labels).sample
        ec = g.unet(x_t, t, encoder_hidden_states=cond, class_labels=labels).sample
        blind = g.unet(x_t, t, encoder_hidden_states=cond, class_labels=torch.zeros_like(labels)).sample
    want = (1 - abar) * (eu + 3.0 * (ec - eu) - noise)
    assert torch.allclose(info["grad"], want, atol=1e-5)
    assert (blind - ec).abs().max() > 1e-3  # the camera mattered


def test_other_class_conditioning_is_refused(tmp_path, text_only):
    from diffusers import UNet2DConditionModel

    cfg = {k: v for k, v in dict(text_only.unet.config).items() if not k.startswith("_")}
    cfg.update(class_embed_type="projection", projection_class_embeddings_input_dim=7)
    prior = M.Prior(UNet2DConditionModel(**cfg), text_only.text_encoder, text_only.tokenizer, text_only.scheduler)
    M.save(prior, tmp_path)
    with pytest.raises(UserError, match="class-conditioned"):
        StableDiffusionGuidance(GuidanceConfig(precision="32", model_key=str(tmp_path)))


def test_the_shipped_prior_is_text_only():
    g = StableDiffusionGuidance(GuidanceConfig(precision="32", model_key=str(M.SHAPES_DIR)))
    assert not g.camera_conditioned  # the camera fine-tune did not learn the yaw: see the model card


def test_a_new_unet_takes_the_channels_and_layers_it_is_given(tmp_path):
    from dreamfusion.prior import train

    wide = M.build_new(tmp_path / "tok", channels=(48, 96, 96), layers_per_block=2)
    assert tuple(wide.unet.config.block_out_channels) == (48, 96, 96) and wide.unet.config.layers_per_block == 2
    assert wide.unet.down_blocks[0].resnets[0].conv1.out_channels == 48 and len(wide.unet.down_blocks[0].resnets) == 2
    shipped = M.build_new(tmp_path / "tok", camera=False)
    assert tuple(shipped.unet.config.block_out_channels) == M.CHANNELS == (32, 64, 64)
    assert M.param_count(wide.unet) > 3 * M.param_count(shipped.unet)
    with torch.no_grad():  # the wider UNet runs on the prior's 32x32 images
        out = wide.unet(torch.randn(2, 3, 32, 32), torch.tensor([1, 900]),
                        encoder_hidden_states=M.encode(wide, ["a red cube", ""])).sample
    assert out.shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="multiples of 16"):
        M.unet_config(channels=(40, 64, 64))
    for bad in (["--channels", "40", "64", "64"], ["--layers-per-block", "0"],
                ["--channels", "64", "128", "128", "--init-from", str(tmp_path)]):
        with pytest.raises(SystemExit):
            train.parse_args(bad)


def test_resuming_with_another_unet_is_one_clear_line(tmp_path, capsys):
    from dreamfusion.prior import train

    work = tmp_path / "work"
    common = ["--work-dir", str(work), "--output", str(tmp_path / "out"), "--batch-size", "2", "--steps", "2",
              "--stop-at", "1", "--checkpoint-every", "1", "--threads", "1"]
    train.train(train.parse_args(common + ["--channels", "16", "32", "32"]))  # one step, checkpointed
    assert (work / "checkpoint.pt").exists()
    capsys.readouterr()
    assert train.main(common + ["--channels", "32", "64", "64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds another UNet" in err[0] and "--channels 32 64 64" in err[0]

import subprocess
import sys

import pytest

from dreamfusion.config import compose, leaf_paths, to_dict
from dreamfusion.errors import ConfigError


def test_defaults_equal_the_seed():
    d = to_dict(compose())
    m = d["model"]
    assert m["defaults"] == {
        "nerf": "torchngp",
        "background": "static",
        "material": "basic_shading",
        "renderer": "torchngp_raymarching",
        "guidance": "sd_huggingface",
        "optim": "adan",
        "loss": "dreamfusion",
        "data": "data",
    }
    assert (m["prompt"], m["negative_prompt"]) == ("a hamburger", "")
    assert (m["front_prompt"], m["side_prompt"], m["back_prompt"]) == (", front view", ", side view", ", back view")
    assert (m["update_extra_interval"], m["guidance_scale"], m["export_video"]) == (16, 100.0, False)
    assert m["iters"] == d["trainer"]["max_steps"] == 10000
    assert (m["latent_iter_ratio"], m["albedo_iter_ratio"], m["min_ambient_ratio"], m["textureless_ratio"]) == (
        0.2,
        0.0,
        0.1,
        0.2,
    )
    assert m["resume_from_checkpoint"] is None
    assert m["data"]["train_dataset"]["width"] == m["data"]["train_dataset"]["height"] == 64
    assert m["data"]["val_dataset"]["width"] == m["data"]["test_dataset"]["height"] == 800
    nerf = m["nerf"]
    assert (nerf["num_input_dims"], nerf["bound"], nerf["density_activation"]) == (3, 1.0, "exp")
    assert (nerf["blob_radius"], nerf["blob_density"], nerf["normal_type"]) == (0.2, 5.0, "central_finite_difference")
    enc = nerf["encoder_cfg"]
    assert (enc["encoder_type"], enc["encoder_max_level"], enc["log2_hashmap_size"]) == ("hashgrid", None, 19)
    assert (enc["desired_resolution"], enc["interpolation"]) == (2048, "smoothstep")
    assert nerf["sigma_net_num_output_dims"] == 1 and nerf["features_net_num_output_dims"] == 3
    assert nerf["sigma_net_cfg"] == nerf["features_net_cfg"] == {"num_hidden_dims": 64, "num_layers": 3, "bias": True}
    assert m["background"] == {"background": [0.0, 0.0, 1.0]}
    assert m["renderer"] == {
        "bound": 1.0,
        "update_interval": 16,
        "grid_resolution": 128,
        "density_thresh": 10.0,
        "max_steps": 1024,
        "dt_gamma": 0.0,
    }
    g = m["guidance"]
    assert (g["model_key"], g["t_range"], g["precision"]) == (
        "stabilityai/stable-diffusion-2-1-base",
        [0.02, 0.98],
        "16",
    )
    o = m["optim"]
    assert (o["lr"], o["eps"], o["weight_decay"], o["betas"], o["max_grad_norm"]) == (
        5e-3,
        1e-8,
        2e-5,
        [0.98, 0.92, 0.99],
        5.0,
    )


def test_torchngp_background_matches_the_seed():
    bg = to_dict(compose(["background=torchngp"]))["model"]["background"]
    assert bg == {
        "encoder_type": "frequency",
        "encoder_input_dims": 3,
        "encoder_multi_res": 6,
        "num_output_dims": 3,
        "net_cfg": {"num_hidden_dims": 32, "num_layers": 2, "bias": True},
    }


def test_overrides_and_interpolation():
    cfg = compose(
        [
            "trainer.max_steps=20",
            "model.prompt=a red cube",
            "model.guidance.t_range=[0.1, 0.5]",
            "nerf=tcnn",
            "trainer.precision=32",
        ]
    )
    assert cfg.model.iters == 20
    assert cfg.model.prompt == "a red cube"
    assert cfg.model.guidance.t_range == [0.1, 0.5]
    assert cfg.model.guidance.precision == "32"
    assert cfg.model.defaults["nerf"] == "tcnn"
    assert "model.nerf.encoder_cfg.log2_hashmap_size" in leaf_paths(cfg)


def test_pixels_a_step_are_bounded():
    sides = ["model.data.train_dataset.width=2048", "model.data.train_dataset.height=2048"]
    assert compose(sides).model.data.train_dataset.width == 2048
    with pytest.raises(ConfigError, match="width x height x batch_size must be at most 4,194,304 pixels"):
        compose([*sides, "model.data.train_dataset.batch_size=2"])


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("model.nosuchkey=1", "model.nosuchkey"),
        ("trainer.max_steps=abc", "trainer.max_steps"),
        ("trainer.max_steps=0", "trainer.max_steps=0"),
        ("model.iters=0", "model.iters=0"),
        ("model.guidance.t_range=[0.02, 1.5]", "model.guidance.t_range"),
        ("model.guidance.t_range=[0.5, 0.1]", "model.guidance.t_range"),
        ("model.guidance.t_range=[0.0, 0.5]", "model.guidance.t_range"),
        ("model.data.train_dataset.width=0", "model.data.train_dataset.width=0"),
        ("model.data.val_dataset.height=-8", "model.data.val_dataset.height=-8"),
        ("model.prompt=", "model.prompt"),
        ("model.prompt='   '", "model.prompt"),
        ("nerf=nosuch", "nerf='nosuch'"),
        ("model.textureless_ratio=1.5", "model.textureless_ratio=1.5"),
        ("model.renderer.grid_resolution=0", "model.renderer.grid_resolution=0"),
        ("model.background.background=[0, 2, 0]", "model.background.background"),
        ("noequalsign", "key=value"),
        # values that cannot work: bounded before anything is allocated or trained
        ("trainer.seed=-1", "trainer.seed=-1: must be within [0, 4294967295]"),
        ("trainer.seed=4294967296", "trainer.seed=4294967296"),
        ("trainer.max_steps=1000000000000", "trainer.max_steps=1000000000000: must be at most 1,000,000"),
        ("model.data.train_dataset.width=100000", "must be at most 2,048"),
        ("model.data.test_dataset.height=100000", "model.data.test_dataset.height=100000: must be at most 4,096"),
        ("model.data.test_dataset.n_views=100000", "must be at most 3,600"),
        ("model.renderer.grid_resolution=4096", "must be at most 512"),
        ("model.renderer.max_steps=100000", "must be at most 8,192"),
        ("model.guidance_scale=inf", "model.guidance_scale=inf: must be a finite number"),
        ("model.loss.lambda_opacity=nan", "model.loss.lambda_opacity=nan: must be a finite number"),
    ],
)
def test_bad_values_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as e:
        compose([override])
    message = str(e.value)
    assert fragment in message, message
    assert "\n" not in message


def test_stage_reports_one_line_and_exit_code_2(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "dreamfusion.stages.nerf_sds",
            "--output",
            str(tmp_path),
            "model.guidance.t_range=[0.02, 1.5]",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model.guidance.t_range"), r.stderr
    assert "Traceback" not in r.stderr

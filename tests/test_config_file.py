"""--config FILE.yaml in the seed's layout: the seed's own model block composes to the same config
as the equivalent overrides; unknown keys and unreadable files get one line naming the file."""

from __future__ import annotations

import pytest

from dreamfusion.config import compose, to_dict
from dreamfusion.config.files import compose_with_file, overrides_from_file
from dreamfusion.stages import cli, nerf_sds, prompt_expansion

# The seed's "Model Configuration" and "Image Guidance" blocks, indented as NeMo nests them.
SEED_MODEL = """\
_target_: nemo.collections.multimodal.models.nerf.dreamfusion.DreamFusion
defaults:
  - nerf: torchngp
  - background: static
  - material: basic_shading
  - renderer: torchngp_raymarching
  - guidance: sd_huggingface
  - optim: adan
  - loss: dreamfusion
  - data: data
  - _self_

### model options
resume_from_checkpoint:
prompt: 'a hamburger'
negative_prompt: ''
front_prompt: ', front view'
side_prompt: ', side view'
back_prompt: ', back view'
update_extra_interval: 16
guidance_scale: 100
export_video: False

iters: ${trainer.max_steps}
latent_iter_ratio: 0.2
albedo_iter_ratio: 0.0
min_ambient_ratio: 0.1
textureless_ratio: 0.2

data:
  train_dataset:
    width: 64
    height: 64
  val_dataset:
    width: 800
    height: 800
  test_dataset:
    width: 800
    height: 800

guidance:
  _target_: nemo.collections.multimodal.modules.nerf.guidance.stablediffusion_huggingface_pipeline.StableDiffusion
  precision: ${trainer.precision}
  model_key: stabilityai/stable-diffusion-2-1-base
  t_range: [0.02, 0.98]
"""


def test_the_seeds_model_block_is_the_default_config(tmp_path):
    f = tmp_path / "dreamfusion.yaml"
    f.write_text(SEED_MODEL)
    assert to_dict(compose(overrides_from_file(f))) == to_dict(compose())  # the seed's values are the defaults


def test_run_layout_and_precedence(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("trainer:\n  max_steps: 123\n  seed: 7\nmodel:\n  prompt: \"a cat's hat\"\n  guidance_scale: 50\n"
                 "  defaults:\n    - background: random\n  loss:\n    lambda_entropy: 0.01\n")
    cfg = compose(compose_with_file(f, ["model.guidance_scale=7.5"]))
    assert (cfg.trainer.max_steps, cfg.trainer.seed, cfg.model.iters) == (123, 7, 123)
    assert cfg.model.prompt == "a cat's hat" and cfg.model.guidance_scale == 7.5  # the command line wins
    assert cfg.model.defaults["background"] == "random" and cfg.model.loss.lambda_entropy == 0.01


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("prompt: a cube\nnot_a_key: 3\n", "config file {f}: unknown config key 'model.not_a_key'"),
        ("trainer:\n  max_steps: -4\n", "config file {f}: trainer.max_steps=-4: must be > 0"),
        ("defaults:\n  - nerf: no_such_nerf\n", "config file {f}: "),
        ("- a\n- b\n", "{f}: a config file holds a mapping of keys, not a list"),
        ("prompt: [unclosed\n", "config file {f} is not YAML"),
        (None, "cannot read config file {f}"),
    ],
)
def test_bad_config_files_get_one_line_and_exit_2(tmp_path, capsys, content, message):
    f = tmp_path / "bad.yaml"
    if content is not None:
        f.write_text(content)
    for stage in (nerf_sds, prompt_expansion):
        rc = cli.run(stage.main, ["--output", str(tmp_path / "out"), "--config", str(f)])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: " + message.format(f=f)), err
        assert err.count("\n") == 1 and not (tmp_path / "out").exists()

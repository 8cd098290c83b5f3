"""The seed's model config: top-level keys, ``trainer`` and ``data``; group options define their own.

Defaults equal the seed's (../shared/reference/nemo-dreamfusion.rst). Keys the seed does
not have are marked "(added)" with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import II, MISSING

from dreamfusion.config import checks
from dreamfusion.config.node import Node
from dreamfusion.errors import ConfigError

GROUPS = ("nerf", "background", "material", "renderer", "guidance", "optim", "loss", "data")

DEFAULTS = {
    "nerf": "torchngp",
    "background": "static",
    "material": "basic_shading",
    "renderer": "torchngp_raymarching",
    "guidance": "sd_huggingface",
    "optim": "adan",
    "loss": "dreamfusion",
    "data": "data",
}


# Bounds on sizes, so that what they allocate fits in memory (and a run ends): a step renders
# width x height x batch_size pixels with their samples and gradients; eval frames render in chunks.
MAX_STEPS = 1_000_000
MAX_TRAIN_SIDE = 2048
MAX_BATCH = 64
MAX_TRAIN_PIXELS = 2048 * 2048
MAX_EVAL_SIDE = 4096
MAX_VIEWS = 3600


@dataclass
class TrainerConfig(Node):
    max_steps: int = 10000
    """Training iterations; ``model.iters`` refers to it as in the seed."""
    precision: str = "16"
    """Guidance model precision: 16 (fp16), bf16 or 32. The NeRF always trains in fp32."""
    seed: int = 0
    """Seeds torch, numpy and random; a resumed run restores the saved RNG states instead."""
    val_check_interval: int = 1000
    """(added) Steps between validation renders; 0 disables them."""
    checkpoint_interval: int = 1000
    """(added) Steps between checkpoints; one is always written at the end."""
    deterministic: bool = False
    """As Lightning's flag: deterministic kernels, so a resumed run ends bit-for-bit where an uninterrupted one does."""
    accelerator: str = "auto"
    """(added) auto (CUDA when available), cpu or cuda."""
    compile: bool = False
    """(added) torch.compile the hash-grid encoding (about 8x faster on a CPU after a warm-up)."""
    kernels: str = "auto"
    """(added) ``auto``: ray sampling, compositing and the hash grid run as dreamfusion.kernels' Triton
    kernels on a CUDA device where triton imports (nerf=tcnn keeps tiny-cuda-nn's hash grid), else as
    their PyTorch references; ``torch``: always PyTorch. metrics.json's ``path`` says which ran."""
    nonfinite_limit: int = 5
    """(added) A step whose loss or gradient is not finite is skipped (counted in metrics.json);
    this many in a row roll the run back to its last checkpoint with half the learning rate, and
    this many roll-backs stop the stage."""

    def check(self) -> None:
        checks.positive(self, "max_steps", "nonfinite_limit")
        checks.at_most(self, ["max_steps"], MAX_STEPS, "70 hours at a GPU's 0.25 s a step")
        checks.within(self, "seed", 0, 2**32 - 1, "the random generators' seed range")
        checks.non_negative(self, "val_check_interval", "checkpoint_interval")
        checks.one_of(self, "precision", ["16", "bf16", "32"])
        checks.one_of(self, "accelerator", ["auto", "cpu", "cuda"])
        checks.one_of(self, "kernels", ["auto", "torch"])


@dataclass
class TrainDatasetConfig(Node):
    width: int = 64
    height: int = 64
    batch_size: int = 1
    """(added) Views per step."""
    radius_range: list[float] = field(default_factory=lambda: [3.0, 3.5])
    """(added) Camera distance from the origin."""
    theta_range: list[float] = field(default_factory=lambda: [45.0, 105.0])
    """(added) Polar angle in degrees from +Y (elevation = 90 - theta)."""
    phi_range: list[float] = field(default_factory=lambda: [-180.0, 180.0])
    """(added) Azimuth in degrees; 0 looks at the front (camera on +Z)."""
    fovy_range: list[float] = field(default_factory=lambda: [10.0, 30.0])
    """(added) Vertical field of view in degrees."""
    angle_front: float = 45.0
    """(added) |azimuth| below which a view is 'front'; above 180 - angle_front it is 'back'."""
    angle_overhead: float = 30.0
    """(added) Polar angle below which a view is 'overhead' (elevation above 60)."""
    jitter: bool = False
    """(added) Each training ray through a random point of its pixel, drawn anew every step, instead
    of the pixel's centre. Over the steps a pixel then renders the fraction of it the object covers:
    the anti-aliased outline of images area-averaged from finer renders (the shapes prior's
    training images). Through centres, a pixel the object half covers is all in or all out, and
    the opacity penalty tips it out: outlines come in, most of all a thin part's two."""

    def check(self) -> None:
        checks.positive(self, "width", "height", "batch_size")
        checks.at_most(self, ["width", "height"], MAX_TRAIN_SIDE, "a training render's side")
        checks.at_most(self, ["batch_size"], MAX_BATCH, "views a step")
        if self.width * self.height * self.batch_size > MAX_TRAIN_PIXELS:
            checks.fail(self, "batch_size", f"width x height x batch_size must be at most {MAX_TRAIN_PIXELS:,} "
                        "pixels a step (their samples and gradients must fit in memory)")
        checks.interval(self, "radius_range")
        checks.interval(self, "theta_range")
        checks.interval(self, "phi_range")
        checks.interval(self, "fovy_range", 0.0, 180.0)
        if self.radius_range[0] <= 0:
            checks.fail(self, "radius_range", "radii must be > 0")
        checks.within(self, "angle_front", 0.0, 90.0)
        checks.within(self, "angle_overhead", 0.0, 90.0)


@dataclass
class EvalDatasetConfig(Node):
    width: int = 800
    height: int = 800
    n_views: int = 8
    """(added) Views on the circle."""
    radius: float = 3.2
    """(added) Circle radius."""
    theta: float = 80.0
    """(added) Polar angle of the circle in degrees (elevation 10)."""
    fovy: float = 20.0
    """(added) Vertical field of view in degrees."""

    def check(self) -> None:
        checks.positive(self, "width", "height", "n_views", "radius")
        checks.at_most(self, ["width", "height"], MAX_EVAL_SIDE, "a validation or video frame's side")
        checks.at_most(self, ["n_views"], MAX_VIEWS, "views of a validation circle or video")
        checks.within(self, "theta", 0.0, 180.0)
        if not 0 < self.fovy < 180:
            checks.fail(self, "fovy", "must lie inside (0, 180)")


@dataclass
class DataConfig(Node):
    train_dataset: TrainDatasetConfig = field(default_factory=TrainDatasetConfig)
    val_dataset: EvalDatasetConfig = field(default_factory=EvalDatasetConfig)
    test_dataset: EvalDatasetConfig = field(default_factory=lambda: EvalDatasetConfig(n_views=120))


@dataclass
class ModelConfig(Node):
    defaults: dict[str, str] = field(default_factory=lambda: dict(DEFAULTS))
    """The option chosen for each group, as the seed's ``defaults:`` list."""
    resume_from_checkpoint: str | None = None
    prompt: str = "a hamburger"
    negative_prompt: str = ""
    front_prompt: str = ", front view"
    side_prompt: str = ", side view"
    back_prompt: str = ", back view"
    overhead_prompt: str = ", overhead view"
    """(added) Suffix for views from above (elevation over 90 - angle_overhead)."""
    update_extra_interval: int = 16
    """Steps between refreshes of the run's extra state: the metrics history and the progress line."""
    guidance_scale: float = 100.0
    export_video: bool = False
    """Write a turntable MP4 of the test circle at the end of training."""
    iters: int = II("trainer.max_steps")
    latent_iter_ratio: float = 0.2
    albedo_iter_ratio: float = 0.0
    min_ambient_ratio: float = 0.1
    textureless_ratio: float = 0.2
    perp_neg: bool = False
    """(added) Perp-Neg guidance: the positive text follows the camera's azimuth between the view
    prompts, and the other views' prompts are negatives, perpendicular to it (guidance/perp_neg.py)."""
    perp_neg_weight: float = -2.0
    """(added) Perp-Neg's negative weight ``w`` (<= 0)."""
    perp_neg_front_decay: float = 2.0
    """(added) How fast the front negative fades as a view turns from the side towards the front."""
    perp_neg_side_decay: float = 10.0
    """(added) How fast the side negative fades as a view turns away from the side."""
    nerf: Any = MISSING
    background: Any = MISSING
    material: Any = MISSING
    renderer: Any = MISSING
    guidance: Any = MISSING
    optim: Any = MISSING
    loss: Any = MISSING
    data: Any = MISSING

    def check(self) -> None:
        if not self.prompt.strip():
            checks.fail(self, "prompt", "must not be empty")
        from dreamfusion.data.prompts import check_text  # the one rule for prompts

        for key in ("prompt", "negative_prompt", "front_prompt", "side_prompt", "back_prompt", "overhead_prompt"):
            why = check_text(getattr(self, key), "it")
            if why:
                raise ConfigError(f"model.{key} {getattr(self, key)!r:.80}: {why}")
        checks.positive(self, "iters", "update_extra_interval")
        checks.non_negative(self, "guidance_scale", "perp_neg_front_decay", "perp_neg_side_decay")
        if not (self.perp_neg_weight <= 0 and math.isfinite(self.perp_neg_weight)):
            checks.fail(self, "perp_neg_weight", "must be a finite number <= 0 (a negative prompt's weight)")
        for key in ("latent_iter_ratio", "albedo_iter_ratio", "min_ambient_ratio", "textureless_ratio"):
            checks.within(self, key, 0.0, 1.0)


@dataclass
class RootConfig(Node):
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)

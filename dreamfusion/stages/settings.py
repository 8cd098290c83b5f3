"""What a pipeline run asks of its training stages, built in one place and checked in its first task.

The nerf-sds and dmtet-finetune components turn their parameters into the stages' overrides with
``nerf_overrides`` and ``dmtet_overrides``; prompt-expansion, the first and cheapest task of every
prompt, calls ``check_run`` with the same parameters, so a setting the GPU tasks would refuse
fails the run in seconds, with the stage's own one-line message, before anything is scheduled on
a GPU (and before a retry could repeat it there).
"""

from __future__ import annotations

from dreamfusion.config.files import quote
from dreamfusion.errors import UserError


def nerf_overrides(*, guidance: str, seed: int, iterations: int, guidance_scale: float, resolution: int,
                   guidance_model: str = "", overrides: list | tuple = ()) -> list[str]:
    """nerf-sds's overrides for a pipeline's parameters (the user's ``overrides`` last)."""
    out = [f"guidance={guidance}", f"trainer.seed={seed}", f"trainer.max_steps={iterations}",
           f"model.guidance_scale={guidance_scale}",
           f"model.data.train_dataset.width={resolution}", f"model.data.train_dataset.height={resolution}"]
    if guidance_model:
        out.append(f"model.guidance.model_key={guidance_model}")
    return out + [str(o) for o in overrides]


def dmtet_overrides(*, iterations: int, resolution: int, grid: int, overrides: list | tuple = ()) -> list[str]:
    """dmtet-finetune's overrides for a pipeline's parameters (the user's ``overrides`` last)."""
    return [f"trainer.max_steps={iterations}", f"model.renderer.grid_resolution={grid}",
            f"model.data.train_dataset.width={resolution}", f"model.data.train_dataset.height={resolution}",
            *[str(o) for o in overrides]]


def _keys(overrides: list[str]) -> tuple[str, ...]:
    return tuple(o.partition("=")[0] + "=" for o in overrides)


# The keys the components set from pipeline parameters: a preset's value for one of them, passed in
# a pipeline's ``overrides``, would come later on the command line and silently win over the parameter.
NERF_PARAMETER_KEYS = _keys(nerf_overrides(guidance="shapes", seed=0, iterations=1, guidance_scale=1.0, resolution=32,
                                           guidance_model="model"))
DMTET_PARAMETER_KEYS = _keys(dmtet_overrides(iterations=1, resolution=32, grid=32))


def check_run(prompt: str, negative_prompt: str, nerf: list[str], dmtet: list[str] | None = None,
              mesh_resolution: int | None = None) -> None:
    """Compose the configs the training stages will compose (nerf-sds's from ``nerf``, and
    dmtet-finetune's from the NeRF config it will refine and ``dmtet``), and check the export's
    grid: a UserError names the first setting that cannot work."""
    from dreamfusion import registry
    from dreamfusion.config import compose, to_dict

    cfg = compose([*nerf, f"model.prompt={quote(prompt)}", f"model.negative_prompt={quote(negative_prompt)}"])
    if dmtet is not None:
        from dreamfusion.stages.dmtet_finetune import compose_dmtet

        try:
            d = compose_dmtet(to_dict(cfg), "nerf-sds/checkpoints/last.pt", list(dmtet))
        except UserError as e:
            raise UserError(f"dmtet-finetune: {e}") from None
        renderer = d.model.defaults["renderer"]
        if not getattr(registry.find("renderer", renderer), "mesh", False):
            raise UserError(f"dmtet-finetune: renderer={renderer} does not draw meshes: use torch_raster or nvdiffrast")
    if mesh_resolution is not None:
        from dreamfusion.export.pipeline import ExportOptions

        ExportOptions(resolution=mesh_resolution).check()

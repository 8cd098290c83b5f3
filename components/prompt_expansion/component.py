"""prompt-expansion: validate a prompt, build view and negative prompts, encode them once."""

from kfp import dsl
from kfp.dsl import Artifact, Output

from components.platform import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def prompt_expansion(
    prompt: str,
    prompt_set: Output[Artifact],
    negative_prompt: str = "",
    guidance: str = "sd_huggingface",
    guidance_model: str = "",
    truncate: bool = False,
    overrides: list = [],
    store_endpoint: str = "",
    store_secure: bool = False,
    seed: int = 0,
    iterations: int = 10000,
    guidance_scale: float = 100.0,
    resolution: int = 64,
    dmtet: bool = False,
    dmtet_iterations: int = 5000,
    dmtet_resolution: int = 512,
    dmtet_grid: int = 128,
    dmtet_overrides: list = [],
    mesh_resolution: int = 256,
):
    """Writes the prompt set (prompts.json + embeddings.safetensors) as a folder artifact.
    A guidance model ``s3://BUCKET/models/<id>`` (a mirror) is read from ``store_endpoint``.
    First, as the run's first task, checks the settings the later tasks get (nerf-sds's from
    seed..resolution and overrides, dmtet-finetune's, mesh-export's grid): a setting they would
    refuse fails the run here, in seconds, with their one-line message."""
    from dreamfusion.errors import UserError
    from dreamfusion.stages import cli
    from dreamfusion.stages import prompt_expansion as stage
    from dreamfusion.stages.settings import check_run, nerf_overrides
    from dreamfusion.stages.settings import dmtet_overrides as dmtet_list

    try:
        check_run(
            prompt, negative_prompt,
            nerf_overrides(guidance=guidance, seed=seed, iterations=iterations, guidance_scale=guidance_scale,
                           resolution=resolution, guidance_model=guidance_model, overrides=overrides),
            dmtet_list(iterations=dmtet_iterations, resolution=dmtet_resolution, grid=dmtet_grid,
                       overrides=dmtet_overrides) if dmtet else None,
            mesh_resolution,
        )
    except UserError as e:
        raise SystemExit(f"error: {e}") from None

    def quote(text):
        return "'" + text.replace("'", "''") + "'"

    argv = ["--output", prompt_set.path]
    if store_endpoint:
        argv += ["--store-endpoint", store_endpoint, "--store-secure" if store_secure else "--no-store-secure"]
    argv += [f"guidance={guidance}", f"model.prompt={quote(prompt)}", f"model.negative_prompt={quote(negative_prompt)}"]
    if guidance_model:
        argv.append(f"model.guidance.model_key={guidance_model}")
    if truncate:
        argv.append("--truncate")
    rc = cli.run(stage.main, argv + [str(o) for o in overrides])
    if rc != 0:
        raise RuntimeError(f"prompt-expansion exited with {rc}")
    prompt_set.metadata["prompt"] = prompt


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def expand_templates(prompts: list = [], templates: list = [], catalog_name: str = "", date: str = "") -> list:
    """Catalog prompts: the literal prompts, then every prompt each template names
    ("a {red|blue} {car|chair}" -> 4 prompts); duplicates dropped, order kept. A catalog name
    or date that publishing would refuse stops the run here, before any GPU work."""
    from dreamfusion.data.prompts import check_text
    from dreamfusion.data.templates import MAX_PROMPTS, expand_template
    from dreamfusion.errors import UserError
    from dreamfusion.store.catalog import catalog_prefix

    try:
        if catalog_name:
            catalog_prefix(catalog_name, date)
        out = []
        for p in [str(p) for p in prompts] + [q for t in templates for q in expand_template(str(t))]:
            if p.strip() and p not in out:
                why = check_text(p, f"prompt {p!r:.80}")
                if why:
                    raise UserError(why)
                out.append(p)
            if len(out) > MAX_PROMPTS:
                raise UserError(f"the catalog names more than {MAX_PROMPTS} prompts; split it into several")
        if not out:
            raise UserError("the catalog has no prompts: give prompts or templates")
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    return out

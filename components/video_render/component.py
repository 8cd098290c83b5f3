"""video-render: turntable MP4, poster PNG and a self-contained HTML preview."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Model, Output

from components.platform import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def video_render(
    checkpoint: Input[Model],
    mesh: Input[Artifact],
    video: Output[Artifact],
    preview: Output[HTML],
    frames: int = 120,
    size: int = 512,
    title: str = "",
    renderer: str = "volume",
):
    """Renders the checkpoint (``volume``) or rasterizes the exported mesh (``raster``, fast on a
    CPU) into video/turntable.mp4 + poster.png; the preview (shown in the KFP UI) embeds the
    video and an interactive viewer of the exported mesh.glb."""
    import os
    import shutil

    from dreamfusion.stages import cli
    from dreamfusion.stages import video_render as stage

    argv = ["--checkpoint", checkpoint.path, "--glb", os.path.join(mesh.path, "mesh.glb"), "--output", video.path,
            "--frames", str(frames), "--size", str(size), "--renderer", renderer, "--quiet"]
    if title:
        argv += ["--title", title]
    rc = cli.run(stage.main, argv)
    if rc != 0:
        raise RuntimeError(f"video-render exited with {rc}")
    shutil.copyfile(os.path.join(video.path, "preview.html"), preview.path)
    video.metadata.update({"video": "turntable.mp4", "poster": "poster.png"})

"""A renderable NeRF scene: field + background + material + renderer, built from a config.

Training, validation, the video stage and mesh export all render through ``Scene.render``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dreamfusion import kernels, registry
from dreamfusion.config.schema import RootConfig
from dreamfusion.data.cameras import Cameras, rays
from dreamfusion.errors import UserError
from dreamfusion.train.checkpoint import FORMAT as NERF_FORMAT


def make_scene(cfg: RootConfig, device: torch.device | str = "cpu") -> nn.Module:
    """The scene a config describes: a DMTet ``MeshScene`` when its renderer draws meshes
    (``renderer=torch_raster`` or ``nvdiffrast``), else the NeRF ``Scene``."""
    if getattr(registry.find("renderer", cfg.model.defaults["renderer"]), "mesh", False):
        from dreamfusion.renderer.mesh_scene import MeshScene

        return MeshScene(cfg, device)
    return Scene(cfg, device)


class Scene(nn.Module):
    FORMAT = NERF_FORMAT
    TIMINGS = {"grid": "grid", "render": "render"}
    """How the trainer's step phases are named for this scene (metrics, benchmarks)."""

    def __init__(self, cfg: RootConfig, device: torch.device | str = "cpu"):
        super().__init__()
        m = cfg.model
        # The Triton kernels where the device and the installed packages allow (trainer.kernels=auto).
        self.no_kernels = kernels.unavailable(device) if cfg.trainer.kernels == "auto" else "trainer.kernels=torch"
        use = self.no_kernels is None
        self.nerf = registry.find("nerf", m.defaults["nerf"])(m.nerf, compile=cfg.trainer.compile, kernels=use)
        self.background = registry.find("background", m.defaults["background"])(m.background)
        self.material = registry.find("material", m.defaults["material"])(m.material)
        self.renderer = registry.find("renderer", m.defaults["renderer"])(m.renderer, kernels=use)
        self.to(device)

    @property
    def path(self) -> dict[str, str]:
        """What renders: ``render`` (ray sampling and compositing: ``triton`` or ``pytorch``),
        ``hash_grid`` (``triton``, ``tcnn``, ``compiled`` or ``eager``) and ``kernels`` (``used``, or
        why not)."""
        return {
            "render": "triton" if self.renderer.kernels else "pytorch",
            "hash_grid": self.nerf.encoder.path,
            "kernels": self.no_kernels or "used",
        }

    @property
    def device(self) -> torch.device:
        return self.renderer.density_grid.device

    def update_grid(self) -> None:
        self.renderer.update_grid(self.nerf.density)

    # -- what the trainer calls --------------------------------------------------------------
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by role, for the optimizer's learning rates (hash tables at 10x)."""
        enc = self.nerf.encoder_parameters()
        ids = set(map(id, enc))
        return {"encoder": enc, "other": [p for p in self.parameters() if id(p) not in ids]}

    def prepare(self, step: int) -> None:
        """Before a training step: refresh the occupancy grid every ``update_interval`` steps."""
        if step % self.renderer.update_interval == 0:
            self.update_grid()

    def stats(self) -> dict:
        r = self.renderer
        return {"mean_density": float(r.mean_density), "occupied_fraction": float(r.occupancy().float().mean()),
                "path": self.path}

    def state(self) -> dict:
        return {
            "nerf": self.nerf.state_dict(),
            "background": self.background.state_dict(),
            "renderer": self.renderer.state_dict(),
        }

    def render(
        self,
        cams: Cameras,
        shading: str | None,
        ambient: torch.Tensor | None = None,
        light: torch.Tensor | None = None,
        perturb: bool = False,
        need_normals: bool = True,
        chunk: int | None = None,
        smooth_normals: bool = False,
        jitter: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Render B views.

        ambient (B,) in [0, 1] (default 0.1); light (B, 3) unit directions (default: from the
        camera); ``shading`` None renders no colour (no albedo, no background, no image). Returns
        image (B, H, W, 3), opacity and depth (B, H, W), normal_image (B, H, W, 3) when normals are
        computed; with ``chunk`` None also the packed samples
        and orientation needed by the losses (for training). ``jitter``: each ray through a random
        point of its pixel (the training dataset's ``jitter``), else through its centre.
        """
        b, h, w = len(cams), cams.height, cams.width
        cams = cams.to(self.device)
        o, d = rays(cams, torch.rand(b, h, w, 2, device=self.device) if jitter else None)
        o, d = o.reshape(-1, 3), d.reshape(-1, 3)
        ambient = torch.full((b,), 0.1, device=self.device) if ambient is None else ambient.to(self.device)
        light = F.normalize(cams.position, dim=-1) if light is None else light.to(self.device)
        pix = torch.arange(b, device=self.device).repeat_interleave(h * w)  # (N,) image of each ray
        bg = self.background(d.reshape(b, h * w, 3)).reshape(-1, 3) if shading is not None else None

        def run(sl: slice) -> dict[str, torch.Tensor]:
            ro, rd, img = o[sl], d[sl], pix[sl]

            def shade(albedo, normals, ridx):
                i = img[ridx]
                return self.material(shading, albedo, normals, light[i], ambient[i, None], rd[ridx])

            return self.renderer(self.nerf, shade if shading is not None else None, ro, rd,
                                 bg[sl] if bg is not None else None, perturb=perturb, need_normals=need_normals,
                                 smooth_normals=smooth_normals)

        if chunk is None:
            out = run(slice(None))
        else:
            parts = [run(slice(i, i + chunk)) for i in range(0, o.shape[0], chunk)]
            keys = ("image", "opacity", "depth", "normal_image")
            out = {k: torch.cat([p[k] for p in parts]) for k in keys if k in parts[0]}
        for k, shape in (
            ("image", (b, h, w, 3)),
            ("opacity", (b, h, w)),
            ("depth", (b, h, w)),
            ("normal_image", (b, h, w, 3)),
            ("contrast", (b, h, w)),
        ):
            if k in out:
                out[k] = out[k].reshape(shape)
        if bg is not None:
            out["background_image"] = bg.detach().reshape(b, h, w, 3)
        return out

    @torch.no_grad()
    def render_views(self, cams: Cameras, shading: str = "lambertian", chunk: int = 1 << 14) -> dict[str, torch.Tensor]:
        """Inference render, one view at a time (bounded memory at any image size)."""
        was = self.training
        self.eval()
        try:
            outs = [self.render(_index(cams, i), shading, chunk=chunk) for i in range(len(cams))]
        finally:
            self.train(was)
        return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: torch.device | str = "cpu") -> tuple[Scene, RootConfig]:
        """A scene with the weights and occupancy grid of a nerf-sds checkpoint, in eval mode."""
        from dreamfusion.train.checkpoint import load_checkpoint, restore_config

        state = load_checkpoint(path)
        if state["format"] != cls.FORMAT:
            raise UserError(f"{path} is a {state['format']} checkpoint, not a NeRF")
        cfg = restore_config(state, path)
        scene = cls(cfg, device)
        scene.load_state(state, path)
        scene.eval()
        return scene, cfg

    def load_state(self, state: dict, path: str | Path) -> None:
        try:
            self.nerf.load_state_dict(state["nerf"])
            self.background.load_state_dict(state["background"])
            self.renderer.load_state_dict(state["renderer"])
        except (RuntimeError, KeyError) as e:
            raise UserError(f"checkpoint {path} does not match the config: {str(e).splitlines()[0]}") from None


def describe_path(path: dict[str, str]) -> str:
    """A ``Scene.path`` in a few words, e.g. ``render triton, hash grid tcnn`` or
    ``render pytorch, hash grid compiled (no kernels: cpu is not a CUDA device)``."""
    line = f"render {path['render']}, hash grid {path['hash_grid']}"
    return line if path["kernels"] == "used" else f"{line} (no kernels: {path['kernels']})"


def _index(cams: Cameras, i: int) -> Cameras:
    s = slice(i, i + 1)
    return Cameras(cams.c2w[s], cams.fovy[s], cams.theta[s], cams.phi[s], cams.radius[s], cams.width, cams.height)

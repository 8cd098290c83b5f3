"""The NeRF + SDS training loop (the nerf-sds stage's engine).

One step, as in DreamFusion / stable-dreamfusion:
1. every ``renderer.update_interval`` steps, refresh the occupancy grid;
2. draw cameras, their view prompts, a light (camera position + N(0, I)) and an ambient ratio;
3. pick the shading: albedo early (``albedo_iter_ratio``), else textureless with probability
   ``textureless_ratio``, else lambertian;
4. render at the training size; during the latent warm-up (``latent_iter_ratio``) the rendered
   normals and opacity are the model input (and no colour is rendered), else the render is encoded;
5. SDS + regularisers, backward, Adan step; a step whose loss or gradient is not finite is
   skipped and counted, ``trainer.nonfinite_limit`` of them in a row roll back to the last
   checkpoint with half the learning rate, and as many roll-backs stop the run.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from dreamfusion import __version__, files, gpu, registry
from dreamfusion.config import to_dict
from dreamfusion.config.schema import RootConfig
from dreamfusion.data.cameras import circle, sample_train, view_labels
from dreamfusion.data.prompt_set import PromptSet
from dreamfusion.data.prompts import check_tokens, view_prompts
from dreamfusion.errors import RunFailed, UserError
from dreamfusion.guidance.perp_neg import view_embeddings
from dreamfusion.optim import averaging, lr_factor
from dreamfusion.renderer.scene import describe_path, make_scene
from dreamfusion.train.checkpoint import FORMAT, FORMATS, load_checkpoint, rng_state, save_checkpoint, set_rng_state

log = logging.getLogger(__name__)
KEEP_CHECKPOINTS = 2


def _step_of(path: Path) -> int:
    try:
        return int(path.stem.split("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def prune(folder: Path, step: int, keep: int = KEEP_CHECKPOINTS) -> list[Path]:
    """Remove step checkpoints older than ``step`` but the ``keep - 1`` newest of them; the one of
    ``step`` (just written) and any later one stay. Returns what was removed."""
    older = sorted((p for p in folder.glob("step-*.pt") if _step_of(p) < step), key=_step_of)
    gone = older[: max(0, len(older) - (keep - 1))]
    for p in gone:
        p.unlink()
    return gone


def pick_device(accelerator: str) -> torch.device:
    return gpu.pick_device(accelerator, f"trainer.accelerator={accelerator!r}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class StepTimes:
    grid: float = 0.0
    render: float = 0.0
    guidance: float = 0.0
    backward: float = 0.0
    steps: int = 0
    history: list[dict] = field(default_factory=list)

    def mean(self) -> dict[str, float]:
        n = max(self.steps, 1)
        return {k: getattr(self, k) / n for k in ("grid", "render", "guidance", "backward")}


class Trainer:
    """Trains one prompt. ``fit()`` runs to ``model.iters`` steps, writing into ``output``:
    ``checkpoints/step-NNNNNN.pt`` and ``last.pt``, ``val/step-NNNNNN.png``, ``metrics.json``
    and, with ``model.export_video``, ``video.mp4``."""

    def __init__(
        self,
        cfg: RootConfig,
        output: str | Path,
        progress: bool = True,
        prompt_set: PromptSet | None = None,
        on_checkpoint: Callable[[Path, int], None] | None = None,
    ):
        """``prompt_set``: pre-encoded prompts (no text encoder is loaded); ``on_checkpoint(path, step)``
        is called after each checkpoint is written (e.g. to copy it to object storage)."""
        self.cfg, self.output, self.progress = cfg, Path(output), progress
        self.on_checkpoint = on_checkpoint
        m = cfg.model
        self.device = pick_device(cfg.trainer.accelerator)
        seed_everything(cfg.trainer.seed)
        if cfg.trainer.deterministic:
            # cuBLAS picks its reduction order per workspace unless this is set before its first call.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(cfg.trainer.deterministic, warn_only=True)
        self.scene = make_scene(cfg, self.device)
        guidance_cls = registry.find("guidance", m.defaults["guidance"])
        self.guidance = guidance_cls(m.guidance, self.device, text_encoder=prompt_set is None)
        self.loss = registry.find("loss", m.defaults["loss"])(m.loss)
        self.optimizer = registry.find("optim", m.defaults["optim"])(m.optim)(self.scene.parameter_groups())
        self.base_lr = [g["lr"] for g in self.optimizer.param_groups]
        self.health = {"nonfinite_steps": 0, "rollbacks": 0, "lr_scale": 1.0}
        self.streak = 0  # non-finite steps in a row
        self.good: Path | dict | None = None  # what a roll-back returns to: the last checkpoint or the start
        if prompt_set is None:
            self.prompts = view_prompts(m)
            check_tokens(self.guidance.tokenizer, {**self.prompts, "negative": m.negative_prompt})
            views = list(self.prompts)
            emb = self.guidance.encode_text([self.prompts[v] for v in views] + [m.negative_prompt])
            self.cond = {v: emb[i : i + 1] for i, v in enumerate(views)}
            self.uncond = emb[-1:]
        else:
            if prompt_set.model_key != m.guidance.model_key:
                raise UserError(
                    f"the prompt set was encoded for {prompt_set.model_key!r} but "
                    f"model.guidance.model_key={m.guidance.model_key!r}"
                )
            self.prompts = dict(prompt_set.views)
            self.cond = {v: prompt_set.embeddings[v].to(self.device) for v in self.prompts}
            self.uncond = prompt_set.embeddings["negative"].to(self.device)
        pn = (m.perp_neg_weight, m.perp_neg_front_decay, m.perp_neg_side_decay)
        self.perp_neg = pn if m.perp_neg else None
        if m.latent_iter_ratio > 0 and not self.guidance.supports_latent_input:
            log.warning("the guidance model has no 4-channel latent space: latent warm-up skipped")
        self.step = 0
        self.average: dict | None = None  # {"n": steps averaged, "params": running mean} (model.optim.average_from)
        self.averaged_steps = 0  # how many steps' weights the run ended on (metrics.json); 0: its last step's
        self.init_facts: dict = {}
        self.times = StepTimes()
        if m.resume_from_checkpoint:
            self.resume(m.resume_from_checkpoint)

    # -- one step ---------------------------------------------------------------------------
    def _phase(self, step: int) -> tuple[str, bool]:
        m = self.cfg.model
        if step < m.albedo_iter_ratio * m.iters:
            shading = "albedo"
        else:
            shading = "textureless" if float(torch.rand(())) < m.textureless_ratio else "lambertian"
        as_latent = step < m.latent_iter_ratio * m.iters and self.guidance.supports_latent_input
        return shading, as_latent

    def train_step(self) -> dict[str, float]:
        m, step = self.cfg.model, self.step
        if self.good is None:  # before the first checkpoint, a roll-back returns to the start
            self.good = copy.deepcopy(self.state())
        t0 = time.perf_counter()
        self.scene.prepare(step)
        t1 = time.perf_counter()

        cams = sample_train(m.data.train_dataset)
        td = m.data.train_dataset
        labels = view_labels(cams.theta, cams.phi, td.angle_front, td.angle_overhead)
        shading, as_latent = self._phase(step)
        b = len(cams)
        ambient = m.min_ambient_ratio + (1 - m.min_ambient_ratio) * torch.rand(b)
        light = F.normalize(cams.position + torch.randn(b, 3), dim=-1)
        need_normals = shading != "albedo" or as_latent or self.loss.needs_normals
        # The latent warm-up scores normals and opacity: no colour is rendered (shading None).
        smooth = {"smooth_normals": True} if getattr(self.loss, "needs_normal_smoothness", False) else {}
        out = self.scene.render(cams, None if as_latent else shading, ambient, light, perturb=True,
                                need_normals=need_normals, jitter=td.jitter, **smooth)
        t2 = time.perf_counter()

        if as_latent:
            x = torch.cat([out["normal_image"], out["opacity"][..., None]], -1).permute(0, 3, 1, 2)  # (B, 4, H, W)
            size = self.guidance.unet.config.sample_size
            z = F.interpolate(x, (size, size), mode="bilinear", align_corners=False) * 2 - 1
        else:
            z = self.guidance.encode_images(out["image"].permute(0, 3, 1, 2))  # (B, C, h, w)
        background = None
        if self.guidance.needs_background and not as_latent:
            with torch.no_grad():
                background = self.guidance.encode_images(out["background_image"].permute(0, 3, 1, 2))
        negatives = weights = None
        if self.perp_neg is None:
            cond = torch.cat([self.cond[v] for v in labels])
        else:  # the positive text follows the azimuth; the other views are negatives
            views = [view_embeddings(float(a), self.cond, *self.perp_neg) for a in cams.phi.tolist()]
            cond = torch.cat([v[0] for v in views])
            negatives = torch.stack([v[1] for v in views])
            weights = torch.stack([v[2] for v in views]).to(self.device)
        sds, _ = self.guidance.sds(
            z, cond, self.uncond.expand(b, -1, -1), m.guidance_scale, negatives=negatives, weights=weights,
            progress=step / max(m.iters - 1, 1), background=background, cameras=cams,
        )
        total, parts = self.loss(sds, out, step, m.iters)
        t3 = time.perf_counter()

        self.optimizer.zero_grad(set_to_none=True)
        finite = bool(torch.isfinite(total))
        if finite:
            total.backward()
            finite = self._grads_finite()
        if finite:
            factor = self.health["lr_scale"] * lr_factor(m.optim, step, m.iters)
            for g, lr in zip(self.optimizer.param_groups, self.base_lr):
                g["lr"] = lr * factor
            self.optimizer.step()
            self.streak = 0
            if averaging(m.optim, step, m.iters):
                self._accumulate()
        else:  # not applied: the weights and the optimizer's moments stay as they were
            self.optimizer.zero_grad(set_to_none=True)
            self.health["nonfinite_steps"] += 1
            self.streak += 1
        t4 = time.perf_counter()

        self.step += 1
        tm = self.times
        tm.grid, tm.render, tm.guidance, tm.backward = (
            tm.grid + t1 - t0,
            tm.render + t2 - t1,
            tm.guidance + t3 - t2,
            tm.backward + t4 - t3,
        )
        tm.steps += 1
        parts = {k: v if math.isfinite(v) else None for k, v in parts.items()}  # metrics.json stays JSON
        loss = float(total.detach())
        loss = loss if math.isfinite(loss) else None
        return {"step": self.step, "loss": loss, "shading": shading, "latent": as_latent, **parts}

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    @torch.no_grad()
    def _accumulate(self) -> None:
        """Add the weights after this step to the running mean (each applied step weighs alike)."""
        params = [p.detach() for p in self._params()]
        if self.average is None:
            self.average = {"n": 1, "params": [p.clone() for p in params]}
            return
        self.average["n"] += 1
        torch._foreach_lerp_(self.average["params"], params, 1.0 / self.average["n"])

    @torch.no_grad()
    def apply_average(self) -> None:
        """End on the averaged weights (``model.optim.average_from``): copy them into the model and
        rebuild the occupancy grid from them."""
        if self.average is None:
            return
        for p, a in zip(self._params(), self.average["params"]):
            p.copy_(a)
        log.info("the run ends on the average of its last %d steps' weights", self.average["n"])
        self.averaged_steps, self.average = self.average["n"], None
        self.scene.update_grid()

    def _grads_finite(self) -> bool:
        grads = [p.grad for p in self._params() if p.grad is not None]
        return not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())

    def rollback(self) -> None:
        """Back to the last checkpoint (or the start) with half the learning rate; the counters go on."""
        limit = self.cfg.trainer.nonfinite_limit
        self.health["rollbacks"] += 1
        if self.health["rollbacks"] >= limit:
            raise RunFailed(
                f"training diverged: {limit} non-finite steps in a row, {limit} times, the last at step "
                f"{self.step} (learning rate already down to {self.health['lr_scale']:g}x); see trainer.nonfinite_limit"
            )
        state = load_checkpoint(self.good) if isinstance(self.good, Path) else copy.deepcopy(self.good)
        health = dict(self.health, lr_scale=self.health["lr_scale"] * 0.5)
        self._restore(state, str(self.good) if isinstance(self.good, Path) else "the start")
        self.health = health  # the next step's learning rate takes the halving (train_step sets it)
        self.streak = 0
        scale = health["lr_scale"]
        log.warning("%d non-finite steps in a row: rolled back to step %d, learning rate x%g", limit, self.step, scale)

    # -- the loop ---------------------------------------------------------------------------
    def fit(self) -> dict:
        c, m = self.cfg.trainer, self.cfg.model
        start, began = self.step, time.perf_counter()
        desc = FORMATS[self.scene.FORMAT]
        if hasattr(self.scene, "path"):  # which kernels render (metrics.json's "path")
            desc += f" [{describe_path(self.scene.path)}]"
            log.info("%s", desc)
        bar = tqdm(
            total=m.iters,
            initial=self.step,
            desc=desc,
            disable=not self.progress,
            mininterval=0.5 if sys.stderr.isatty() else 15,
            dynamic_ncols=True,
        )
        last = {}
        while self.step < m.iters:
            last = self.train_step()
            bar.update(1)
            if self.streak >= c.nonfinite_limit:
                self.rollback()
                bar.n = self.step
                bar.refresh()
                continue
            if self.step == m.iters:
                self.apply_average()
            if self.step % m.update_extra_interval == 0 or self.step == m.iters:
                self.times.history.append({k: v for k, v in last.items() if k != "shading"})
                bar.set_postfix(loss=f"{last['loss']:.4g}", sds=f"{last['sds']:.4g}")
            if c.val_check_interval and self.step % c.val_check_interval == 0:
                self.validate()
            if c.checkpoint_interval and self.step % c.checkpoint_interval == 0:
                self.save()
        bar.close()
        if not (c.checkpoint_interval and self.step % c.checkpoint_interval == 0):
            self.save()
        if not (c.val_check_interval and self.step % c.val_check_interval == 0):
            self.validate()
        seconds = time.perf_counter() - began
        metrics = self.metrics(last, seconds, self.step - start)
        files.write_json(self.output / "metrics.json", metrics)
        if m.export_video:
            self.export_video()
        return metrics

    def metrics(self, last: dict, seconds: float, steps: int) -> dict:
        names = self.scene.TIMINGS
        return {
            "prompt": self.cfg.model.prompt,
            "seed": self.cfg.trainer.seed,
            "steps": self.step,
            "steps_this_run": steps,
            "seconds": round(seconds, 3),
            "seconds_per_step": round(seconds / max(steps, 1), 4),
            "loss": last.get("loss"),
            "sds": last.get("sds"),
            "averaged_steps": self.averaged_steps,
            **self.health,
            **self.scene.stats(),
            **({"init": self.init_facts} if self.init_facts else {}),
            "step_times": {names.get(k, k): round(v, 4) for k, v in self.times.mean().items()},
            "history": self.times.history,
        }

    # -- outputs ----------------------------------------------------------------------------
    def validate(self) -> Path:
        """Render the validation circle: a PNG with the shaded views over their normal maps."""
        cams = circle(self.cfg.model.data.val_dataset)
        rgb = self.scene.render_views(cams, "lambertian")["image"]
        nrm = self.scene.render_views(cams, "normal")["image"]
        grid = torch.cat([torch.cat(list(rgb), 1), torch.cat(list(nrm), 1)], 0)  # (2H, B*W, 3)
        path = self.output / "val" / f"step-{self.step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        with files.atomic_path(path) as tmp:
            Image.fromarray((grid.clamp(0, 1) * 255).round().byte().cpu().numpy()).save(tmp, format="PNG")
        return path

    def export_video(self) -> Path:
        from dreamfusion.export.video import write_mp4

        cams = circle(self.cfg.model.data.test_dataset)
        frames = (self.scene.render_views(cams, "lambertian")["image"].clamp(0, 1) * 255).round().byte().cpu().numpy()
        return write_mp4(frames, self.output / "video.mp4", fps=30)

    def state(self) -> dict:
        return {
            "step": self.step,
            "config": to_dict(self.cfg),
            **self.scene.state(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(),
            "health": dict(self.health),
            **({"average": dict(self.average)} if self.average is not None else {}),  # saved or deep-copied
            "averaged_steps": self.averaged_steps,
            "history": list(self.times.history),  # metrics.json keeps the whole run's history after a resume
            "package_version": __version__,
        }

    def save(self) -> Path:
        folder = self.output / "checkpoints"
        state, fmt = self.state(), self.scene.FORMAT
        path = save_checkpoint(folder / f"step-{self.step:06d}.pt", state, fmt)
        save_checkpoint(folder / "last.pt", state, fmt)
        prune(folder, self.step)
        self.good = folder / "last.pt"
        if self.on_checkpoint is not None:
            self.on_checkpoint(path, self.step)
        return path

    def resume(self, path: str | Path) -> None:
        """Continue a run from its checkpoint (exactly: weights, optimizer, step, RNG states), or
        start a DMTet run from the nerf-sds checkpoint it refines (step 0)."""
        state = load_checkpoint(path)
        if state["format"] != self.scene.FORMAT:
            if not hasattr(self.scene, "init_from_nerf") or state["format"] != FORMAT:
                raise UserError(f"checkpoint {path} ({state['format']}) cannot start a {self.scene.FORMAT} run")
            self.init_facts = self.scene.init_from_nerf(path)
            log.info("starting from the NeRF of %s", path)
            return
        self._restore(state, path)
        log.info("resumed from %s at step %d", path, self.step)

    def _restore(self, state: dict, path) -> None:
        self.scene.load_state(state, path)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as e:
            raise UserError(f"checkpoint {path}: optimizer state does not match ({e})") from None
        self.step = int(state["step"])
        set_rng_state(state["rng"])
        self.health = dict(state.get("health") or self.health)
        avg, params = state.get("average"), self._params()
        if avg is not None and [a.shape for a in avg["params"]] != [p.shape for p in params]:
            raise UserError(f"checkpoint {path}: its averaged weights do not match the model")
        self.average = None if avg is None else {
            "n": int(avg["n"]), "params": [a.to(p.device) for a, p in zip(avg["params"], params)]}
        self.averaged_steps = int(state.get("averaged_steps", 0))
        self.times.history = list(state.get("history") or [])

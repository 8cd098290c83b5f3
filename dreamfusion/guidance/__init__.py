"""Guidance (``guidance`` group): Score Distillation Sampling from a frozen text-to-image diffusion model."""

from dreamfusion.guidance.stable_diffusion import GuidanceConfig, StableDiffusionGuidance

__all__ = ["StableDiffusionGuidance", "GuidanceConfig"]

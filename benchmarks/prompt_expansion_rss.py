"""Peak resident memory of the prompt-expansion stage with Stable Diffusion 2.1-base's text encoder.

    python -m benchmarks.prompt_expansion_rss [--whole]

Builds SD 2.1-base's tokenizer and text encoder from their configs (random weights, no download;
``benchmarks.sd_architecture``; the UNet and VAE folders hold their config.json only), runs the
stage on it in a child process and prints the child's peak RSS (its ``VmHWM``).
``--whole`` also builds the UNet and VAE and measures what the stage loaded before it loaded the
text encoder alone: the whole guidance (text encoder, UNet, VAE) encoding the same prompts.
Not one of ``make bench``'s benchmarks (it writes 1.4 GB, 5 GB with ``--whole``).

Measured on the 2-core development machine: 1,699 MiB (14 s) for the tokenizer and text encoder
(1,299 MiB of float32 weights); 1,778 MiB (16 s) for the whole guidance. The difference is small
because diffusers maps safetensors files into memory and weights a process never reads are never
resident: what the UNet and VAE cost prompt-expansion was their 3.6 GB of files (downloaded from
the hub or the store mirror into the pod's cache), not resident memory.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.sd_architecture import build_sd21_base

PROMPT = "a hamburger"
# Each measured command runs in a fresh interpreter that prints its own peak RSS (VmHWM: the
# high-water mark of this process's memory since its exec) when it ends, however it ends.
# (getrusage's ru_maxrss of a child is no use here: Linux carries the parent's peak, which holds
# the models just built, over to the child.)
PEAK = "print('VmHWM', next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))"
STAGE = f"""
import runpy, sys
sys.argv = ["prompt_expansion", *sys.argv[1:]]
try:
    runpy.run_module("dreamfusion.stages.prompt_expansion", run_name="__main__")
finally:
    {PEAK}
"""
WHOLE = f"""
import sys
from dreamfusion.data.prompts import view_prompts
from dreamfusion.config import compose
from dreamfusion.guidance.stable_diffusion import GuidanceConfig, StableDiffusionGuidance
m = compose([f"model.guidance.model_key={{sys.argv[1]}}", f"model.prompt={{sys.argv[2]}}"]).model
g = StableDiffusionGuidance(GuidanceConfig(precision="32", model_key=sys.argv[1]), "cpu")
print(tuple(g.encode_text(list(view_prompts(m).values()) + [m.negative_prompt]).shape))
{PEAK}
"""


def peak_rss(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd`` (a script that prints ``VmHWM <kB>`` last); its peak RSS in MiB and wall time in s."""
    began = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in r.stdout.splitlines() if line.startswith("VmHWM ")]
    if r.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed:\n{r.stdout}{r.stderr}")
    return int(lines[-1].split()[1]) / 1024, time.perf_counter() - began


def size_mib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.prompt_expansion_rss", description=__doc__)
    p.add_argument("--whole", action="store_true", help="also measure loading the whole guidance (UNet, VAE)")
    args = p.parse_args(argv)
    parts = ("tokenizer", "text_encoder", "scheduler") + (("unet", "vae") if args.whole else ())
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        model = build_sd21_base(Path(tmp) / "sd21", parts)
        print(f"SD 2.1-base architecture built from configs in {time.perf_counter() - began:.0f} s: "
              + ", ".join(f"{d.name} {size_mib(d):,.0f} MiB" for d in sorted(model.iterdir()) if d.is_dir()))
        stage = [sys.executable, "-c", STAGE, "--output", str(Path(tmp) / "prompts"),
                 f"model.guidance.model_key={model}", f"model.prompt={PROMPT}"]
        rss, seconds = peak_rss(stage)
        print(f"prompt-expansion (tokenizer + text encoder): peak RSS {rss:,.0f} MiB, {seconds:.1f} s")
        if args.whole:
            rss, seconds = peak_rss([sys.executable, "-c", WHOLE, str(model), PROMPT])
            print(f"whole guidance (text encoder + UNet + VAE), as the stage loaded before: "
                  f"peak RSS {rss:,.0f} MiB, {seconds:.1f} s")


if __name__ == "__main__":
    main()

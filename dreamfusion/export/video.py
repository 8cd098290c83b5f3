"""MP4 writing through imageio-ffmpeg's bundled ffmpeg: H.264, yuv420p, faststart."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_mp4(frames: np.ndarray, path: str | Path, fps: int = 30) -> Path:
    """frames: (N, H, W, 3) uint8 with even H and W -> an MP4 browsers play."""
    import imageio_ffmpeg

    frames = np.ascontiguousarray(frames)
    n, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 yuv420p needs even sizes but the frames are {w}x{h}")
    writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                         quality=None, bitrate=None,
                                         output_params=["-crf", "18", "-movflags", "+faststart"],
                                         macro_block_size=1, ffmpeg_log_level="error")
    writer.send(None)
    for f in frames:
        writer.send(f)
    writer.close()
    return Path(path)

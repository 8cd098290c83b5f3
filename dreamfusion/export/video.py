"""MP4 writing through imageio-ffmpeg's bundled ffmpeg: H.264, yuv420p, faststart.

``write_mp4(frames, path, fps)`` writes a whole array; ``Mp4Writer`` takes frames one at a
time (long turntables need not sit in memory). Frames are RGB uint8 with even width and height.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dreamfusion.files import temporary_name


class Mp4Writer:
    """``with Mp4Writer(path, width, height, fps) as w: w.write(frame)`` -> an MP4 browsers play."""

    def __init__(self, path: str | Path, width: int, height: int, fps: float = 30, crf: int = 18):
        if height % 2 or width % 2:
            raise ValueError(f"H.264 yuv420p needs even sizes but the frames are {width}x{height}")
        if not fps > 0:
            raise ValueError(f"fps must be positive, not {fps}")
        import imageio_ffmpeg

        self.path, self.size, self.frames = Path(path), (width, height), 0
        self._tmp = temporary_name(self.path)  # renamed to ``path`` when closed after success
        self._writer = imageio_ffmpeg.write_frames(
            str(self._tmp),
            (width, height),
            fps=fps,
            codec="libx264",
            pix_fmt_out="yuv420p",
            quality=None,
            bitrate=None,
            output_params=["-crf", str(crf), "-preset", "medium", "-movflags", "+faststart"],
            macro_block_size=1,
            ffmpeg_log_level="error",
        )
        self._writer.send(None)

    def write(self, frame: np.ndarray) -> None:
        frame = np.ascontiguousarray(frame)
        h, w = frame.shape[:2]
        if (w, h) != self.size or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(
                f"frame {frame.shape} {frame.dtype} does not match {self.size[0]}x{self.size[1]}x3 uint8"
            )
        self._writer.send(frame)
        self.frames += 1

    def close(self, keep: bool = True) -> Path:
        """Finish the file and rename it into place (``keep``), or discard it."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            if keep:
                os.replace(self._tmp, self.path)
        self._tmp.unlink(missing_ok=True)
        return self.path

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, kind, *exc) -> None:
        self.close(keep=kind is None)


def write_mp4(frames: np.ndarray, path: str | Path, fps: int = 30) -> Path:
    """frames: (N, H, W, 3) uint8 with even H and W -> an MP4 browsers play."""
    frames = np.ascontiguousarray(frames)
    n, h, w, _ = frames.shape
    with Mp4Writer(path, w, h, fps) as writer:
        for f in frames:
            writer.write(f)
    return Path(path)

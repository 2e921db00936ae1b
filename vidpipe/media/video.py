"""MP4 output: H.264 in yuv420p with the index up front, so the file plays in any browser.

We run imageio-ffmpeg's bundled ffmpeg ourselves rather than through `imageio_ffmpeg.write_frames`: that
writer never looks at ffmpeg's exit status, so a failure at the end (a full disk while moving the index to the
front) would leave a broken file that we would then rename into place.
"""

from __future__ import annotations

import errno
import functools
import re
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from vidpipe.errors import UsageError, VidpipeError
from vidpipe.media.atomic import atomic_output
from vidpipe.media.writers import check_fps, check_frames

#: x264 quality: 18 is about visually lossless (ffmpeg's H.264 guide); imageio's default, 25, smears detail.
H264_CRF = 18

_NO_H264_HINT = "use --format gif,png, or install an ffmpeg with libx264 and point IMAGEIO_FFMPEG_EXE at it"


def check_ffmpeg_h264() -> None:
    """Raise `UsageError` unless imageio-ffmpeg's ffmpeg runs and has the libx264 encoder (checked once)."""
    problem = _h264_problem()
    if problem:
        raise UsageError(f"{problem}: {_NO_H264_HINT}")


@functools.lru_cache(maxsize=1)
def _h264_problem() -> str | None:
    try:
        exe = imageio_ffmpeg.get_ffmpeg_exe()
        listing = subprocess.run(
            [exe, "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        reason = " ".join(str(exc).split())
        return f"MP4 output needs ffmpeg, but none could be run ({reason})"
    # A line like " V....D libx264   libx264 H.264 / AVC ..." (libx264rgb does not count: it is not yuv420p).
    if not re.search(r"^\s*V\S*\s+libx264\s", listing, flags=re.MULTILINE):
        return f"MP4 output needs the libx264 encoder, which {exe} does not have"
    return None


def write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    """Encode uint8 frames [F, H, W, 3] as an H.264/yuv420p MP4 at `path`, `fps` frames per second.

    An odd width or height is padded by one pixel (a copy of the last row or column), because yuv420p halves
    the colour resolution and so needs even sizes; cropping would lose real pixels instead.
    """
    frames, fps = _even_sized(check_frames(frames)), check_fps(fps)
    check_ffmpeg_h264()
    _, height, width, _ = frames.shape
    with atomic_output(Path(path)) as temp:  # the temp keeps ".mp4": ffmpeg picks the container from it
        command = _h264_command(temp, width, height, fps)
        _check_ffmpeg_result(path, subprocess.run(command, input=frames.tobytes(), capture_output=True))


def _even_sized(frames: np.ndarray) -> np.ndarray:
    _, height, width, _ = frames.shape
    if height % 2 == 0 and width % 2 == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")


def _h264_command(target: Path, width: int, height: int, fps: int) -> list[str]:
    return [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-hide_banner", "-loglevel", "error", "-y",
        # Input: raw RGB frames on stdin.
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-",
        # Output: H.264 in yuv420p (what browsers decode), index first (+faststart) so playback starts early.
        "-an", "-c:v", "libx264", "-crf", str(H264_CRF), "-pix_fmt", "yuv420p",
        # Convert with the BT.709 matrix and tag the stream so: untagged, each player guesses BT.601 or BT.709
        # and a wrong guess shifts the colours. NOTE: setparams, not -color_primaries/-color_trc, which the
        # frames' own (unknown) tags override.
        "-vf", "scale=out_color_matrix=bt709:out_range=tv,"
               "setparams=colorspace=bt709:color_primaries=bt709:color_trc=bt709:range=tv",
        "-movflags", "+faststart",
        str(target),
    ]  # fmt: skip


def _check_ffmpeg_result(path: Path, result: subprocess.CompletedProcess) -> None:
    if result.returncode == 0:
        return
    stderr = result.stderr.decode(errors="replace")
    if "No space left on device" in stderr:
        # Raised as the OSError it is, so `atomic_output` reports it like every other full disk.
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    last_line = (stderr.strip().splitlines() or ["no message"])[-1]
    raise VidpipeError(
        f"ffmpeg failed to encode {path} (exit {result.returncode}: {last_line}): "
        "use --format gif,png or check the ffmpeg install"
    )

"""Videos to and from files: ``.gif`` with Pillow (always there), ``.mp4`` / ``.webm`` / ``.mkv`` with PyAV (the
``diffrt[video]`` extra: FFmpeg's libraries in one wheel).

:func:`export_to_video` takes what diffusers' function of that name takes (a list of PIL images or of (H, W, 3)
arrays, floats in [0, 1] or uint8) and writes ``path``; :func:`load_video` reads frames back as PIL images, for
video-to-video.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from .errors import ConfigError

FFMPEG_SUFFIXES = {".mp4": ("libx264", "yuv420p"), ".mkv": ("libx264", "yuv420p"), ".webm": ("libvpx-vp9", "yuv420p")}
VIDEO_SUFFIXES = (".gif", *FFMPEG_SUFFIXES)


def _frames_uint8(frames: Any) -> list[np.ndarray]:
    """(H, W, 3) uint8 arrays from PIL images or arrays (floats in [0, 1], or uint8)."""
    if isinstance(frames, np.ndarray) and frames.ndim == 4:
        frames = list(frames)
    if not isinstance(frames, Sequence) or len(frames) == 0:
        raise ConfigError(
            f"video frames of type {type(frames).__name__} are not supported; accepted: a non-empty list of PIL "
            "images or (H, W, 3) arrays, or a (F, H, W, 3) array."
        )
    out = []
    for frame in frames:
        if isinstance(frame, PIL.Image.Image):
            array = np.asarray(frame.convert("RGB"))
        else:
            array = np.asarray(frame)
            if array.dtype != np.uint8:
                array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
        if array.ndim != 3 or array.shape[-1] != 3:
            raise ConfigError(f"a video frame has shape {array.shape}; accepted: (height, width, 3) RGB frames.")
        out.append(array)
    if len({f.shape for f in out}) > 1:
        raise ConfigError("the video's frames have different sizes; accepted: frames of one size.")
    return out


def export_to_video(video_frames: Any, output_video_path: str | os.PathLike, fps: int = 10) -> str:
    """Write ``video_frames`` to ``output_video_path`` (.gif, .mp4, .webm or .mkv) at ``fps`` frames per second;
    returns the path. The file appears complete or not at all (written beside, then renamed)."""
    path = Path(output_video_path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ConfigError(f"{str(path)!r} is not a video file name; accepted extensions: {', '.join(VIDEO_SUFFIXES)}.")
    if isinstance(fps, bool) or not isinstance(fps, (int, np.integer)) or not 1 <= fps <= 240:
        raise ConfigError(f"fps={fps!r} is not supported; accepted: an integer from 1 to 240.")
    frames = _frames_uint8(video_frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial{suffix}")
    try:
        if suffix == ".gif":
            images = [PIL.Image.fromarray(f) for f in frames]
            duration = round(1000 / fps)
            images[0].save(partial, save_all=True, append_images=images[1:], duration=duration, loop=0)
        else:
            _write_ffmpeg(frames, partial, fps, *FFMPEG_SUFFIXES[suffix])
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return str(path)


def _av():
    try:
        import av
    except ImportError:
        raise ConfigError(
            "writing or reading .mp4/.webm/.mkv needs PyAV: pip install 'diffrt[video]' (or write a .gif)."
        ) from None
    return av


def _write_ffmpeg(frames: list[np.ndarray], path: Path, fps: int, codec: str, pixel_format: str) -> None:
    av = _av()
    height, width = frames[0].shape[:2]
    # yuv420p halves the chroma planes: H.264 wants even sizes, so odd frames get one edge row/column repeated.
    even = [np.pad(f, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge") for f in frames]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = even[0].shape[1], even[0].shape[0]
        stream.pix_fmt = pixel_format
        for frame in even:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def load_video(path: str | os.PathLike) -> list[PIL.Image.Image]:
    """The frames of a video file (.gif with Pillow; .mp4/.webm/.mkv/.mov with PyAV) as RGB PIL images."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"video file {str(path)!r} does not exist.")
    if path.suffix.lower() == ".gif":
        with PIL.Image.open(path) as gif:
            frames = []
            for i in range(getattr(gif, "n_frames", 1)):
                gif.seek(i)
                frames.append(gif.convert("RGB"))
            return frames
    av = _av()
    try:
        with av.open(str(path)) as container:
            return [frame.to_image().convert("RGB") for frame in container.decode(video=0)]
    except (av.FFmpegError, ValueError) as error:
        raise ConfigError(f"video file {str(path)!r} could not be read ({error}); accepted: a .gif or .mp4.") from None

"""The video demo: handwritten digits moving left, right, up and down, made by the bundled CogVideoX-architecture
model (``models/digits-video``) through the torch-free runtime.

``make demo-video`` exports the model once and runs::

    python -m diffrt.runtime.demo_video engines/digits-video --out demo.gif --mp4 demo.mp4 --strip demo-video.png

The ten clips ("a handwritten digit 0 moving left", "... 1 moving right", ...) play side by side in one animated
grid (``.gif``, and ``.mp4`` when PyAV is installed); ``--strip`` also writes every frame of the first clips as one
still image (the README shows it).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DIRECTIONS = ("left", "right", "up", "down")
PROMPTS = tuple(f"a handwritten digit {d} moving {DIRECTIONS[d % 4]}" for d in range(10))


def generate(
    pipe,
    prompts: Sequence[str],
    steps: int = 30,
    guidance: float = 5.0,
    seed: int = 0,
    batch: int = 2,
    num_frames: int | None = None,
    max_sequence_length: int | None = None,
) -> np.ndarray:
    """Clips for ``prompts`` as uint8 (N, F, H, W, 3), ``batch`` prompts per call; call i draws from seed + i."""
    extra = {"num_frames": num_frames} if num_frames else {}
    if max_sequence_length:
        extra["max_sequence_length"] = max_sequence_length
    clips = []
    for i, start in enumerate(range(0, len(prompts), batch)):
        chunk = list(prompts[start : start + batch])
        out = pipe(
            chunk, num_inference_steps=steps, guidance_scale=guidance, generator=seed + i, output_type="np", **extra
        )
        clips.append(np.asarray(out.frames))
    return (np.concatenate(clips) * 255.0).round().clip(0, 255).astype(np.uint8)


def grid_frames(clips: np.ndarray, columns: int = 5, zoom: int = 3, gap: int = 4) -> list[np.ndarray]:
    """One (H, W, 3) uint8 frame per time step: the clips (N, F, h, w, 3) tiled ``columns`` wide, zoomed."""
    n, frames, h, w, _ = clips.shape
    rows = -(-n // columns)
    big = clips.repeat(zoom, axis=2).repeat(zoom, axis=3)
    hh, ww = h * zoom, w * zoom
    out = []
    for f in range(frames):
        canvas = np.full((gap + rows * (hh + gap), gap + columns * (ww + gap), 3), 255, dtype=np.uint8)
        for i in range(n):
            r, c = divmod(i, columns)
            y, x = gap + r * (hh + gap), gap + c * (ww + gap)
            canvas[y : y + hh, x : x + ww] = big[i, f]
        out.append(canvas)
    return out


def strip(clips: np.ndarray, count: int = 4, zoom: int = 3, gap: int = 4) -> np.ndarray:
    """Every frame of the first ``count`` clips, one clip per row: the still image for documentation."""
    chosen = clips[:count]
    n, frames, h, w, _ = chosen.shape
    rows = [chosen[i].repeat(zoom, 1).repeat(zoom, 2) for i in range(n)]
    hh, ww = h * zoom, w * zoom
    canvas = np.full((gap + n * (hh + gap), gap + frames * (ww + gap), 3), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        for f in range(frames):
            y, x = gap + i * (hh + gap), gap + f * (ww + gap)
            canvas[y : y + hh, x : x + ww] = row[f]
    return canvas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffrt.runtime.demo_video", description=__doc__.splitlines()[0])
    parser.add_argument("package", help="the engine package of models/digits-video")
    parser.add_argument("--out", type=Path, default=Path("demo.gif"), help="the animated grid (default demo.gif)")
    parser.add_argument("--mp4", type=Path, help="also write the grid as an .mp4 (needs PyAV: diffrt[video])")
    parser.add_argument("--strip", type=Path, help="also write the first clips' frames as one still image")
    parser.add_argument("--steps", type=int, default=30, help="denoising steps (default 30)")
    parser.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fps", type=int, default=6)
    parser.add_argument("--provider", default="auto", help='"auto" (default), "cpu", "cuda", "tensorrt"')
    args = parser.parse_args(argv)

    import PIL.Image

    from .demo import package_max_batch
    from .pipelines import CogVideoXPipeline
    from .video_io import export_to_video

    start = time.perf_counter()
    pipe = CogVideoXPipeline.from_pretrained(args.package, provider=args.provider)
    pipe.set_progress_bar_config(disable=True)
    loaded = time.perf_counter() - start
    start = time.perf_counter()
    length = pipe.transformer_config.get("max_text_seq_length")
    batch = package_max_batch(args.package, default=2)
    clips = generate(pipe, PROMPTS, args.steps, args.guidance, args.seed, batch, max_sequence_length=length)
    seconds = time.perf_counter() - start
    print(f"{args.package}: loaded in {loaded:.2f} s, {len(clips)} clips of {clips.shape[1]} frames in {seconds:.2f} s")
    frames = grid_frames(clips)
    export_to_video(frames, args.out, fps=args.fps)
    print(f"wrote {args.out}")
    if args.mp4 is not None:
        export_to_video(frames, args.mp4, fps=args.fps)
        print(f"wrote {args.mp4}")
    if args.strip is not None:
        args.strip.parent.mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(strip(clips)).save(args.strip)
        print(f"wrote {args.strip}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

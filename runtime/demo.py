"""The demo grid: the digits 0-9 drawn by the bundled demo model, one row per engine package, torch-free.

``make demo`` exports ``models/digits`` twice (as it is, and with its "bold strokes" LoRA fused) and runs::

    python -m diffrt.runtime.demo engines/digits engines/digits-bold --out demo.png

Each package draws "a handwritten digit 0" ... "a handwritten digit 9" from the same seed, so the rows differ only
by the package's weights. It prints where the grid went and how long each pipeline stage took.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

PROMPTS = tuple(f"a handwritten digit {d}" for d in range(10))


def package_max_batch(package: str | Path, default: int = 4) -> int:
    """The most images per call the package was exported for (``diffrt.json``'s shape range)."""
    try:
        data = json.loads((Path(package) / "diffrt.json").read_text())
        return max(1, int(data["shape_range"]["batch"][2]))
    except (OSError, KeyError, IndexError, TypeError, ValueError):
        return default


def generate(
    pipe,
    prompts: Sequence[str],
    steps: int = 20,
    guidance: float = 4.0,
    seed: int = 0,
    batch: int = 4,
) -> np.ndarray:
    """Images for ``prompts`` as uint8 (N, H, W, 3), ``batch`` prompts per pipeline call. Call i draws its noise
    from seed ``seed + i``, so the same prompts, seed and batch give the same images on any package."""
    images = []
    for i, start in enumerate(range(0, len(prompts), batch)):
        chunk = list(prompts[start : start + batch])
        out = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, generator=seed + i, output_type="np")
        images.append(np.asarray(out.images))
    return (np.concatenate(images) * 255.0).round().clip(0, 255).astype(np.uint8)


def grid(rows: Sequence[np.ndarray], labels: Sequence[str] = (), zoom: int = 3, gap: int = 4):
    """A PIL image of ``rows`` (each (N, H, W, 3) uint8), tiles enlarged ``zoom`` times (nearest), a label left of
    each row when given."""
    import PIL.Image
    import PIL.ImageDraw

    n = max(len(r) for r in rows)
    h, w = rows[0].shape[1] * zoom, rows[0].shape[2] * zoom
    label_w = 8 + 7 * max((len(s) for s in labels), default=0) if labels else 0
    canvas = PIL.Image.new("RGB", (label_w + gap + n * (w + gap), gap + len(rows) * (h + gap)), (255, 255, 255))
    draw = PIL.ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        y = gap + r * (h + gap)
        if labels:
            draw.text((6, y + h // 2 - 6), labels[r], fill=(60, 60, 60))
        for c, tile in enumerate(row):
            image = PIL.Image.fromarray(tile).resize((w, h), PIL.Image.NEAREST)
            canvas.paste(image, (label_w + gap + c * (w + gap), y))
    return canvas


def _timing_lines(summary: dict[str, dict[str, float]]) -> list[str]:
    return [
        f"    {stage:<13} {s['calls']:>4} calls  {s['total_s']:7.3f} s total  {1000 * s['mean_s']:8.2f} ms each"
        for stage, s in summary.items()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffrt.runtime.demo", description=__doc__.splitlines()[0])
    parser.add_argument("packages", nargs="+", help="engine packages of the demo model; one grid row each")
    parser.add_argument("--labels", nargs="*", help="a label per row (default: the package folder names)")
    parser.add_argument("--out", type=Path, default=Path("demo.png"), help="the grid to write (default demo.png)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    parser.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--provider", default="auto", help='"auto" (default), "cpu", "cuda", "tensorrt"')
    args = parser.parse_args(argv)

    from .pipelines import StableDiffusionPipeline
    from .timing import StageTimings

    labels = args.labels or [Path(p).name for p in args.packages]
    if len(labels) != len(args.packages):
        parser.error(f"--labels gives {len(labels)} labels for {len(args.packages)} packages")
    rows = []
    for package, label in zip(args.packages, labels):
        start = time.perf_counter()
        pipe = StableDiffusionPipeline.from_pretrained(package, provider=args.provider)
        loaded = time.perf_counter() - start
        timings = StageTimings()
        pipe.stage_hooks.append(timings)
        pipe.set_progress_bar_config(disable=True)
        start = time.perf_counter()
        rows.append(generate(pipe, PROMPTS, args.steps, args.guidance, args.seed, package_max_batch(package)))
        seconds = time.perf_counter() - start
        print(f"{label} ({package}): loaded in {loaded:.2f} s, 10 digits in {seconds:.2f} s")
        print("\n".join(_timing_lines(timings.summary())))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid(rows, labels).save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

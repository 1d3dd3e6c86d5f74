"""What each fast CPU mode costs in image quality, measured (benchmarks/QUALITY.md; `make quality`).

Fast modes: the UNet in int8 (`diffrt quantize`), DeepCache feature caching (`--deepcache` packages,
`cache_interval` / `cache_branch`), both, and the tiny (TAESD-shaped) VAE as the decoder.

- **Digits** (the bundled model, models/digits, whose tiny VAE models/digits/vae_tiny was distilled from its KL
  VAE): the demo test's 80 prompts (8 per digit, numeral and word forms), 20 steps, guidance 4, seeds as the demo
  test draws them; the judge is the demo test's classifier (scikit-learn's digits SVC). Per mode: accuracy, and the
  mean / max 8-bit pixel difference from the exact images.
- **SD 1.5 architecture** (random weights, benchmarks/sd15.py, the packages `make bench` builds under build/bench):
  PSNR of the final image against the exact fp32 run with the same initial latents, prompt, DPM-Solver++ and
  guidance 7.5, per size and mode, and the DeepCache settings swept.

    python benchmarks/quality.py            # both parts; writes benchmarks/results/quality.json
    python benchmarks/quality.py --digits   # the digits part only (about two minutes)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
DIGITS = ROOT / "models" / "digits"
STEPS, GUIDANCE, BATCH, PER_DIGIT = 20, 4.0, 4, 8
SD_PROMPT = "a photograph of an astronaut riding a horse"


def digit_prompts() -> tuple[list[str], np.ndarray]:
    sys.path.insert(0, str(ROOT / "tests"))
    from fixtures.digits import WORDS

    prompts, labels = [], []
    for i in range(PER_DIGIT):
        for d in range(10):
            prompts.append(f"a handwritten digit {d}" if i % 2 == 0 else f"a handwritten {WORDS[d]}")
            labels.append(d)
    return prompts, np.array(labels)


def build_digit_packages(work: Path) -> dict[str, Path]:
    """The digits model exported plainly, with ``--deepcache`` and its tiny VAE as preview decoder, and that one
    quantized (calibrated on the digits prompts); each made once under ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    python = [sys.executable, "-m", "diffrt"]
    packages = {"plain": work / "digits", "deepcache": work / "digits-deepcache", "int8": work / "digits-int8"}
    steps = {
        "plain": [*python, "export", str(DIGITS), str(packages["plain"]), "--force", "--batch", str(BATCH)],
        "deepcache": [*python, "export", str(DIGITS), str(packages["deepcache"]), "--force", "--deepcache"]
        + ["--preview-vae", str(DIGITS / "vae_tiny"), "--batch", str(BATCH)],
    }
    # Calibrated on other wordings than the 80 judged prompts, so the judged calls are not the calibration data.
    sys.path.insert(0, str(ROOT / "tests"))
    from fixtures.digits import WORDS

    prompts = work / "digit-prompts.txt"
    wordings = [f"handwritten number {d}" for d in range(10)] + [f"the number {w} written by hand" for w in WORDS]
    prompts.write_text("\n".join(wordings) + "\n")
    steps["int8"] = [*python, "quantize", str(packages["deepcache"]), str(packages["int8"]), "--force"]
    steps["int8"] += ["--calibration-prompts", str(prompts), "--calibration-steps", str(STEPS)]
    for name, command in steps.items():
        if not (packages[name] / "model_index.json").is_file():
            subprocess.run(command, check=True, cwd=ROOT, capture_output=True)
    return packages


DIGIT_MODES: dict[str, tuple[str, dict[str, Any], bool]] = {
    # name: (package, call arguments, decode with the tiny VAE)
    "exact fp32": ("plain", {}, False),
    "int8": ("int8", {}, False),
    "cached, interval 2, branch 0": ("deepcache", {"cache_interval": 2, "cache_branch": 0}, False),
    "cached, interval 3, branch 0": ("deepcache", {"cache_interval": 3, "cache_branch": 0}, False),
    "cached, interval 3, branch 1": ("deepcache", {"cache_interval": 3, "cache_branch": 1}, False),
    "tiny VAE decode": ("deepcache", {}, True),
    "int8 + cached (3, 0)": ("int8", {"cache_interval": 3, "cache_branch": 0}, False),
    "int8 + cached (3, 0) + tiny VAE": ("int8", {"cache_interval": 3, "cache_branch": 0}, True),
}


def digit_images(package: Path, call: dict[str, Any], tiny_vae: bool, prompts: list[str]) -> np.ndarray:
    """The 80 digits as uint8 (N, 32, 32, 3), drawn as runtime.demo.generate draws them (call i: seed i)."""
    from diffrt.runtime import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(package, provider="cpu")
    pipe.set_progress_bar_config(disable=True)
    images = []
    for i, start in enumerate(range(0, len(prompts), BATCH)):
        chunk = prompts[start : start + BATCH]
        kwargs = {"num_inference_steps": STEPS, "guidance_scale": GUIDANCE, "generator": i, **call}
        if tiny_vae:
            latents = pipe(chunk, output_type="latent", **kwargs).images
            images.append(np.asarray(pipe.decode_preview(latents, output_type="np")))
        else:
            images.append(np.asarray(pipe(chunk, output_type="np", **kwargs).images))
    return (np.concatenate(images) * 255.0).round().clip(0, 255).astype(np.uint8)


def measure_digits(work: Path, modes: dict[str, tuple[str, dict[str, Any], bool]] = DIGIT_MODES) -> dict[str, Any]:
    """Accuracy and pixel differences of each digits mode (see the module doc)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from fixtures.digits import to_sklearn, train_classifier

    packages = build_digit_packages(work)
    prompts, labels = digit_prompts()
    judge = train_classifier()[0]
    rows, exact = {}, None
    for name, (package, call, tiny) in modes.items():
        start = time.perf_counter()
        images = digit_images(packages[package], call, tiny, prompts)
        seconds = time.perf_counter() - start
        exact = images if exact is None else exact
        diff = np.abs(images.astype(np.int16) - exact.astype(np.int16))
        rows[name] = {
            "accuracy": float((judge.predict(to_sklearn(images)) == labels).mean()),
            "mean_pixel_diff": round(float(diff.mean()), 2),
            "max_pixel_diff": int(diff.max()),
            "seconds": round(seconds, 2),
            "package": package,
            "call": call,
            "tiny_vae": tiny,
        }
        print(f"[quality] digits {name}: {rows[name]}", flush=True)
    return rows


def sd_image(package: Path, size: int, call: dict[str, Any], steps: int) -> np.ndarray:
    from diffrt.runtime import StableDiffusionPipeline
    from diffrt.runtime.schedulers import DPMSolverMultistepScheduler

    pipe = StableDiffusionPipeline.from_pretrained(package, provider="cpu")
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    latents = np.random.default_rng(0).standard_normal((1, 4, size // 8, size // 8), dtype=np.float32)
    image = pipe(
        SD_PROMPT, height=size, width=size, latents=latents, num_inference_steps=steps, output_type="np", **call
    )
    return (np.asarray(image.images[0]) * 255.0).round().clip(0, 255)


def psnr(a: np.ndarray, b: np.ndarray) -> float | None:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return None if mse == 0 else round(10 * np.log10(255.0**2 / mse), 2)  # None: identical


SD_MODES = {
    "int8": ("sd15-package-int8", {}),
    **{
        f"cached, interval {n}, branch {b}": ("sd15-package-deepcache", {"cache_interval": n, "cache_branch": b})
        for n in (2, 3, 5)
        for b in (0, 1, 2)
    },
    "int8 + cached (3, 0)": ("sd15-package-int8", {"cache_interval": 3, "cache_branch": 0}),
    "int8 + cached (3, 1)": ("sd15-package-int8", {"cache_interval": 3, "cache_branch": 1}),
}


def measure_sd(work: Path, sizes: list[int], steps: int) -> dict[str, Any]:
    """PSNR (dB) of each SD 1.5-architecture mode against the exact fp32 image, per size."""
    rows: dict[str, Any] = {}
    for size in sizes:
        exact = sd_image(work / "sd15-package", size, {}, steps)
        for name, (package, call) in SD_MODES.items():
            if not (work / package / "model_index.json").is_file():
                continue
            value = psnr(sd_image(work / package, size, call, steps), exact)
            rows.setdefault(name, {})[f"{size}x{size}"] = value
            print(f"[quality] sd15 {size} {name}: {value} dB", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--digits", action="store_true", help="the digits part only")
    parser.add_argument("--work", default=str(ROOT / "build" / "bench"), help="where the packages are (build/bench)")
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default=str(BENCH / "results" / "quality.json"))
    args = parser.parse_args(argv)
    work = Path(args.work)
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    report["digits"] = measure_digits(work / "digits")
    if not args.digits:
        sizes = [int(s) for s in args.sizes.split(",")]
        report["sd15"] = {"steps": args.steps, "psnr_db": measure_sd(work, sizes, args.steps)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"({args.out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``diffrt generate``: run a package's pipeline from the command line (torch-free).

The task follows the arguments: ``--mask`` inpaints, ``--image`` redraws an image, otherwise text-to-image;
a DDPM package generates unconditionally. The pipeline class comes from AutoPipeline, as in Python; SDXL packages
also take ``--prompt-2`` / ``--negative-prompt-2`` for their second text encoder.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from ..units import parse_size


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("package", help="an engine package folder (from `diffrt export`)")
    p.add_argument("prompt", nargs="?", help="what to draw (not used by unconditional DDPM packages)")
    p.add_argument("--negative", metavar="TEXT", help="negative prompt: what to steer away from")
    p.add_argument(
        "--prompt-2",
        metavar="TEXT",
        help="SDXL / SD3: prompt for the second text encoder, Flux: for T5 (default: the prompt)",
    )
    p.add_argument(
        "--negative-prompt-2", metavar="TEXT", help="SDXL / SD3 / Flux: negative prompt for the second text encoder"
    )
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default 50; DDPM: 1000)")
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale (default: the pipeline's, 7.5; SDXL text/image-to-image 5)",
    )
    p.add_argument("--seed", type=int, default=None, help="random seed, an integer >= 0 (default: fresh entropy)")
    p.add_argument("--size", type=parse_size, metavar="HxW", help="image size in pixels (text-to-image, inpainting)")
    p.add_argument(
        "--image", type=Path, metavar="IN.png", help="input image: image-to-image, or inpainting with --mask"
    )
    p.add_argument("--mask", type=Path, metavar="MASK.png", help="inpainting mask: white is repainted, black kept")
    p.add_argument("--strength", type=float, default=None, help="how much of --image to redraw, 0 to 1")
    p.add_argument("--scheduler", metavar="NAME", help="scheduler class to use instead of the package's")
    p.add_argument("--num-images", type=int, default=1, help="images to make for the prompt (default 1)")
    p.add_argument(
        "--cache-interval",
        type=int,
        metavar="N",
        help="DeepCache: run the whole UNet every N steps and only its shallow path in between (a package exported "
        "with --deepcache; default: the whole UNet every step)",
    )
    p.add_argument(
        "--cache-branch", type=int, default=0, metavar="B", help="DeepCache branch, 0 (fastest) to 2 (default 0)"
    )
    p.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="FILE[:WEIGHT]",
        help="a LoRA adapter for this run (repeat for several; WEIGHT defaults to 1.0); needs a package exported with "
        "--lora-slots",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("out.png"),
        help="output file (default out.png); several images are written as out-0.png, out-1.png, ...",
    )
    p.add_argument(
        "--provider",
        default="auto",
        help='backend: "auto" (default: TensorRT, then CUDA, then CPU), "tensorrt", "cuda", "cpu"',
    )
    p.add_argument("--threads", type=int, default=None, help="intra-op threads per engine (default: all cores)")
    p.add_argument(
        "--max-size",
        type=parse_size,
        metavar="HxW",
        help="largest image size a call may ask for (default: the range the package was exported for)",
    )
    p.add_argument(
        "--max-batch", type=int, metavar="N", help="most images per call (default: what the package was exported for)"
    )
    video = p.add_argument_group("video packages (CogVideoX): --out clip.gif or clip.mp4")
    video.add_argument("--frames", type=int, metavar="N", help="frames to make (default: the model's, 49)")
    video.add_argument("--fps", type=int, default=8, help="frames per second of the written video (default 8)")
    video.add_argument("--video", type=Path, metavar="IN.mp4", help="video-to-video: the video to start from")
    video.add_argument(
        "--dynamic-cfg", action="store_true", help="guidance that rises over the steps (use_dynamic_cfg)"
    )
    video.add_argument(
        "--stage-memory",
        choices=("high", "low"),
        default="high",
        help="low: create each network's session when its stage starts and release it after (peak = largest stage)",
    )
    video.add_argument("--vae-tiling", action="store_true", help="decode in overlapping tiles (less memory)")


# Schedulers diffrt has that cannot drive an image pipeline's denoising loop, and why.
NOT_FOR_GENERATING = {
    "DDIMInverseScheduler": "runs image to noise (inversion), not noise to image",
    "DPMSolverMultistepInverseScheduler": "runs image to noise (inversion), not noise to image",
    "CogVideoXDPMScheduler": "steps with CogVideoX's extra arguments (the previous x0 and timestep) only",
    "ScoreSdeVeScheduler": "samples by predictor-corrector calls (step_pred / step_correct), not step",
}


def check_arguments(args: argparse.Namespace) -> None:
    """What can be refused before a package is opened: flags that need another flag, an output file PIL cannot
    write."""
    import PIL.Image

    from .errors import ConfigError

    if args.mask is not None and args.image is None:
        raise ConfigError("--mask needs --image: the image to inpaint.")
    if args.strength is not None and args.image is None:
        raise ConfigError("--strength needs --image: it says how much of that image to redraw.")
    from .video_io import VIDEO_SUFFIXES

    if args.video is not None and args.image is not None:
        raise ConfigError(
            "--video and --image were both given; accepted: one input (video-to-video or image-to-video)."
        )
    extensions = PIL.Image.registered_extensions()
    if args.out.suffix.lower() not in extensions and args.out.suffix.lower() not in VIDEO_SUFFIXES:
        known = ", ".join(sorted(e for e in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tiff") if e in extensions))
        raise ConfigError(f"--out {str(args.out)!r} has no image file extension PIL writes; accepted: {known}.")
    for flag, value, least in (
        ("--num-images", args.num_images, 1),
        ("--max-batch", args.max_batch, 1),
        ("--steps", args.steps, 1),
        ("--seed", args.seed, 0),
    ):
        if value is not None and value < least:
            raise ConfigError(f"{flag} {value} is not accepted; give an integer >= {least}.")


def limits_for(args: argparse.Namespace, package):
    """The pipeline limits: the package's declared range, with --max-size / --max-batch overriding it."""
    from .pipelines.inputs import Limits

    limits = Limits.of_range(package.shape_range)
    if args.max_size is not None:
        f = package.vae_scale_factor
        limits = dataclasses.replace(limits, height=(f, args.max_size[0]), width=(f, args.max_size[1]))
    if args.max_batch is not None:
        limits = dataclasses.replace(limits, batch=args.max_batch)
    return limits


def run(args: argparse.Namespace) -> int:
    from .engines import SessionSettings
    from .errors import ConfigError
    from .package import EnginePackage
    from .pipelines import (
        AutoPipelineForImage2Image,
        AutoPipelineForInpainting,
        AutoPipelineForText2Image,
        DDPMPipeline,
    )
    from .pipelines.inputs import DEFAULT_INPUT_PIXELS
    from .pipelines.stable_diffusion_xl import StableDiffusionXLBase
    from .schedulers import SCHEDULERS

    check_arguments(args)
    settings = SessionSettings(intra_op_threads=args.threads)
    start = time.perf_counter()
    package = EnginePackage(args.package, provider=args.provider, session_settings=settings)
    limits = limits_for(args, package)
    from .video_io import VIDEO_SUFFIXES

    if package.pipeline_class.startswith("CogVideoX"):
        return run_video(args, package, limits, start)
    if args.out.suffix.lower() in VIDEO_SUFFIXES and args.out.suffix.lower() != ".gif":
        raise ConfigError(f"--out {str(args.out)!r} is a video file, but this package makes images; use .png.")
    video_only = [f for f, v in (("--frames", args.frames), ("--video", args.video)) if v is not None]
    if video_only:
        raise ConfigError(f"{' and '.join(video_only)} apply only to video (CogVideoX) packages.")
    if package.pipeline_class == "DDPMPipeline":
        pipe, task = DDPMPipeline(package, limits=limits), "unconditional"
    else:
        auto = AutoPipelineForInpainting if args.mask else AutoPipelineForImage2Image if args.image else None
        auto = auto or AutoPipelineForText2Image
        pipe = auto.pipeline_class(package.pipeline_class)(package, limits=limits)
        task = auto.task
        if args.prompt is None:
            raise ConfigError(f"prompt is missing; {task} with {type(pipe).__name__} needs one.")
    second = [
        flag
        for flag, value in (("--prompt-2", args.prompt_2), ("--negative-prompt-2", args.negative_prompt_2))
        if value is not None
    ]
    from .pipelines.mmdit import MMDiTPipeline

    if second and not isinstance(pipe, (StableDiffusionXLBase, MMDiTPipeline)):
        raise ConfigError(
            f"{' and '.join(second)} apply only to SDXL, SD3 and Flux packages (several text encoders); this "
            "package runs "
            f"{type(pipe).__name__}."
        )
    if args.scheduler:
        usable = sorted(n for n in SCHEDULERS if n not in NOT_FOR_GENERATING)
        if args.scheduler not in usable:
            why = NOT_FOR_GENERATING.get(args.scheduler, "is unknown")
            raise ConfigError(f"--scheduler {args.scheduler!r} {why}; accepted: {', '.join(usable)}.")
        pipe.scheduler = SCHEDULERS[args.scheduler].from_config(pipe.scheduler.config)
    adapters = load_adapters(pipe, args.lora)
    loaded = time.perf_counter() - start

    kwargs: dict = {"generator": args.seed}
    budget = pipe.limits.input_pixels or DEFAULT_INPUT_PIXELS
    if args.steps is not None:
        kwargs["num_inference_steps"] = args.steps
    if isinstance(pipe, DDPMPipeline):
        if args.cache_interval is not None:
            raise ConfigError("--cache-interval applies to Stable Diffusion packages, not to DDPM's UNet.")
        kwargs["batch_size"] = args.num_images
    else:
        kwargs.update(prompt_kwargs(args, pipe, adapters, budget))
    pipe.set_progress_bar_config(desc=task)
    start = time.perf_counter()
    images = pipe(**kwargs).images
    seconds = time.perf_counter() - start

    paths = (
        [args.out]
        if len(images) == 1
        else [args.out.with_name(f"{args.out.stem}-{i}{args.out.suffix}") for i in range(len(images))]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for image, path in zip(images, paths):
        image.save(path)
    engine = next(iter(pipe.components.values()))
    print(f"{type(pipe).__name__} on {engine.provider}: loaded in {loaded:.2f} s, generated in {seconds:.2f} s")
    for path in paths:
        print(path)
    return 0


def prompt_kwargs(args: argparse.Namespace, pipe, adapters: dict[str, float], budget: int) -> dict:
    """The call arguments of a Stable Diffusion pipeline from the command line's flags (images opened within the
    pixel ``budget``)."""
    from .errors import ConfigError
    from .pipelines.mmdit import MMDiTPipeline
    from .pipelines.stable_diffusion_xl import StableDiffusionXLBase

    kwargs: dict = dict(prompt=args.prompt, negative_prompt=args.negative, num_images_per_prompt=args.num_images)
    mmdit = isinstance(pipe, MMDiTPipeline)
    if args.guidance is not None:
        kwargs["guidance_scale"] = args.guidance
    if adapters:
        kwargs["adapters"] = adapters
    if isinstance(pipe, StableDiffusionXLBase) or mmdit:
        kwargs.update(prompt_2=args.prompt_2, negative_prompt_2=args.negative_prompt_2)
    if args.image is not None:
        kwargs["image"] = _open_image(args.image, "--image", budget).convert("RGB")
    if args.mask is not None:
        kwargs["mask_image"] = _open_image(args.mask, "--mask", budget)
    if args.strength is not None:
        kwargs["strength"] = args.strength
    if args.size is not None:
        if args.image is not None and args.mask is None and not mmdit:
            raise ConfigError("--size does not apply to image-to-image: the output takes --image's size.")
        kwargs["height"], kwargs["width"] = args.size
    elif mmdit and args.image is not None:  # SD3 / Flux resize the image to height x width: keep its size
        m = pipe.size_multiple
        kwargs["height"], kwargs["width"] = (max(m, v // m * m) for v in kwargs["image"].size[::-1])
    if not mmdit:
        kwargs.update(cache_interval=args.cache_interval, cache_branch=args.cache_branch)
    elif args.cache_interval is not None:
        raise ConfigError(
            f"--cache-interval applies to Stable Diffusion UNets; {type(pipe).__name__} has a transformer."
        )
    return kwargs


def load_adapters(pipe, values: list[str]) -> dict[str, float]:
    """``--lora FILE[:WEIGHT]`` arguments loaded into ``pipe`` (one adapter per file): {adapter name: weight}."""
    from .errors import ConfigError
    from .lora import LoraSpec

    if not values:
        return {}
    if not hasattr(pipe, "load_lora_weights"):
        raise ConfigError(f"--lora applies to text-conditioned packages; this package runs {type(pipe).__name__}.")
    adapters: dict[str, float] = {}
    for i, value in enumerate(values):
        spec = LoraSpec.parse(value)
        name = f"lora_{i}"
        pipe.load_lora_weights(str(spec.path), adapter_name=name)
        adapters[name] = spec.weight
    return adapters


def _open_image(path: Path, flag: str, budget: int):
    import PIL.Image

    from .errors import ConfigError

    try:
        image = PIL.Image.open(path)  # reads the header only: the size is known before any pixel is decoded
    except (OSError, PIL.UnidentifiedImageError) as exc:
        raise ConfigError(f"{flag} {str(path)!r} is not a readable image ({exc}); accepted: PNG, JPEG, WebP.") from None
    except PIL.Image.DecompressionBombError as exc:
        raise ConfigError(f"{flag} {str(path)!r} is refused as a decompression bomb ({exc}).") from None
    if image.width * image.height > budget:
        raise ConfigError(
            f"{flag} {str(path)!r} is {image.width}x{image.height} pixels, more than the {budget} a call decodes; "
            "accepted: a smaller image."
        )
    try:
        image.load()
    except (OSError, PIL.Image.DecompressionBombError) as exc:
        raise ConfigError(f"{flag} {str(path)!r} is not a readable image ({exc}); accepted: PNG, JPEG, WebP.") from None
    return image


def run_video(args: argparse.Namespace, package, limits, start: float) -> int:
    """``diffrt generate`` on a CogVideoX package: text-, image- or video-to-video, written as a .gif or .mp4."""
    from .errors import ConfigError
    from .pipelines.cogvideox import (
        CogVideoXImageToVideoPipeline,
        CogVideoXPipeline,
        CogVideoXVideoToVideoPipeline,
    )
    from .pipelines.inputs import DEFAULT_INPUT_PIXELS
    from .video_io import VIDEO_SUFFIXES, export_to_video, load_video

    if args.out.suffix.lower() not in VIDEO_SUFFIXES:
        raise ConfigError(f"--out {str(args.out)!r} is not a video file; accepted: {', '.join(VIDEO_SUFFIXES)}.")
    if args.cache_interval is not None:
        raise ConfigError("--cache-interval applies to Stable Diffusion packages, not to CogVideoX's transformer.")
    if args.prompt is None:
        raise ConfigError("prompt is missing; a CogVideoX package makes videos from a prompt.")
    if args.mask is not None:
        raise ConfigError("--mask does not apply to video packages; accepted: --image (image-to-video) or --video.")
    cls = CogVideoXVideoToVideoPipeline if args.video else CogVideoXImageToVideoPipeline if args.image else None
    cls = cls or CogVideoXPipeline
    pipe = cls(package, limits=limits, stage_memory=args.stage_memory)
    if args.vae_tiling:
        pipe.vae.enable_tiling()
    loaded = time.perf_counter() - start
    kwargs: dict = {"prompt": args.prompt, "negative_prompt": args.negative, "generator": args.seed}
    kwargs.update(num_videos_per_prompt=args.num_images, use_dynamic_cfg=args.dynamic_cfg)
    for name, value in (("num_inference_steps", args.steps), ("guidance_scale", args.guidance)):
        if value is not None:
            kwargs[name] = value
    if args.frames is not None:
        kwargs["num_frames"] = args.frames
    if args.size is not None:
        kwargs["height"], kwargs["width"] = args.size
    if args.image is not None:
        kwargs["image"] = _open_image(args.image, "--image", pipe.limits.input_pixels or DEFAULT_INPUT_PIXELS).convert(
            "RGB"
        )
    if args.video is not None:
        kwargs["video"] = load_video(args.video)
        if args.strength is not None:
            kwargs["strength"] = args.strength
    pipe.set_progress_bar_config(desc="text-to-video")
    began = time.perf_counter()
    videos = pipe(**kwargs).frames
    seconds = time.perf_counter() - began
    paths = (
        [args.out]
        if len(videos) == 1
        else [args.out.with_name(f"{args.out.stem}-{i}{args.out.suffix}") for i in range(len(videos))]
    )
    for frames, path in zip(videos, paths):
        export_to_video(frames, path, fps=args.fps)
    print(f"{type(pipe).__name__} on {package.provider}: loaded in {loaded:.2f} s, generated in {seconds:.2f} s")
    for path in paths:
        print(path)
    return 0

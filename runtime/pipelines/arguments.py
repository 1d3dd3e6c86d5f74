"""A pipeline call's arguments, declared once per task as a typed, keyword-only dataclass.

Each pipeline's ``__call__`` takes diffusers' arguments (names, defaults, meaning) and turns them into one of these
objects before any work starts; the checks that need no package run in ``__post_init__``, so an object that exists
is a valid request. The pipeline then hands it down by name: no function of the pipeline layer passes a call's
settings by position. A pipeline names its class in ``arguments`` and does its work in ``generate(args)``;
:func:`call_taking` gives it a ``__call__`` with the public signature: the first few arguments (as diffusers users
pass them: ``pipe(prompt)``, ``pipe(prompt, image)``) by position or name, all others by name.

The classes build on one another the way the tasks do: text-to-image adds a size and latents to what every prompt-
driven call takes; image-to-image an image and a strength; inpainting a mask; SDXL its second prompts, pooled
embeddings, size conditioning and base-to-refiner cut-offs.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar, TypeVar

import numpy as np

from ..adapters import check_adapter_weights
from ..errors import ConfigError

Prompt = str | Sequence[str] | None
Size = tuple[int, int]
StepCallback = Callable[[Any, int, Any, dict[str, np.ndarray]], dict[str, np.ndarray] | None]
Generator = np.random.Generator | int | None
OUTPUT_TYPES = ("pil", "np", "latent")
# The order diffusers' pipelines list their arguments in: signatures show them so.
DIFFUSERS_ORDER = (
    *("video", "prompt", "prompt_2", "prompt_3", "negative_prompt", "negative_prompt_2", "negative_prompt_3"),
    *("true_cfg_scale", "image", "mask_image", "masked_image_latents", "depth_map"),
    *("height", "width", "num_frames"),
    *("padding_mask_crop", "strength", "num_inference_steps", "timesteps", "sigmas", "denoising_start"),
    *("denoising_end", "guidance_scale", "use_dynamic_cfg"),
    *("num_images_per_prompt", "num_videos_per_prompt", "batch_size"),
    *("eta", "generator", "latents"),
    *("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"),
    *("output_type", "guidance_rescale", "original_size", "crops_coords_top_left", "target_size"),
    *("negative_original_size", "negative_crops_coords_top_left", "negative_target_size", "aesthetic_score"),
    *("negative_aesthetic_score", "clip_skip", "callback_on_step_end", "callback_on_step_end_tensor_inputs"),
    *("skip_guidance_layers", "skip_layer_guidance_scale", "skip_layer_guidance_stop", "skip_layer_guidance_start"),
    *("max_sequence_length", "mu"),
    "adapters",  # diffrt's own: the LoRA adapters of this call alone
    *("cache_interval", "cache_branch"),  # diffrt's own: DeepCache (packages exported with --deepcache)
)


# ----- checks shared by every argument class ---------------------------------------------------------------------
def check_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name}={value!r} is not supported; accepted: an integer >= {minimum}.")
    return int(value)


def check_number(name: str, value: Any, low: float = -math.inf, high: float = math.inf) -> float:
    """A finite real number within [low, high] (NaN and infinities never are)."""
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or not low <= value <= high:
        accepted = "a finite number" if (low, high) == (-math.inf, math.inf) else f"a number from {low:g} to {high:g}"
        raise ConfigError(f"{name}={value!r} is not supported; accepted: {accepted}.")
    return float(value)


def check_schedule(name: str, values: Any) -> list[float] | None:
    """A custom schedule: a non-empty list of finite numbers, or None."""
    if values is None:
        return None
    items = values.tolist() if isinstance(values, np.ndarray) else values
    if (
        isinstance(items, (str, bytes))
        or not isinstance(items, Sequence)
        or not items
        or not all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)
            for v in items
        )
    ):
        raise ConfigError(f"{name}={values!r} is not supported; accepted: a non-empty list of finite numbers.")
    return list(items)


def check_adapters(adapters: Any) -> dict[str, Any] | None:
    """A call's ``adapters``: None, or ``{name: weight}`` with each weight checked."""
    if adapters is None:
        return None
    if not isinstance(adapters, Mapping) or not all(isinstance(k, str) for k in adapters):
        raise ConfigError(
            f"adapters={adapters!r} is not supported; accepted: None or a dict of adapter name -> weight, "
            "such as {'pixel': 0.5, 'toy': 1.0}."
        )
    return {k: check_adapter_weights(f"adapters[{k!r}]", w) for k, w in adapters.items()}


def check_callback(callback: Any, tensor_inputs: Any) -> tuple[str, ...]:
    """Refuse a ``callback_on_step_end`` that cannot be called; its tensor names as a tuple."""
    if callback is not None and not callable(callback):
        raise ConfigError(
            f"callback_on_step_end={callback!r} is not callable; accepted: None or a function "
            "(pipe, step, timestep, tensors) -> dict of tensors."
        )
    return (tensor_inputs,) if isinstance(tensor_inputs, str) else tuple(tensor_inputs)


def check_output_type(output_type: Any) -> str:
    if output_type not in OUTPUT_TYPES:
        raise ConfigError(f"output_type={output_type!r} is not supported; accepted: 'pil', 'np', 'latent'.")
    return output_type


def check_fraction(name: str, value: Any) -> float | None:
    """``denoising_start`` / ``denoising_end``: None, or the fraction of the schedule (strictly between 0 and 1)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0 < value < 1:
        raise ConfigError(f"{name}={value!r} is not supported; accepted: None or a number between 0 and 1 (exclusive).")
    return float(value)


# ----- the argument classes -------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class CallArguments:
    """What every call takes. ``positional`` names the arguments ``__call__`` also takes by position, in order."""

    positional: ClassVar[tuple[str, ...]] = ()

    generator: Generator = None
    """A ``numpy.random.Generator`` (its stream continues) or an int seed; None draws fresh entropy."""
    num_inference_steps: int = 50
    output_type: str = "pil"
    """"pil": PIL images; "np": a (B, H, W, C) float array in [0, 1]; "latent": the final latents."""

    def __post_init__(self) -> None:
        check_output_type(self.output_type)
        self.num_inference_steps = check_int("num_inference_steps", self.num_inference_steps)

    @classmethod
    def bind(cls: type[A], args: tuple, kwargs: dict[str, Any]) -> A:
        """The arguments of a ``__call__(*args, **kwargs)``, bound as its signature says (TypeError as Python gives
        for a wrong call: too many positions, an unknown or repeated name)."""
        bound = cls.signature().bind(*args, **kwargs)
        return cls(**bound.arguments)

    @classmethod
    @functools.cache
    def signature(cls) -> inspect.Signature:
        """The public signature: ``positional`` names first (by position or name), then the rest by name only."""
        declared = {f.name: f for f in fields(cls)}
        rest = sorted((n for n in declared if n not in cls.positional), key=lambda n: DIFFUSERS_ORDER.index(n))
        order = [*cls.positional, *rest]
        parameters = []
        for name in order:
            f = declared[name]
            kind = inspect.Parameter.POSITIONAL_OR_KEYWORD if name in cls.positional else inspect.Parameter.KEYWORD_ONLY
            default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            parameters.append(inspect.Parameter(name, kind, default=default, annotation=f.type))
        return inspect.Signature(parameters)


A = TypeVar("A", bound=CallArguments)


@dataclass(kw_only=True)
class PromptArguments(CallArguments):
    """What every text-conditioned (Stable Diffusion) call takes, with diffusers' defaults."""

    prompt: Prompt = None
    negative_prompt: Prompt = None
    prompt_embeds: np.ndarray | None = None
    """(batch, tokens, hidden) text embeddings in place of ``prompt``."""
    negative_prompt_embeds: np.ndarray | None = None
    num_images_per_prompt: int = 1
    guidance_scale: float = 7.5
    guidance_rescale: float = 0.0
    eta: float = 0.0
    """DDIM's eta (0: deterministic); schedulers without it ignore it."""
    clip_skip: int | None = None
    callback_on_step_end: StepCallback | None = None
    """``callback(pipe, step, timestep, tensors) -> {name: tensor}`` after every step; may replace tensors."""
    callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",)
    timesteps: Sequence[float] | None = None
    """A custom schedule, as diffusers' ``retrieve_timesteps`` takes it: the scheduler's ``set_timesteps(timesteps=)``
    runs instead of spacing ``num_inference_steps``, which then counts these timesteps."""
    sigmas: Sequence[float] | None = None
    """A custom noise-level schedule for schedulers whose ``set_timesteps`` takes ``sigmas=`` (one of the two)."""
    adapters: Mapping[str, Any] | None = None
    """LoRA adapters for this call alone, ``{name: weight}`` (``{}``: none), loaded with ``load_lora_weights``;
    None runs the pipeline's active set (``set_adapters``). Nothing shared changes, so concurrent calls may differ."""
    cache_interval: int | None = None
    """DeepCache (a package exported with ``--deepcache``): step ``i`` runs the whole UNet when ``i % cache_interval
    == 0``, the others only its shallow path on the deep features of the last full step. None or 1: every step
    runs the whole UNet."""
    cache_branch: int = 0
    """DeepCache's ``cache_branch_id``: how many outer UNet layers run on every step (0: the fewest, fastest)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.adapters = check_adapters(self.adapters)
        if self.cache_interval is not None:
            self.cache_interval = check_int("cache_interval", self.cache_interval)
        self.cache_branch = check_int("cache_branch", self.cache_branch, minimum=0)
        if self.timesteps is not None and self.sigmas is not None:
            raise ConfigError("timesteps and sigmas were both given; accepted: one custom schedule, or neither.")
        self.timesteps = check_schedule("timesteps", self.timesteps)
        self.sigmas = check_schedule("sigmas", self.sigmas)
        self.num_images_per_prompt = check_int("num_images_per_prompt", self.num_images_per_prompt)
        self.guidance_scale = check_number("guidance_scale", self.guidance_scale)
        self.guidance_rescale = check_number("guidance_rescale", self.guidance_rescale, 0.0, 1.0)
        self.eta = check_number("eta", self.eta, 0.0, 1.0)  # DDIM's sigma turns imaginary past 1: NaN images
        self.callback_on_step_end_tensor_inputs = check_callback(
            self.callback_on_step_end, self.callback_on_step_end_tensor_inputs
        )


@dataclass(kw_only=True)
class Text2ImageArguments(PromptArguments):
    """``height`` / ``width`` default to the UNet's training size; ``latents`` (B, C, H/f, W/f) replace the
    initial noise."""

    positional: ClassVar[tuple[str, ...]] = ("prompt", "height", "width")

    height: int | None = None
    width: int | None = None
    latents: np.ndarray | None = None


@dataclass(kw_only=True)
class Image2ImageArguments(PromptArguments):
    """``image``: PIL image(s), (H, W, C) / (B, H, W, C) arrays in [0, 1], or (B, C, h, w) latents; ``strength``
    (0 to 1): how much of it is re-imagined."""

    positional: ClassVar[tuple[str, ...]] = ("prompt", "image", "strength")

    image: Any = None
    strength: float = 0.8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image is None:
            raise ConfigError("image is missing; accepted: a PIL image, a float array in [0, 1], or a list of them.")
        self.strength = check_strength(self.strength)


def check_strength(strength: Any) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float, np.floating)) or not 0 <= strength <= 1:
        raise ConfigError(f"strength={strength!r} is not supported; accepted: a number from 0 to 1.")
    return float(strength)


@dataclass(kw_only=True)
class Depth2ImageArguments(Image2ImageArguments):
    """``depth_map``: (B, H, W) relative depth, any resolution; omitted, the package's DPT estimates it."""

    positional: ClassVar[tuple[str, ...]] = ("prompt", "image", "depth_map")

    depth_map: np.ndarray | None = None


@dataclass(kw_only=True)
class InpaintArguments(Text2ImageArguments):
    """Repaint the white part of ``mask_image`` in ``image``. ``padding_mask_crop=p`` inpaints only the mask's
    bounding box grown by ``p`` pixels, at full resolution, and pastes the result back (PIL in, PIL out)."""

    positional: ClassVar[tuple[str, ...]] = ("prompt", "image", "mask_image")

    image: Any = None
    mask_image: Any = None
    masked_image_latents: np.ndarray | None = None
    padding_mask_crop: int | None = None
    strength: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.strength = check_strength(self.strength)


# ----- Stable Diffusion XL --------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class XLArguments(PromptArguments):
    """SDXL's additions: a prompt per text encoder, pooled embeddings, micro-conditioning on sizes and crops (the
    ``negative_`` ones condition the unguided half), and the base-to-refiner cut-off ``denoising_end``."""

    prompt_2: Prompt = None
    negative_prompt_2: Prompt = None
    pooled_prompt_embeds: np.ndarray | None = None
    negative_pooled_prompt_embeds: np.ndarray | None = None
    guidance_scale: float = 5.0
    denoising_end: float | None = None
    original_size: Size | None = None
    crops_coords_top_left: Size = (0, 0)
    target_size: Size | None = None
    negative_original_size: Size | None = None
    negative_crops_coords_top_left: Size = (0, 0)
    negative_target_size: Size | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.denoising_end = check_fraction("denoising_end", self.denoising_end)


@dataclass(kw_only=True)
class XLText2ImageArguments(XLArguments, Text2ImageArguments):
    """``denoising_end=0.8, output_type="latent"`` stops early and returns latents for a refiner."""

    positional: ClassVar[tuple[str, ...]] = ("prompt", "prompt_2", "height", "width")


@dataclass(kw_only=True)
class XLImageArguments(XLArguments):
    """What SDXL image-to-image and inpainting add: the refiner's ``denoising_start`` (continue a base run's
    latents without new noise) and aesthetic scores (refiner packages, ``requires_aesthetics_score``)."""

    denoising_start: float | None = None
    aesthetic_score: float = 6.0
    negative_aesthetic_score: float = 2.5
    latents: np.ndarray | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.denoising_start = check_fraction("denoising_start", self.denoising_start)
        start, end = self.denoising_start, self.denoising_end
        if start is not None and end is not None and start >= end:
            raise ConfigError(
                f"denoising_start={start} is not below denoising_end={end}; accepted: denoising_start < denoising_end."
            )


@dataclass(kw_only=True)
class XLImage2ImageArguments(XLImageArguments, Image2ImageArguments):
    """``latents`` replace the noised image latents entirely (as in diffusers)."""

    positional: ClassVar[tuple[str, ...]] = ("prompt", "prompt_2", "image", "strength")

    strength: float = 0.3


@dataclass(kw_only=True)
class XLInpaintArguments(XLImageArguments, InpaintArguments):
    """``strength`` defaults to 0.9999 as in diffusers: the image's latents, noised, are the starting point (1.0
    starts from pure noise)."""

    positional: ClassVar[tuple[str, ...]] = ("prompt", "prompt_2", "image", "mask_image")

    strength: float = 0.9999
    guidance_scale: float = 7.5


# ----- unconditional ------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class UnconditionalArguments(CallArguments):
    positional: ClassVar[tuple[str, ...]] = ("batch_size", "generator", "num_inference_steps", "output_type")

    batch_size: int = 1
    num_inference_steps: int = 1000

    def __post_init__(self) -> None:
        self.batch_size = check_int("batch_size", self.batch_size)
        super().__post_init__()


# ----- __call__ from an argument class --------------------------------------------------------------------------
def call_taking(arguments: type[CallArguments], owner: type) -> Callable[..., Any]:
    """``owner.__call__``: callers pass diffusers' arguments (``arguments.positional`` by position or name, the rest
    by name); they are bound into one checked ``arguments`` object and handed to ``owner.generate``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        bound = arguments.bind(args, kwargs)
        with self.running():
            return self.generate(bound)

    signature = arguments.signature()
    self_parameter = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    generate = owner.generate
    __call__.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[self_parameter, *signature.parameters.values()],
        return_annotation=inspect.signature(generate).return_annotation,
    )
    __call__.__doc__ = "\n\n".join(filter(None, (inspect.getdoc(owner.generate), inspect.getdoc(arguments))))
    __call__.__qualname__ = f"{owner.__qualname__}.__call__"
    __call__.__module__ = owner.__module__
    return __call__

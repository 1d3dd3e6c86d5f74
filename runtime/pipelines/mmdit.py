"""What the Stable Diffusion 3 and Flux pipelines share: flow-matching transformers (MMDiT) over a 16-channel-style
VAE whose latents are shifted as well as scaled, torch-free.

A call runs as diffusers' SD3 / Flux pipelines run it: encode the prompts (CLIP and T5), set the flow-matching
schedule (with the resolution-dependent shift ``mu`` when the scheduler's ``use_dynamic_shifting`` asks for it),
draw the noise (image-to-image and inpainting: encode the image and noise it to the first step's sigma), run the
transformer each step and step the scheduler, then decode ``latents / scaling_factor + shift_factor``. The family
classes (:mod:`.sd3`, :mod:`.flux`) say how prompts are encoded and how the transformer is called; the task
classes (text-to-image, image-to-image, inpainting) say how a call starts and what each step re-imposes.

Each call's state lives in a :class:`MMDiTCall`; one pipeline object serves concurrent calls.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..adapters import EMPTY_FEEDS, AdapterFeeds
from ..errors import ConfigError, NonFiniteError
from ..image_processor import VaeImageProcessor
from ..package import EnginePackage
from ..schedulers import Scheduler
from ..schedulers.base import as_generator, randn
from ..schedulers.flow_match_euler import calculate_shift
from ..t5_tokenizer import T5Tokenizer
from .arguments import (
    CallArguments,
    Prompt,
    StepCallback,
    check_adapters,
    check_callback,
    check_int,
    check_number,
    check_schedule,
    check_strength,
)
from .base import DiffusionPipeline, StableDiffusionPipelineOutput
from .call import CallScope, CallSettings, CallState
from .inputs import Limits
from .lora import LoraLoaderMixin
from .stable_diffusion import negative_prompts, prompt_list

CALLBACK_TENSORS = ("latents", "prompt_embeds", "pooled_prompt_embeds")


# ----- arguments ------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class MMDiTArguments(CallArguments):
    """What every SD3 / Flux call takes, with diffusers' defaults (the family classes set theirs)."""

    prompt: Prompt = None
    prompt_2: Prompt = None
    negative_prompt: Prompt = None
    negative_prompt_2: Prompt = None
    height: int | None = None
    width: int | None = None
    num_inference_steps: int = 28
    sigmas: Sequence[float] | None = None
    guidance_scale: float = 7.0
    num_images_per_prompt: int = 1
    latents: np.ndarray | None = None
    prompt_embeds: np.ndarray | None = None
    negative_prompt_embeds: np.ndarray | None = None
    pooled_prompt_embeds: np.ndarray | None = None
    negative_pooled_prompt_embeds: np.ndarray | None = None
    callback_on_step_end: StepCallback | None = None
    callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",)
    max_sequence_length: int = 256
    adapters: Mapping[str, Any] | None = None
    """LoRA adapters for this call alone, ``{name: weight}`` (``{}``: none), on a package exported with
    ``--lora-slots``; None runs the pipeline's active set (``set_adapters``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.adapters = check_adapters(self.adapters)
        for name in ("height", "width"):
            if getattr(self, name) is not None:
                setattr(self, name, check_int(name, getattr(self, name)))
        self.sigmas = check_schedule("sigmas", self.sigmas)
        self.guidance_scale = check_number("guidance_scale", self.guidance_scale)
        self.num_images_per_prompt = check_int("num_images_per_prompt", self.num_images_per_prompt)
        self.max_sequence_length = check_int("max_sequence_length", self.max_sequence_length)
        self.callback_on_step_end_tensor_inputs = check_callback(
            self.callback_on_step_end, self.callback_on_step_end_tensor_inputs
        )
        unknown = set(self.callback_on_step_end_tensor_inputs) - set(CALLBACK_TENSORS)
        if unknown:
            raise ConfigError(
                f"callback_on_step_end_tensor_inputs names {sorted(unknown)}; accepted: {', '.join(CALLBACK_TENSORS)}."
            )
        if self.prompt is None and self.prompt_embeds is None:
            raise ConfigError("prompt is missing; accepted: a string or a list of strings, or prompt_embeds.")
        if self.prompt is not None and self.prompt_embeds is not None:
            raise ConfigError("prompt and prompt_embeds were both given; accepted: one of them.")
        if self.prompt_embeds is not None and self.pooled_prompt_embeds is None:
            raise ConfigError("prompt_embeds needs pooled_prompt_embeds too (both come from encode_prompt).")


@dataclass(kw_only=True)
class ImageArguments:
    """Image-to-image's additions: ``image`` (PIL image(s), (H, W, C) / (B, H, W, C) arrays in [0, 1], or latents)
    and ``strength`` (0 to 1: how much of it is re-imagined)."""

    image: Any = None
    strength: float = 0.6

    def check_image(self) -> None:
        if self.image is None:
            raise ConfigError("image is missing; accepted: a PIL image, a float array in [0, 1], or a list of them.")
        self.strength = check_strength(self.strength)


@dataclass(kw_only=True)
class MaskArguments(ImageArguments):
    """Inpainting's additions: ``mask_image`` (white: repaint), ``masked_image_latents``, ``padding_mask_crop``."""

    mask_image: Any = None
    masked_image_latents: np.ndarray | None = None
    padding_mask_crop: int | None = None

    def check_image(self) -> None:
        super().check_image()
        if self.mask_image is None:
            raise ConfigError(
                "mask_image is missing; accepted: a PIL image or a float array in [0, 1] (white repaints)."
            )
        if self.padding_mask_crop is not None:
            self.padding_mask_crop = check_int("padding_mask_crop", self.padding_mask_crop, minimum=0)


# ----- one call -------------------------------------------------------------------------------------------------
@dataclass
class MMDiTCall:
    """One call's working set: its arguments, scheduler copy, noise stream, size, encoded prompts and schedule."""

    args: MMDiTArguments
    state: CallState
    scheduler: Scheduler
    generator: np.random.Generator
    batch: int
    height: int
    width: int
    embeds: dict[str, np.ndarray] = field(default_factory=dict)
    """``prompt_embeds``, ``pooled_prompt_embeds`` and, when guided, their ``negative_`` twins."""
    timesteps: np.ndarray | None = None
    steps: int = 0
    known: dict[str, np.ndarray] = field(default_factory=dict)
    """Inpainting: ``image_latents``, ``noise`` and ``mask`` of the region kept."""
    lora: AdapterFeeds = EMPTY_FEEDS
    """The LoRA factors this call feeds its networks (its adapter set, fixed when it starts)."""


# ----- the pipelines --------------------------------------------------------------------------------------------
class MMDiTPipeline(CallSettings, LoraLoaderMixin, DiffusionPipeline):
    """The SD3 / Flux call, with the family's and the task's parts left to subclasses."""

    networks: ClassVar[tuple[str, ...]] = ("text_encoder", "text_encoder_2", "transformer", "vae_decoder")
    family: ClassVar[str] = ""
    family_pipelines: ClassVar[tuple[str, ...]] = ()
    default_guidance: ClassVar[float] = 7.0
    packed: ClassVar[bool] = False
    decode_shift: ClassVar[bool] = True
    """Decode ``latents / scaling_factor + shift_factor`` (False: without the shift, as diffusers' SD3 inpainting
    pipeline decodes, though it shifted the image's latents when encoding them)."""
    """Flux packs 2x2 latent cells into one token: sizes are multiples of twice the VAE's scale factor."""

    def __init__(self, package: EnginePackage, scheduler: Scheduler | None = None, limits: Limits | None = None):
        if package.pipeline_class not in self.family_pipelines:
            raise ConfigError(
                f"{type(self).__name__} runs packages exported from {', '.join(self.family_pipelines)}; this "
                f"package is a {package.pipeline_class or 'package of unknown class'}: open it with its own "
                "pipeline (or AutoPipelineFor*)."
            )
        super().__init__(package, scheduler=scheduler, limits=limits)
        self._calls = CallScope(CallState(guidance_scale=self.default_guidance))
        self.transformer_config = package.config("transformer")
        self.vae_config = package.vae_config
        f = self.vae_scale_factor * (2 if self.packed else 1)
        channels = self.vae_config.latent_channels
        self.image_processor = VaeImageProcessor(vae_scale_factor=f, vae_latent_channels=channels)
        self.mask_processor = VaeImageProcessor(
            vae_scale_factor=f,
            vae_latent_channels=channels,
            do_normalize=False,
            do_binarize=True,
            do_convert_grayscale=True,
        )

    @property
    def components(self) -> dict[str, Any]:
        names = (*self.networks, *self.optional_networks, "scheduler")
        return {n: getattr(self, n) for n in names if getattr(self, n, None) is not None}

    def t5_tokenizer(self, folder: str) -> T5Tokenizer:
        return T5Tokenizer.from_pretrained(self.package.path, subfolder=folder)

    # ----- a call -----------------------------------------------------------------------------------------------
    def generate(self, args: MMDiTArguments) -> StableDiffusionPipelineOutput:
        call = self.start(args)
        latents = self.prepare(call)
        latents = self.denoise(call, latents)
        return self.finish(call, latents)

    def start(self, args: MMDiTArguments) -> MMDiTCall:
        state = CallState(guidance_scale=args.guidance_scale, guidance_embedding=self.embeds_guidance)
        self._calls.use(state)
        height, width = self.check_size(args.height, args.width)
        prompts = self.prompt_count(args)
        batch = prompts * args.num_images_per_prompt
        self.limits.check_batch(batch, "this package was exported for (its diffrt.json)")
        call = MMDiTCall(args, state, copy.deepcopy(self.scheduler), as_generator(args.generator), batch, height, width)
        call.lora = self.adapter_feeds(args.adapters)
        self.encode_prompts(call, prompts)
        return call

    @property
    def embeds_guidance(self) -> bool:
        """Whether ``guidance_scale`` is an input of the transformer rather than classifier-free guidance (Flux)."""
        return False

    def default_size(self) -> tuple[int, int]:
        side = int(self.transformer_config.get("sample_size") or 128) * self.vae_scale_factor
        return side, side

    def check_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        default_h, default_w = self.default_size()
        height = default_h if height is None else height
        width = default_w if width is None else width
        multiple = self.size_multiple
        for name, value in (("height", height), ("width", width)):
            if value % multiple:
                low = value // multiple * multiple
                accepted = f"{low} or {low + multiple}" if low else f"{multiple}"
                raise ConfigError(
                    f"{name}={value} is not a multiple of {multiple} (the VAE's scale factor times the "
                    f"transformer's patch); accepted: {accepted}."
                )
        self.limits.check_size(height, width, "this package was exported for (its diffrt.json)")
        return height, width

    @property
    def size_multiple(self) -> int:
        patch = 2 if self.packed else int(self.transformer_config.get("patch_size") or 2)
        return self.vae_scale_factor * patch

    def prompt_count(self, args: MMDiTArguments) -> int:
        if args.prompt is not None:
            return len(prompt_list("prompt", args.prompt))
        embeds = np.asarray(args.prompt_embeds)
        if embeds.ndim != 3:
            raise ConfigError(f"prompt_embeds has shape {embeds.shape}; accepted: (batch, tokens, channels).")
        return embeds.shape[0]

    def prompts(self, args: MMDiTArguments, name: str, fallback: Prompt, count: int) -> list[str]:
        """The prompt list for one encoder: ``name``'s value, or ``fallback``'s when it is None."""
        value = getattr(args, name)
        return prompt_list(name, value if value is not None else fallback) if count else []

    def negatives(self, value: Prompt, name: str, count: int) -> list[str]:
        return negative_prompts(name, value if value is not None else "", count)

    def repeat(self, embeds: np.ndarray, copies: int) -> np.ndarray:
        """Each prompt's embeddings repeated for its images, adjacent (diffusers' repeat + view)."""
        return np.repeat(np.asarray(embeds, dtype=np.float32), copies, axis=0)

    # ----- the schedule -----------------------------------------------------------------------------------------
    def image_tokens(self, call: MMDiTCall) -> int:
        f = self.vae_scale_factor
        patch = 2 if self.packed else int(self.transformer_config.get("patch_size") or 2)
        return (call.height // f // patch) * (call.width // f // patch)

    def schedule_mu(self, call: MMDiTCall, always: bool = False) -> float | None:
        """diffusers' ``calculate_shift`` of the image's token count, where the scheduler shifts dynamically (or
        ``always``: Flux passes it whatever the scheduler)."""
        config = call.scheduler.config
        if getattr(call.args, "mu", None) is not None:
            return call.args.mu
        if not (always or getattr(config, "use_dynamic_shifting", False)):
            return None
        get = config.get if hasattr(config, "get") else lambda k, d: getattr(config, k, d)
        return calculate_shift(
            self.image_tokens(call),
            get("base_image_seq_len", 256),
            get("max_image_seq_len", 4096),
            get("base_shift", 0.5),
            get("max_shift", self.default_max_shift),
        )

    default_max_shift: ClassVar[float] = 1.16

    def set_schedule(self, call: MMDiTCall, sigmas: Sequence[float] | None, mu: float | None) -> None:
        kwargs: dict[str, Any] = {}
        if sigmas is not None:
            kwargs["sigmas"] = list(sigmas)
        if mu is not None:
            kwargs["mu"] = mu
        steps = None if sigmas is not None else call.args.num_inference_steps
        call.scheduler.set_timesteps(steps, **kwargs)
        call.timesteps = np.asarray(call.scheduler.timesteps)
        call.steps = len(call.timesteps)

    def strength_schedule(self, call: MMDiTCall, strength: float) -> None:
        """diffusers' ``get_timesteps``: the last ``strength`` of the schedule, the scheduler told where it begins."""
        steps = call.steps
        t_start = int(max(steps - min(steps * strength, steps), 0))
        order = call.scheduler.order
        call.timesteps = call.timesteps[t_start * order :]
        call.scheduler.set_begin_index(t_start * order)
        call.steps = steps - t_start
        if call.steps < 1:
            raise ConfigError(
                f"strength={strength} with {steps} inference steps leaves no denoising step; accepted: strength * "
                "num_inference_steps >= 1."
            )

    # ----- latents ----------------------------------------------------------------------------------------------
    def latent_shape(self, call: MMDiTCall) -> tuple[int, int, int, int]:
        f = self.vae_scale_factor
        return (call.batch, self.vae_config.latent_channels, call.height // f, call.width // f)

    def encode_image(self, image: np.ndarray, generator: np.random.Generator) -> np.ndarray:
        """Latents of pixels (B, 3, H, W) in [-1, 1] as diffusers' ``_encode_vae_image`` takes them: a posterior
        draw, shifted and scaled."""
        with self.timed("vae_encoder"):
            params = self.vae_encoder.run({"sample": image}, ["latent_parameters"])["latent_parameters"]
        mean, logvar = np.split(params, 2, axis=1)
        std = np.exp(0.5 * np.clip(logvar, -30.0, 20.0))
        sample = mean + std * randn(mean.shape, generator)
        shift = self.vae_config.shift_factor or 0.0
        return ((sample - shift) * self.vae_config.scaling_factor).astype(np.float32)

    def image_latents(self, call: MMDiTCall, image: np.ndarray) -> np.ndarray:
        """The image's latents for every image of the call (given latents pass through unchanged)."""
        latents = (
            image if image.shape[1] == self.vae_config.latent_channels else self.encode_image(image, call.generator)
        )
        if call.batch % latents.shape[0]:
            raise ConfigError(
                f"image has {latents.shape[0]} images for {call.batch} images to make; accepted: a count that "
                "divides it (one image serves every prompt)."
            )
        return (
            np.concatenate([latents] * (call.batch // latents.shape[0])) if call.batch > latents.shape[0] else latents
        )

    def given_latents(self, call: MMDiTCall, latents: Any, shape: tuple[int, ...]) -> np.ndarray:
        latents = np.asarray(latents, dtype=np.float32)
        if latents.shape != tuple(shape):
            raise ConfigError(f"latents has shape {latents.shape}; accepted: {tuple(shape)}.")
        return latents

    # ----- the loop ---------------------------------------------------------------------------------------------
    def prepare(self, call: MMDiTCall) -> np.ndarray:
        raise NotImplementedError

    def predict(self, call: MMDiTCall, latents: np.ndarray, t: Any, i: int) -> np.ndarray:
        raise NotImplementedError

    def after_step(self, call: MMDiTCall, latents: np.ndarray, i: int) -> np.ndarray:
        """What a task re-imposes after each step (inpainting: the kept region); nothing by default."""
        return latents

    def denoise(self, call: MMDiTCall, latents: np.ndarray) -> np.ndarray:
        scheduler, state = call.scheduler, call.state
        warmup = len(call.timesteps) - call.steps * scheduler.order
        state.num_timesteps = len(call.timesteps)
        with self.progress_bar(total=call.steps) as bar:
            for i, t in enumerate(call.timesteps):
                if state.interrupt:
                    continue
                start = time.perf_counter()
                noise = self.predict(call, latents, t, i)
                seconds = time.perf_counter() - start
                latents = scheduler.step(noise, t, latents).prev_sample.astype(np.float32)
                latents = self.after_step(call, latents, i)
                self.check_finite(latents, i, len(call.timesteps))
                if self.stage_hooks:
                    self.emit("transformer", seconds, i)
                    self.emit("scheduler", time.perf_counter() - start - seconds, i)
                if call.args.callback_on_step_end is not None:
                    latents = self.run_callback(call, i, t, latents)
                if i == len(call.timesteps) - 1 or (i + 1 > warmup and (i + 1) % scheduler.order == 0):
                    bar.update()
        return latents

    def run_callback(self, call: MMDiTCall, i: int, t: Any, latents: np.ndarray) -> np.ndarray:
        tensors = {"latents": latents, **call.embeds}
        names = call.args.callback_on_step_end_tensor_inputs
        outputs = call.args.callback_on_step_end(self, i, t, {n: tensors[n] for n in names})
        if outputs is not None and not isinstance(outputs, dict):
            raise ConfigError(
                f"callback_on_step_end returned {type(outputs).__name__}; accepted: None or a dict of tensors by name."
            )
        for name, value in (outputs or {}).items():
            if name in ("prompt_embeds", "pooled_prompt_embeds"):
                call.embeds[name] = np.asarray(value, dtype=np.float32)
        latents = np.asarray((outputs or {}).get("latents", latents), dtype=np.float32)
        self.check_finite(latents, i, len(call.timesteps), "after callback_on_step_end")
        return latents

    @staticmethod
    def check_finite(latents: np.ndarray, i: int, steps: int, when: str = "") -> None:
        if not np.isfinite(latents).all():
            raise NonFiniteError(
                f"the latents turned non-finite (NaN or infinity) at step {i + 1} of {steps}"
                f"{' ' + when if when else ''}; the transformer overflows at this precision or the settings are out "
                "of range: run it in fp32 (SessionSettings(precision='fp32')) or try smaller values."
            )

    # ----- the end ----------------------------------------------------------------------------------------------
    def spatial(self, call: MMDiTCall, latents: np.ndarray) -> np.ndarray:
        """Latents as (B, C, h, w) (Flux unpacks its tokens)."""
        return latents

    def finish(self, call: MMDiTCall, latents: np.ndarray) -> StableDiffusionPipelineOutput:
        if call.args.output_type == "latent":
            return StableDiffusionPipelineOutput(images=latents)
        latents = self.spatial(call, latents)
        shift = (self.vae_config.shift_factor or 0.0) if self.decode_shift else 0.0
        latents = (latents / self.vae_config.scaling_factor + shift).astype(np.float32)
        with self.timed("vae_decoder"):
            image = self.vae_decoder.run({"latent_sample": latents}, ["sample"])["sample"]
        if not np.isfinite(image).all():
            raise NonFiniteError(
                "the VAE decoder gave non-finite pixels (NaN or infinity) from finite latents; it overflows at this "
                "precision: run it in fp32 (SessionSettings(precision='fp32')) or re-export the package."
            )
        images = self.image_processor.postprocess(image, output_type=call.args.output_type)
        return StableDiffusionPipelineOutput(images=self.overlay(call, images))

    def overlay(self, call: MMDiTCall, images: Any) -> Any:
        """Inpainting with ``padding_mask_crop`` pastes the result back into the original image."""
        return images


__all__ = ["MMDiTArguments", "MMDiTCall", "MMDiTPipeline"]

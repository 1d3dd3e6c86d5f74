"""The machinery the Stable Diffusion pipelines share: prompt encoding, guidance, the denoising loop, VAE calls.

Each step mirrors diffusers 0.42 so that, given the same weights and the same noise, images agree to float
rounding. Randomness comes from one ``numpy.random.Generator`` per call; draws happen in diffusers' order (VAE
posterior sample, then the initial or ``add_noise`` noise, then any ancestral scheduler steps), each of the whole
tensor at once, as diffusers' ``randn_tensor`` draws with a single generator.

A pipeline object is shared by every thread that calls it: it holds the package, engines, default scheduler and
hooks. Everything a call sets lives in that call's :class:`~.call.Call` (see :mod:`.call`), made once from its
checked arguments (:mod:`.arguments`) by :meth:`StableDiffusionBase.start` and handed down.
"""

from __future__ import annotations

import copy
import inspect
import math
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from ..adapters import AdapterFeeds
from ..engines import Engine
from ..errors import ConfigError, NonFiniteError
from ..image_processor import VaeImageProcessor
from ..networks import PREVIEW_DECODER
from ..schedulers import SCHEDULERS, Scheduler, as_generator, randn
from ..schema import default_size
from .arguments import Prompt, PromptArguments, check_int
from .base import DiffusionPipeline, StableDiffusionPipelineOutput
from .call import Call, CallScope, CallSettings, CallState, DenoisingTensors
from .feature_cache import FeatureCache, feature_cache
from .inputs import Limits, check_finite, input_pixels, user_images
from .lora import LoraLoaderMixin


class StableDiffusionBase(CallSettings, LoraLoaderMixin, DiffusionPipeline):
    """Text-conditioned latent diffusion over a CLIP text encoder, a UNet and a VAE decoder."""

    networks: ClassVar[tuple[str, ...]] = ("text_encoder", "unet", "vae_decoder")
    unet_in_channels: ClassVar[tuple[int, ...]] = (4,)
    """UNet input widths this pipeline can drive (latents plus any conditioning channels)."""
    _callback_tensor_inputs: ClassVar[tuple[str, ...]] = ("latents", "prompt_embeds", "negative_prompt_embeds")
    default_guidance_scale: ClassVar[float] = 7.5

    def __init__(self, package, scheduler: Scheduler | None = None, limits: Limits | None = None):
        self.unet_config = package.unet_config
        self.check_unet(package)
        super().__init__(package, scheduler, limits)
        self.load_text_side(package)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        idle = CallState(self.default_guidance_scale, guidance_embedding=self.guidance_embedding)
        self._calls = CallScope(idle)

    def check_unet(self, package) -> None:
        """Refuse, before any engine is created, a package whose UNet this pipeline cannot drive."""
        in_channels = self.unet_config.in_channels
        if self.unet_config and in_channels not in self.unet_in_channels:
            raise ConfigError(
                f"the package's UNet takes {in_channels} input channels ({_unet_kind(in_channels)}), but "
                f"{type(self).__name__} drives a UNet of {' or '.join(map(str, self.unet_in_channels))}; use "
                f"{_pipeline_for(in_channels)} for this package."
            )
        if self.unet_config.is_sdxl:
            raise ConfigError(
                f"the package's UNet is an SDXL UNet (addition_embed_type='text_time', exported from "
                f"{package.pipeline_class or 'an SDXL pipeline'}), which {type(self).__name__} cannot drive; use "
                "StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline or StableDiffusionXLInpaintPipeline."
            )

    def load_text_side(self, package) -> None:
        """The tokenizer(s) and text encoder config(s) prompt encoding reads; SDXL pipelines load two."""
        self.tokenizer = package.tokenizer()
        self.text_encoder_config = package.text_encoder_config("text_encoder")

    # ----- what callbacks read beyond CallSettings' (diffusers' names) ------------------------------------------
    @property
    def guidance_rescale(self) -> float:
        return self._calls.state.guidance_rescale

    @property
    def clip_skip(self) -> int | None:
        return self._calls.state.clip_skip

    @property
    def guidance_embedding(self) -> bool:
        """Whether the UNet takes the guidance scale as an input (LCM-distilled) instead of running guidance."""
        return self.unet_config.takes_guidance_embedding

    # ----- sizes ------------------------------------------------------------------------------------------------
    @property
    def latent_channels(self) -> int:
        """Channels of the VAE's latents: what images encode to and the decoder takes."""
        return self.package.vae_config.latent_channels

    def default_size(self) -> tuple[int, int]:
        """(height, width) in pixels the UNet was trained at: its ``sample_size`` times the VAE scale factor."""
        return default_size(self.unet_config, self.vae_scale_factor)

    def check_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        """(height, width) of the images to make: the package's default for None; positive multiples of the VAE
        scale factor within the pipeline's limits."""
        default_h, default_w = self.default_size()
        height = default_h if height is None else height
        width = default_w if width is None else width
        f = self.vae_scale_factor
        for name, value in (("height", height), ("width", width)):
            check_int(name, value)
            if value % f:
                low = value // f * f
                accepted = f"{low} or {low + f}" if low else f"{f}"
                raise ConfigError(
                    f"{name}={value} is not a multiple of {f}, the VAE scale factor of this package; accepted: "
                    f"{accepted}."
                )
        self.limits.check_size(int(height), int(width), self._limits_source)
        return int(height), int(width)

    @property
    def _limits_source(self) -> str:
        return "this package was exported for (its diffrt.json)" if self.package.shape_range else "the limits set"

    def latent_shape(self, call: Call, height: int, width: int, channels: int | None = None) -> tuple[int, ...]:
        """(batch, channels, h, w) of the call's latents at ``height`` x ``width`` pixels."""
        f = self.vae_scale_factor
        return (call.batch, channels or self.latent_channels, height // f, width // f)

    # ----- starting a call --------------------------------------------------------------------------------------
    def start(self, args: PromptArguments) -> Call:
        """Check what the arguments object could not check alone (against this package), encode the prompts, and
        give the call its own scheduler copy and noise stream; this thread's callbacks now read its settings."""
        self.take_inputs(args)
        prompts = self.check_prompts(args)
        self.limits.check_batch(prompts * args.num_images_per_prompt, self._limits_source)
        unknown = [k for k in args.callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ConfigError(
                f"callback_on_step_end_tensor_inputs has {unknown}; accepted: {list(self._callback_tensor_inputs)}."
            )
        state = CallState(
            guidance_scale=args.guidance_scale,
            guidance_rescale=args.guidance_rescale,
            clip_skip=args.clip_skip,
            guidance_embedding=self.guidance_embedding,
            denoising_start=getattr(args, "denoising_start", None),
            denoising_end=getattr(args, "denoising_end", None),
        )
        self._calls.use(state)
        call = Call(
            args=args,
            state=state,
            scheduler=copy.deepcopy(self.scheduler),
            generator=as_generator(args.generator),
            batch=prompts * args.num_images_per_prompt,
            prompt_embeds=np.empty(0, np.float32),
            lora=self.adapter_feeds(args.adapters),
            feature_cache=feature_cache(self.package, args.cache_interval, args.cache_branch),
        )
        self.encode_call_prompts(call)
        call.timestep_cond = self.timestep_cond(call)
        return call

    def take_inputs(self, args: PromptArguments) -> None:
        """Input images and masks as users pass them, made what the image processor takes (RGB images, L masks,
        floats in [0, 1]; see :func:`~.inputs.user_images`) within the pixel budget; tensor arguments checked finite."""
        image, mask = getattr(args, "image", None), getattr(args, "mask_image", None)
        budget = self.limits.input_pixels
        if budget is not None and input_pixels(image, mask) > budget:
            raise ConfigError(
                f"image and mask_image hold {input_pixels(image, mask)} pixels, more than the {budget} a call may "
                "decode; accepted: smaller images, or pipeline limits set higher (Limits(input_pixels=...))."
            )
        if image is not None:
            args.image = user_images("image", image, latent_channels=self.latent_channels)
        if mask is not None:
            args.mask_image = user_images("mask_image", mask, mask=True)
        tensors = (
            "latents",
            "masked_image_latents",
            "depth_map",
            "pooled_prompt_embeds",
            "negative_pooled_prompt_embeds",
        )
        for name in tensors:
            if getattr(args, name, None) is not None:
                setattr(args, name, check_finite(name, getattr(args, name)))

    def check_prompts(self, args: PromptArguments) -> int:
        """Validate the prompt arguments as diffusers does; return the number of prompts."""
        prompt, negative_prompt = args.prompt, args.negative_prompt
        if prompt is not None and args.prompt_embeds is not None:
            raise ConfigError("prompt and prompt_embeds were both given; accepted: one of the two.")
        if prompt is None and args.prompt_embeds is None:
            raise ConfigError("prompt is missing; accepted: a string, a non-empty list of strings, or prompt_embeds.")
        if prompt is not None:
            batch = len(prompt_list("prompt", prompt))
        else:
            args.prompt_embeds = self._check_embeds("prompt_embeds", args.prompt_embeds)
            batch = args.prompt_embeds.shape[0]
        if negative_prompt is not None and args.negative_prompt_embeds is not None:
            raise ConfigError("negative_prompt and negative_prompt_embeds were both given; accepted: one of the two.")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            count = len(prompt_list("negative_prompt", negative_prompt))
            if count != batch:
                raise ConfigError(
                    f"negative_prompt has {count} prompts but prompt has {batch}; accepted: one string, or a list "
                    f"of {batch} strings (one per prompt)."
                )
        if args.negative_prompt_embeds is not None:
            args.negative_prompt_embeds = self._check_embeds("negative_prompt_embeds", args.negative_prompt_embeds)
            if args.prompt_embeds is not None and args.negative_prompt_embeds.shape != args.prompt_embeds.shape:
                raise ConfigError(
                    f"negative_prompt_embeds has shape {args.negative_prompt_embeds.shape} but prompt_embeds has "
                    f"{args.prompt_embeds.shape}; accepted: the same shape."
                )
        return batch

    def _check_embeds(self, name: str, embeds: Any) -> np.ndarray:
        embeds = check_finite(name, embeds)
        width = self.unet_config.cross_attention_dim
        if embeds.ndim != 3 or (width and embeds.shape[-1] != width):
            raise ConfigError(
                f"{name} has shape {embeds.shape}; accepted: (batch, tokens, {width or 'hidden'}) float array."
            )
        return embeds

    def encode_call_prompts(self, call: Call) -> None:
        args = call.args
        call.prompt_embeds, call.negative_prompt_embeds = self.encode_prompt(
            args.prompt,
            args.num_images_per_prompt,
            call.state.do_classifier_free_guidance,
            negative_prompt=args.negative_prompt,
            prompt_embeds=args.prompt_embeds,
            negative_prompt_embeds=args.negative_prompt_embeds,
            clip_skip=args.clip_skip,
            adapters=call.lora,
        )

    def timestep_cond(self, call: Call) -> np.ndarray | None:
        """Guidance-scale embedding for UNets that take it (``time_cond_proj_dim``, e.g. LCM-distilled ones)."""
        dim = self.unet_config.time_cond_proj_dim
        if not dim:
            return None
        w = np.full(call.prompt_embeds.shape[0], call.state.guidance_scale - 1.0, dtype=np.float32)
        return guidance_scale_embedding(w, dim)

    # ----- prompts ----------------------------------------------------------------------------------------------
    def encode_prompt(
        self,
        prompt: Prompt,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        *,
        negative_prompt: Prompt = None,
        prompt_embeds: np.ndarray | None = None,
        negative_prompt_embeds: np.ndarray | None = None,
        clip_skip: int | None = None,
        adapters: Mapping[str, Any] | AdapterFeeds | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Text embeddings (batch x num_images_per_prompt, tokens, hidden), each prompt's copies adjacent.

        ``clip_skip=k`` takes the hidden state k layers before the last, final-layer-normed, as diffusers does;
        the negative prompt is always encoded from the last layer (diffusers' behaviour). ``adapters``: the LoRA
        adapters the text encoder runs with (None: the pipeline's active set; see :meth:`adapter_feeds`).
        """
        lora = self.adapter_feeds(adapters).of("text_encoder")
        if prompt_embeds is None:
            prompt_embeds = self._encode_text(prompt_list("prompt", prompt), clip_skip, lora=lora)
        prompt_embeds = np.asarray(prompt_embeds, dtype=np.float32)
        batch = prompt_embeds.shape[0]
        prompt_embeds = np.repeat(prompt_embeds, num_images_per_prompt, axis=0)
        if not do_classifier_free_guidance:
            return prompt_embeds, None
        if negative_prompt_embeds is None:
            negatives = negative_prompts("negative_prompt", negative_prompt or "", batch)
            negative_prompt_embeds = self._encode_text(negatives, None, max_length=prompt_embeds.shape[1], lora=lora)
        negative_prompt_embeds = np.asarray(negative_prompt_embeds, dtype=np.float32)
        return prompt_embeds, np.repeat(negative_prompt_embeds, num_images_per_prompt, axis=0)

    def _encode_text(
        self,
        prompts: list[str],
        clip_skip: int | None,
        max_length: int | None = None,
        lora: dict[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        ids = self.tokenizer(prompts, max_length=max_length).input_ids
        if clip_skip is None:
            output = "last_hidden_state"
        else:
            layers = int(self.text_encoder_config.num_hidden_layers or 0)
            valid = isinstance(clip_skip, (int, np.integer)) and not isinstance(clip_skip, bool) and clip_skip >= 1
            if not valid or (layers and clip_skip >= layers):
                accepted = f"None or an integer from 1 to {layers - 1}" if layers else "None or an integer >= 1"
                raise ConfigError(
                    f"clip_skip={clip_skip!r} is not supported by this text encoder; accepted: {accepted}."
                )
            output = f"clip_skip.{clip_skip}"
            if output not in self.text_encoder.outputs:
                raise ConfigError(
                    f"clip_skip={clip_skip} needs the text encoder output {output!r}, which this package's graph "
                    "does not have (it was exported elsewhere); re-export it with `diffrt export`."
                )
        with self.timed("text_encoder"):
            return self.text_encoder.run({"input_ids": ids, **(lora or {})}, [output])[output]

    # ----- the denoising loop -----------------------------------------------------------------------------------
    def denoising_tensors(self, call: Call, latents: np.ndarray, **conditioning: np.ndarray) -> DenoisingTensors:
        """The loop's tensors for ``latents``: the call's prompt embeddings as the UNet sees them, and any
        ``conditioning`` (already doubled for guidance) by its callback name."""
        return DenoisingTensors(
            latents=latents,
            prompt_embeds=call.guided(call.prompt_embeds, call.negative_prompt_embeds),
            negative_prompt_embeds=call.negative_prompt_embeds,
            **conditioning,
        )

    def denoise(
        self,
        call: Call,
        timesteps: np.ndarray,
        num_inference_steps: int,
        tensors: DenoisingTensors,
        known: KnownRegion | None = None,
    ) -> np.ndarray:
        """Run the UNet over ``timesteps`` with guidance, stepping the call's scheduler; return the final latents.

        ``known`` re-imposes the image outside the mask after each step (inpainting with a plain 4-channel UNet).
        Callbacks may replace the tensors this pipeline offers them; guidance is re-read every step, so a callback
        that sets ``pipe._guidance_scale`` changes the steps that follow, as in diffusers.
        """
        scheduler, state = call.scheduler, call.state
        step_kwargs = _step_kwargs(scheduler, call.generator, call.args.eta)
        warmup = len(timesteps) - num_inference_steps * scheduler.order
        state.num_timesteps = len(timesteps)
        with self.progress_bar(total=num_inference_steps) as bar:
            for i, t in enumerate(timesteps):
                if state.interrupt:
                    continue
                start = time.perf_counter()
                noise_pred, unet_seconds = self.guided_noise(call, tensors, t, i)
                latents = scheduler.step(noise_pred, t, tensors.latents, **step_kwargs).prev_sample
                tensors.latents = self.check_step(latents.astype(np.float32), i, len(timesteps), t)
                if self.stage_hooks:
                    self.emit("unet", unet_seconds, i)
                    self.emit("scheduler", time.perf_counter() - start - unet_seconds, i)
                if known is not None:
                    tensors.latents = known.blend(scheduler, i, tensors.latents, tensors.mask)
                if call.args.callback_on_step_end is not None:
                    names = call.args.callback_on_step_end_tensor_inputs
                    outputs = call.args.callback_on_step_end(self, i, t, tensors.named(names))
                    tensors.replace(outputs, self._callback_tensor_inputs)
                    self.check_step(tensors.latents, i, len(timesteps), t, "after callback_on_step_end")
                if i == len(timesteps) - 1 or (i + 1 > warmup and (i + 1) % scheduler.order == 0):
                    bar.update()
        return tensors.latents

    @staticmethod
    def check_step(latents: np.ndarray, i: int, steps: int, t: Any, when: str = "") -> np.ndarray:
        """``latents`` unless they turned NaN or infinite, which no later step can undo: then an error naming the
        step (diffusers would go on and decode a black image)."""
        if not np.isfinite(latents).all():
            raise NonFiniteError(
                f"the latents turned non-finite (NaN or infinity) at step {i + 1} of {steps} (timestep "
                f"{float(np.asarray(t)):g}){' ' + when if when else ''}; the settings (guidance_scale, eta, "
                "scheduler) or the package's weights overflow: try smaller values, or check the package with "
                "`diffrt export` again."
            )
        return latents

    def guided_noise(self, call: Call, tensors: DenoisingTensors, t: Any, step: int = 0) -> tuple[np.ndarray, float]:
        """The UNet's noise prediction at ``t`` (denoising step ``step``) with classifier-free guidance (and rescale)
        applied; the seconds the UNet took."""
        state = call.state
        cfg = state.do_classifier_free_guidance
        model_input = np.concatenate([tensors.latents] * 2) if cfg else tensors.latents
        model_input = call.scheduler.scale_model_input(model_input, t)
        channels = self.unet_channels(tensors)
        if channels:
            model_input = np.concatenate([model_input, *channels], axis=1)
        start = time.perf_counter()
        extra = {**self.unet_inputs(tensors), **call.lora.of("unet")}
        noise_pred = self.run_unet(
            model_input, t, tensors.prompt_embeds, call.timestep_cond, extra, cache=call.feature_cache, step=step
        )
        seconds = time.perf_counter() - start
        if cfg:
            uncond, text = np.split(noise_pred, 2)
            noise_pred = uncond + state.guidance_scale * (text - uncond)
            if state.guidance_rescale > 0.0:
                noise_pred = rescale_noise_cfg(noise_pred, text, state.guidance_rescale)
        return noise_pred, seconds

    def unet_channels(self, tensors: DenoisingTensors) -> list[np.ndarray]:
        """Conditioning concatenated to the UNet's input after the latents (inpainting, depth); none here."""
        return []

    def unet_inputs(self, tensors: DenoisingTensors) -> dict[str, np.ndarray]:
        """Further UNet graph inputs (SDXL's added conditions); none here."""
        return {}

    def run_unet(
        self,
        sample: np.ndarray,
        t: Any,
        encoder_hidden_states: np.ndarray,
        timestep_cond: np.ndarray | None,
        extra: dict[str, np.ndarray] | None = None,
        *,
        cache: FeatureCache | None = None,
        step: int = 0,
    ) -> np.ndarray:
        """The UNet's ``out_sample``; with a DeepCache ``cache``, step ``step`` may run the shallow UNet instead."""
        feeds = {
            "sample": sample,
            "timestep": timestep_feed(self.unet, t, sample.shape[0]),
            "encoder_hidden_states": encoder_hidden_states,
            **(extra or {}),
        }
        if timestep_cond is not None:
            feeds["timestep_cond"] = np.concatenate([timestep_cond] * (sample.shape[0] // timestep_cond.shape[0]))
        if cache is not None:
            return cache.run(self.unet, feeds, step)
        return self.unet.run(feeds, ["out_sample"])["out_sample"]

    # ----- the VAE ----------------------------------------------------------------------------------------------
    def encode_image(self, image: np.ndarray, generator: np.random.Generator) -> np.ndarray:
        """Scaled latents of ``image`` (B, 3, H, W) in [-1, 1]: what diffusers' ``retrieve_latents`` (sample mode)
        takes (see :meth:`vae_latents`), times the VAE scaling factor."""
        return (self.package.vae_config.scaling_factor * self.vae_latents(image, generator)).astype(np.float32)

    def vae_latents(self, image: np.ndarray, generator: np.random.Generator) -> np.ndarray:
        """Unscaled latents (B, C, H/f, W/f) of ``image`` (B, 3, H, W) in [-1, 1] as diffusers' ``retrieve_latents``
        takes them: a posterior draw for an AutoencoderKL; an AutoencoderTiny's ``latents``, which draw nothing
        from ``generator`` (so the call's later draws come one tensor earlier, as in diffusers)."""
        if not self.package.vae_config.is_tiny:
            return self.posterior_sample(image, generator)
        with self.timed("vae_encoder"):
            return self.vae_encoder.run({"sample": image}, ["latents"])["latents"]

    def posterior_sample(self, image: np.ndarray, generator: np.random.Generator) -> np.ndarray:
        """One draw from the VAE posterior of ``image`` (B, 3, H, W) in [-1, 1], unscaled: (B, C, H/f, W/f)."""
        with self.timed("vae_encoder"):
            params = self.vae_encoder.run({"sample": image}, ["latent_parameters"])["latent_parameters"]
        mean, logvar = np.split(params, 2, axis=1)
        std = np.exp(0.5 * np.clip(logvar, -30.0, 20.0))
        return mean + std * randn(mean.shape, generator)

    def decode_latents(self, latents: np.ndarray, output_type: str) -> StableDiffusionPipelineOutput:
        if output_type == "latent":
            return StableDiffusionPipelineOutput(images=latents)
        with self.timed("vae_decoder"):
            image = self.vae_decoder.run({"latent_sample": self.unscale_latents(latents)}, ["sample"])
        if not np.isfinite(image["sample"]).all():
            raise NonFiniteError(
                "the VAE decoder gave non-finite pixels (NaN or infinity) from finite latents; it overflows at this "
                "precision: run it in fp32 (SessionSettings(precision='fp32')) or re-export the package."
            )
        images = self.image_processor.postprocess(image["sample"], output_type=output_type)
        return StableDiffusionPipelineOutput(images=images)

    def unscale_latents(self, latents: np.ndarray) -> np.ndarray:
        """Diffusion latents -> what the VAE decoder takes: divided by the scaling factor."""
        return latents / self.package.vae_config.scaling_factor

    # ----- previews: a tiny VAE's decoder -----------------------------------------------------------------------
    @property
    def preview_decoder(self) -> Engine | None:
        """The decoder progress previews are drawn with: the package's tiny preview decoder
        (``vae_decoder_preview/``, written by ``diffrt export --preview-vae``), else the package's own decoder when
        its VAE is an AutoencoderTiny; None when it has neither. Created on first use."""
        if self.package.has(PREVIEW_DECODER):
            return self.package.engine(PREVIEW_DECODER)
        if self.package.vae_config.is_tiny and self.package.has("vae_decoder"):
            return self.package.engine("vae_decoder")
        return None

    def decode_preview(self, latents: np.ndarray, output_type: str = "pil") -> Any:
        """Images of diffusion ``latents`` (B, C, h, w) drawn by :attr:`preview_decoder` at full size (PIL images,
        or as ``output_type`` says), for a look at a call in progress; None when the package has no tiny decoder."""
        decoder = self.preview_decoder
        if decoder is None:
            return None
        latents = np.asarray(latents, dtype=np.float32)
        if self.package.has(PREVIEW_DECODER):
            latent_sample = latents / self.package.configs.preview_vae.scaling_factor
        else:
            latent_sample = self.unscale_latents(latents)
        sample = decoder.run({"latent_sample": latent_sample.astype(np.float32)}, ["sample"])["sample"]
        return self.image_processor.postprocess(sample, output_type=output_type)

    def check_latents(self, latents: Any, shape: tuple[int, ...], why: str) -> np.ndarray:
        latents = np.asarray(latents, dtype=np.float32)
        if latents.shape != tuple(shape):
            raise ConfigError(f"latents has shape {latents.shape}; accepted: {tuple(shape)} ({why}).")
        return latents

    def initial_latents(self, call: Call, shape: tuple[int, ...], latents: Any, size: tuple[int, int]) -> np.ndarray:
        """Text-to-image's starting point: fresh noise (or the given ``latents``) times the scheduler's initial
        sigma."""
        if latents is None:
            latents = randn(shape, call.generator)
        else:
            latents = self.check_latents(latents, shape, f"{shape[0]} images of {size[0]}x{size[1]} pixels")
        return (latents * call.scheduler.init_noise_sigma).astype(np.float32)

    def set_schedule(self, scheduler: Scheduler, args: PromptArguments) -> int:
        """Set the call's schedule as diffusers' ``retrieve_timesteps`` does: the custom ``timesteps`` / ``sigmas``
        when given (their length is then the step count), else ``num_inference_steps`` spaced per config.
        Returns the step count."""
        custom = custom_schedule(scheduler, args)
        if custom is None:
            scheduler.set_timesteps(args.num_inference_steps)
            return args.num_inference_steps
        scheduler.set_timesteps(**custom)
        return len(scheduler.timesteps)

    def strength_timesteps(self, scheduler: Scheduler, args: PromptArguments) -> tuple[np.ndarray, int]:
        """The schedule image-to-image runs: the last ``strength`` of ``num_inference_steps`` steps (of the custom
        schedule, when one is given)."""
        custom = custom_schedule(scheduler, args) or {}
        timesteps = scheduler.set_timesteps_for_strength(args.num_inference_steps, args.strength, **custom)
        count = len(scheduler.timesteps) if custom else args.num_inference_steps
        steps = min(int(count * args.strength), count)
        if steps < 1:
            raise ConfigError(
                f"strength={args.strength} with {count} inference steps leaves no denoising step; "
                f"accepted: strength * num_inference_steps >= 1."
            )
        return timesteps, steps


def custom_schedule(scheduler: Scheduler, args: PromptArguments) -> dict[str, list[float]] | None:
    """``{"timesteps": [...]}`` or ``{"sigmas": [...]}`` from the call's arguments, or None; a scheduler whose
    ``set_timesteps`` takes no such schedule is refused, naming those that do."""
    for kind in ("timesteps", "sigmas"):
        values = getattr(args, kind, None)
        if values is None:
            continue
        if kind not in inspect.signature(scheduler.set_timesteps).parameters:
            takers = sorted(n for n, c in SCHEDULERS.items() if kind in inspect.signature(c.set_timesteps).parameters)
            raise ConfigError(
                f"{kind}= is not supported by {type(scheduler).__name__}, whose set_timesteps takes no custom {kind}; "
                f"accepted with: {', '.join(takers)}."
            )
        return {kind: values}
    return None


class KnownRegion:
    """Inpainting with a plain 4-channel UNet: after step ``i`` the unmasked region is the image's latents noised to
    the next timestep (unnoised after the last step)."""

    def __init__(self, image_latents: np.ndarray, noise: np.ndarray, timesteps: np.ndarray) -> None:
        self.image_latents, self.noise, self.timesteps = image_latents, noise, timesteps

    def blend(self, scheduler: Scheduler, i: int, latents: np.ndarray, mask: np.ndarray) -> np.ndarray:
        known = self.image_latents
        if i < len(self.timesteps) - 1:
            known = scheduler.add_noise(self.image_latents, self.noise, np.asarray([self.timesteps[i + 1]]))
        init_mask = mask[: latents.shape[0]]
        return ((1 - init_mask) * known + init_mask * latents).astype(np.float32)


def timestep_feed(unet, t: Any, batch: int) -> np.ndarray:
    """The timestep as the UNet graph declares it: one per batch item (diffrt's exports, Optimum's) or a scalar
    (diffrt's exports before per-sample timesteps)."""
    spec = unet.inputs.get("timestep")
    value = np.asarray(t, dtype=np.float32).reshape(())
    if spec is not None and len(spec.shape) == 1:
        return np.full((batch,), value, dtype=np.float32)
    return value


def rescale_noise_cfg(noise_cfg: np.ndarray, noise_pred_text: np.ndarray, guidance_rescale: float) -> np.ndarray:
    """Rescale guided noise toward the text prediction's spread (Lin et al. 2023, "Common Diffusion Noise
    Schedules and Sample Steps are Flawed", section 3.4)."""
    axes = tuple(range(1, noise_pred_text.ndim))
    std_text = noise_pred_text.std(axis=axes, keepdims=True, ddof=1)
    std_cfg = noise_cfg.std(axis=axes, keepdims=True, ddof=1)
    rescaled = noise_cfg * (std_text / std_cfg)
    return (guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg).astype(np.float32)


def guidance_scale_embedding(w: np.ndarray, dim: int) -> np.ndarray:
    """Sinusoidal embedding of guidance scales (batch,) -> (batch, dim), as guidance-distilled UNets expect."""
    w = w.astype(np.float32) * 1000.0
    half = dim // 2
    freq = np.exp(np.arange(half, dtype=np.float32) * -np.float32(math.log(10000.0) / (half - 1)))
    emb = w[:, None] * freq[None, :]
    emb = np.concatenate([np.sin(emb), np.cos(emb)], axis=1)
    if dim % 2:
        emb = np.pad(emb, ((0, 0), (0, 1)))
    return emb.astype(np.float32)


def tile_to_batch(name: str, array: np.ndarray, batch: int) -> np.ndarray:
    """Repeat a batch of images (or their latents) to ``batch`` rows, as diffusers tiles them: 0, 1, 0, 1, ..."""
    have = array.shape[0]
    if have == batch:
        return array
    if have > batch or batch % have:
        raise ConfigError(
            f"{name} holds {have} images but the call makes {batch} (prompts x num_images_per_prompt); "
            f"accepted: {batch} images or a number that divides {batch}."
        )
    return np.concatenate([array] * (batch // have))


def _step_kwargs(scheduler: Scheduler, generator: np.random.Generator, eta: float) -> dict[str, Any]:
    """``eta`` and ``generator`` for schedulers whose ``step`` takes them (diffusers' prepare_extra_step_kwargs)."""
    params = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


def prompt_list(name: str, prompt: Any) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    if isinstance(prompt, (list, tuple)) and not prompt:
        raise ConfigError(f"{name} is an empty list; accepted: a string or a non-empty list of strings.")
    raise ConfigError(f"{name}={prompt!r} is not supported; accepted: a string or a non-empty list of strings.")


def negative_prompts(name: str, negative: Prompt, batch: int) -> list[str]:
    """A negative prompt per prompt: one string serves every prompt, a list must have one each."""
    if isinstance(negative, str):
        return [negative] * batch
    negatives = prompt_list(name, negative)
    if len(negatives) != batch:
        raise ConfigError(
            f"{name} has {len(negatives)} prompts but prompt has {batch}; accepted: one string, or a list of "
            f"{batch} strings (one per prompt)."
        )
    return negatives


def _unet_kind(in_channels: int) -> str:
    return {4: "a text-to-image UNet", 5: "a depth-conditioned UNet", 9: "an inpainting UNet"}.get(
        in_channels, "an unknown kind"
    )


def _pipeline_for(in_channels: int) -> str:
    return {
        4: "StableDiffusionPipeline, StableDiffusionImg2ImgPipeline or StableDiffusionInpaintPipeline",
        5: "StableDiffusionDepth2ImgPipeline",
        9: "StableDiffusionInpaintPipeline",
    }.get(in_channels, "a pipeline made for it")

"""The machinery the Stable Diffusion pipelines share: prompt encoding, guidance, the denoising loop, VAE calls.

Each step mirrors diffusers 0.42 so that, given the same weights and the same noise, images agree to float
rounding. Randomness comes from one ``numpy.random.Generator`` per call; draws happen in diffusers' order (VAE
posterior sample, then the initial or ``add_noise`` noise, then any ancestral scheduler steps), each of the whole
tensor at once, as diffusers' ``randn_tensor`` draws with a single generator.
"""

from __future__ import annotations

import copy
import inspect
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError
from ..image_processor import VaeImageProcessor
from ..schedulers import Scheduler, as_generator, randn
from .base import DiffusionPipeline, StableDiffusionPipelineOutput, check_int, check_output_type

Prompt = str | Sequence[str] | None
StepCallback = Callable[[Any, int, Any, dict[str, np.ndarray]], dict[str, np.ndarray] | None]


@dataclass
class PromptCall:
    """One call's working set: its own scheduler copy, its noise stream, the encoded prompts, its callback."""

    scheduler: Scheduler
    generator: np.random.Generator
    prompt_embeds: np.ndarray  # (batch, tokens, hidden), each prompt's copies adjacent
    negative_prompt_embeds: np.ndarray | None  # same shape; None without guidance
    batch: int  # images made: prompts x num_images_per_prompt
    eta: float
    callback: StepCallback | None
    callback_inputs: tuple[str, ...]


class StableDiffusionBase(DiffusionPipeline):
    """Text-conditioned latent diffusion over a CLIP text encoder, a UNet and a VAE decoder."""

    networks: ClassVar[tuple[str, ...]] = ("text_encoder", "unet", "vae_decoder")
    unet_in_channels: ClassVar[tuple[int, ...]] = (4,)
    """UNet input widths this pipeline can drive (latents plus any conditioning channels)."""
    _callback_tensor_inputs: ClassVar[tuple[str, ...]] = ("latents", "prompt_embeds", "negative_prompt_embeds")

    def __init__(self, package, scheduler: Scheduler | None = None):
        self.unet_config = package.config("unet")
        self.check_unet(package)
        super().__init__(package, scheduler)
        self.load_text_side(package)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self._guidance_scale, self._guidance_rescale, self._clip_skip = 7.5, 0.0, None
        self._num_timesteps, self._interrupt = 0, False

    def check_unet(self, package) -> None:
        """Refuse, before any engine is created, a package whose UNet this pipeline cannot drive."""
        in_channels = self.unet_config.get("in_channels", 4)
        if self.unet_config and in_channels not in self.unet_in_channels:
            raise ConfigError(
                f"the package's UNet takes {in_channels} input channels ({_unet_kind(in_channels)}), but "
                f"{type(self).__name__} drives a UNet of {' or '.join(map(str, self.unet_in_channels))}; use "
                f"{_pipeline_for(in_channels)} for this package."
            )
        if self.unet_config.get("addition_embed_type") == "text_time":
            raise ConfigError(
                f"the package's UNet is an SDXL UNet (addition_embed_type='text_time', exported from "
                f"{package.pipeline_class or 'an SDXL pipeline'}), which {type(self).__name__} cannot drive; use "
                "StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline or StableDiffusionXLInpaintPipeline."
            )

    def load_text_side(self, package) -> None:
        """The tokenizer(s) and text encoder config(s) prompt encoding reads; SDXL pipelines load two."""
        self.tokenizer = package.tokenizer()
        self.text_encoder_config = package.config("text_encoder")

    # ----- the properties diffusers' callbacks read -------------------------------------------------------------
    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def guidance_rescale(self) -> float:
        return self._guidance_rescale

    @property
    def clip_skip(self) -> int | None:
        return self._clip_skip

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Guidance runs only above 1, and not for UNets that take the guidance scale as input (LCM)."""
        return self._guidance_scale > 1 and not self.unet_config.get("time_cond_proj_dim")

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    @property
    def latent_channels(self) -> int:
        return int(self.package.vae_config.get("latent_channels", 4))

    def default_size(self) -> tuple[int, int]:
        """(height, width) in pixels the UNet was trained at: its ``sample_size`` times the VAE scale factor."""
        size = self.unet_config.get("sample_size", 64)
        h, w = (size, size) if isinstance(size, int) else size
        return h * self.vae_scale_factor, w * self.vae_scale_factor

    # ----- prompts ----------------------------------------------------------------------------------------------
    def check_prompts(
        self,
        prompt: Prompt,
        negative_prompt: Prompt,
        prompt_embeds: np.ndarray | None,
        negative_prompt_embeds: np.ndarray | None,
    ) -> int:
        """Validate the prompt arguments as diffusers does; return the number of prompts."""
        if prompt is not None and prompt_embeds is not None:
            raise ConfigError("prompt and prompt_embeds were both given; accepted: one of the two.")
        if prompt is None and prompt_embeds is None:
            raise ConfigError("prompt is missing; accepted: a string, a non-empty list of strings, or prompt_embeds.")
        if prompt is not None:
            batch = len(_prompt_list("prompt", prompt))
        else:
            prompt_embeds = self._check_embeds("prompt_embeds", prompt_embeds)
            batch = prompt_embeds.shape[0]
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ConfigError("negative_prompt and negative_prompt_embeds were both given; accepted: one of the two.")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            count = len(_prompt_list("negative_prompt", negative_prompt))
            if count != batch:
                raise ConfigError(
                    f"negative_prompt has {count} prompts but prompt has {batch}; accepted: one string, or a list "
                    f"of {batch} strings (one per prompt)."
                )
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = self._check_embeds("negative_prompt_embeds", negative_prompt_embeds)
            if prompt_embeds is not None and negative_prompt_embeds.shape != np.shape(prompt_embeds):
                raise ConfigError(
                    f"negative_prompt_embeds has shape {negative_prompt_embeds.shape} but prompt_embeds has "
                    f"{np.shape(prompt_embeds)}; accepted: the same shape."
                )
        return batch

    def _check_embeds(self, name: str, embeds: Any) -> np.ndarray:
        embeds = np.asarray(embeds, dtype=np.float32)
        width = self.unet_config.get("cross_attention_dim")
        if embeds.ndim != 3 or (width and embeds.shape[-1] != width):
            raise ConfigError(
                f"{name} has shape {embeds.shape}; accepted: (batch, tokens, {width or 'hidden'}) float array."
            )
        return embeds

    def encode_prompt(
        self,
        prompt: Prompt,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt: Prompt = None,
        prompt_embeds: np.ndarray | None = None,
        negative_prompt_embeds: np.ndarray | None = None,
        clip_skip: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Text embeddings (batch x num_images_per_prompt, tokens, hidden), each prompt's copies adjacent.

        ``clip_skip=k`` takes the hidden state k layers before the last, final-layer-normed, as diffusers does;
        the negative prompt is always encoded from the last layer (diffusers' behaviour).
        """
        if prompt_embeds is None:
            prompts = _prompt_list("prompt", prompt)
            prompt_embeds = self._encode_text(prompts, clip_skip)
        prompt_embeds = np.asarray(prompt_embeds, dtype=np.float32)
        batch = prompt_embeds.shape[0]
        prompt_embeds = np.repeat(prompt_embeds, num_images_per_prompt, axis=0)
        if not do_classifier_free_guidance:
            return prompt_embeds, None
        if negative_prompt_embeds is None:
            if negative_prompt is None:
                negatives = [""] * batch
            elif isinstance(negative_prompt, str):  # one negative prompt serves every prompt
                negatives = [negative_prompt] * batch
            else:
                negatives = _prompt_list("negative_prompt", negative_prompt)
            negative_prompt_embeds = self._encode_text(negatives, None, max_length=prompt_embeds.shape[1])
        negative_prompt_embeds = np.asarray(negative_prompt_embeds, dtype=np.float32)
        return prompt_embeds, np.repeat(negative_prompt_embeds, num_images_per_prompt, axis=0)

    def _encode_text(self, prompts: list[str], clip_skip: int | None, max_length: int | None = None) -> np.ndarray:
        ids = self.tokenizer(prompts, max_length=max_length).input_ids
        if clip_skip is None:
            output = "last_hidden_state"
        else:
            layers = int(self.text_encoder_config.get("num_hidden_layers", 0))
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
            return self.text_encoder.run({"input_ids": ids}, [output])[output]

    # ----- the denoising loop -----------------------------------------------------------------------------------
    def start_call(
        self,
        prompt: Prompt,
        negative_prompt: Prompt,
        prompt_embeds: np.ndarray | None,
        negative_prompt_embeds: np.ndarray | None,
        num_images_per_prompt: int,
        guidance_scale: float,
        guidance_rescale: float,
        clip_skip: int | None,
        output_type: str,
        generator: np.random.Generator | int | None,
        eta: float,
        callback_on_step_end: StepCallback | None,
        callback_on_step_end_tensor_inputs: Sequence[str],
    ) -> PromptCall:
        """Check the arguments every text-conditioned call shares, record the settings callbacks read, encode the
        prompts, and give the call its own copy of the scheduler.

        The copy keeps concurrent calls on one pipeline independent: a scheduler holds per-run state.
        """
        prompts = self.check_call(
            prompt,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            num_images_per_prompt,
            guidance_scale,
            guidance_rescale,
            clip_skip,
            output_type,
            callback_on_step_end_tensor_inputs,
        )
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt,
            num_images_per_prompt,
            self.do_classifier_free_guidance,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            clip_skip,
        )
        return PromptCall(
            scheduler=copy.deepcopy(self.scheduler),
            generator=as_generator(generator),
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            batch=prompts * num_images_per_prompt,
            eta=eta,
            callback=callback_on_step_end,
            callback_inputs=tuple(callback_on_step_end_tensor_inputs),
        )

    def check_call(
        self,
        prompt: Prompt,
        negative_prompt: Prompt,
        prompt_embeds: np.ndarray | None,
        negative_prompt_embeds: np.ndarray | None,
        num_images_per_prompt: int,
        guidance_scale: float,
        guidance_rescale: float,
        clip_skip: int | None,
        output_type: str,
        callback_on_step_end_tensor_inputs: Sequence[str],
    ) -> int:
        """The checks of :meth:`start_call`, and the settings callbacks read; returns the number of prompts."""
        prompts = self.check_prompts(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds)
        check_output_type(output_type)
        check_int("num_images_per_prompt", num_images_per_prompt)
        for name, value, lo, hi in (
            ("guidance_scale", guidance_scale, -math.inf, math.inf),
            ("guidance_rescale", guidance_rescale, 0.0, 1.0),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not lo <= value <= hi:
                accepted = "a number" if hi == math.inf else f"a number from {lo:g} to {hi:g}"
                raise ConfigError(f"{name}={value!r} is not supported; accepted: {accepted}.")
        unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ConfigError(
                f"callback_on_step_end_tensor_inputs has {unknown}; accepted: {list(self._callback_tensor_inputs)}."
            )
        self._guidance_scale, self._guidance_rescale = float(guidance_scale), float(guidance_rescale)
        self._clip_skip, self._interrupt = clip_skip, False
        return prompts

    def check_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        default_h, default_w = self.default_size()
        height, width = height or default_h, width or default_w
        f = self.vae_scale_factor
        for name, value in (("height", height), ("width", width)):
            check_int(name, value)
            if value % f:
                raise ConfigError(
                    f"{name}={value} is not a multiple of {f}, the VAE scale factor of this package; accepted: "
                    f"{value // f * f} or {value // f * f + f}."
                )
        return int(height), int(width)

    def timestep_cond(self, batch: int) -> np.ndarray | None:
        """Guidance-scale embedding for UNets that take it (``time_cond_proj_dim``, e.g. LCM-distilled ones)."""
        dim = self.unet_config.get("time_cond_proj_dim")
        if not dim:
            return None
        w = np.full(batch, self._guidance_scale - 1.0, dtype=np.float32)
        return guidance_scale_embedding(w, dim)

    def denoise(
        self,
        call: PromptCall,
        timesteps: np.ndarray,
        num_inference_steps: int,
        latents: np.ndarray,
        conditioning: Sequence[str] = (),
        blend: Callable[[int, np.ndarray, dict[str, np.ndarray]], np.ndarray] | None = None,
        state: dict[str, np.ndarray] | None = None,
        unet_inputs: Mapping[str, str] | None = None,
    ) -> np.ndarray:
        """Run the UNet over ``timesteps`` with guidance, stepping ``scheduler``; return the final latents.

        ``conditioning`` names tensors in ``state`` concatenated to the UNet input after the latents (inpainting
        mask and masked image, depth map); ``blend`` re-imposes known regions after each step (4-channel inpainting);
        ``unet_inputs`` maps further UNet inputs to the ``state`` tensors fed to them (SDXL's added conditions).
        Callbacks may replace any tensor named in ``callback_on_step_end_tensor_inputs``.
        """
        cfg, scheduler = self.do_classifier_free_guidance, call.scheduler
        prompt_embeds, negative_prompt_embeds = call.prompt_embeds, call.negative_prompt_embeds
        state = dict(state or {})
        state["latents"] = latents
        state["negative_prompt_embeds"] = negative_prompt_embeds
        state["prompt_embeds"] = np.concatenate([negative_prompt_embeds, prompt_embeds]) if cfg else prompt_embeds
        step_kwargs = _step_kwargs(scheduler, call.generator, call.eta)
        cond = self.timestep_cond(prompt_embeds.shape[0])
        warmup = len(timesteps) - num_inference_steps * scheduler.order
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=num_inference_steps) as bar:
            for i, t in enumerate(timesteps):
                if self._interrupt:
                    continue
                latents = state["latents"]
                start = time.perf_counter()
                model_input = np.concatenate([latents] * 2) if cfg else latents
                model_input = scheduler.scale_model_input(model_input, t)
                if conditioning:
                    model_input = np.concatenate([model_input, *(state[k] for k in conditioning)], axis=1)
                unet_start = time.perf_counter()
                extra = {name: state[key] for name, key in (unet_inputs or {}).items()}
                noise_pred = self.run_unet(model_input, t, state["prompt_embeds"], cond, extra)
                unet_end = time.perf_counter()
                if cfg:
                    uncond, text = np.split(noise_pred, 2)
                    noise_pred = uncond + self._guidance_scale * (text - uncond)
                    if self._guidance_rescale > 0.0:
                        noise_pred = rescale_noise_cfg(noise_pred, text, self._guidance_rescale)
                latents = scheduler.step(noise_pred, t, latents, **step_kwargs).prev_sample.astype(np.float32)
                if self.stage_hooks:
                    self.emit("unet", unet_end - unet_start, i)
                    self.emit("scheduler", (unet_start - start) + (time.perf_counter() - unet_end), i)
                if blend is not None:
                    latents = blend(i, latents, state)
                state["latents"] = latents
                if call.callback is not None:
                    outputs = call.callback(self, i, t, {k: state[k] for k in call.callback_inputs})
                    for key, value in (outputs or {}).items():
                        if key in self._callback_tensor_inputs:
                            state[key] = np.asarray(value, dtype=np.float32)
                if i == len(timesteps) - 1 or (i + 1 > warmup and (i + 1) % scheduler.order == 0):
                    bar.update()
        return state["latents"]

    def run_unet(
        self,
        sample: np.ndarray,
        t: Any,
        encoder_hidden_states: np.ndarray,
        timestep_cond: np.ndarray | None,
        extra: dict[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        feeds = {
            "sample": sample,
            "timestep": timestep_feed(self.unet, t, sample.shape[0]),
            "encoder_hidden_states": encoder_hidden_states,
            **(extra or {}),
        }
        if timestep_cond is not None:
            feeds["timestep_cond"] = np.concatenate([timestep_cond] * (sample.shape[0] // timestep_cond.shape[0]))
        return self.unet.run(feeds, ["out_sample"])["out_sample"]

    # ----- the VAE ----------------------------------------------------------------------------------------------
    def encode_image(self, image: np.ndarray, generator: np.random.Generator) -> np.ndarray:
        """Scaled latents of ``image`` (B, 3, H, W) in [-1, 1]: a draw from the VAE posterior, as diffusers'
        ``retrieve_latents`` (sample mode) takes it, times the VAE scaling factor."""
        return (self.package.vae_scaling_factor * self.posterior_sample(image, generator)).astype(np.float32)

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
        images = self.image_processor.postprocess(image["sample"], output_type=output_type)
        return StableDiffusionPipelineOutput(images=images)

    def unscale_latents(self, latents: np.ndarray) -> np.ndarray:
        """Diffusion latents -> what the VAE decoder takes: divided by the scaling factor."""
        return latents / self.package.vae_scaling_factor

    def check_latents(self, latents: Any, shape: tuple[int, ...], why: str) -> np.ndarray:
        latents = np.asarray(latents, dtype=np.float32)
        if latents.shape != tuple(shape):
            raise ConfigError(f"latents has shape {latents.shape}; accepted: {tuple(shape)} ({why}).")
        return latents

    def strength_timesteps(
        self, scheduler: Scheduler, num_inference_steps: int, strength: float
    ) -> tuple[np.ndarray, int]:
        """The schedule image-to-image runs: the last ``strength`` of ``num_inference_steps`` steps."""
        check_int("num_inference_steps", num_inference_steps)
        check_strength(strength)
        timesteps = scheduler.set_timesteps_for_strength(num_inference_steps, strength)
        steps = min(int(num_inference_steps * strength), num_inference_steps)
        if steps < 1:
            raise ConfigError(
                f"strength={strength} with num_inference_steps={num_inference_steps} leaves no denoising step; "
                f"accepted: strength * num_inference_steps >= 1."
            )
        return timesteps, steps


def check_strength(strength: Any) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float, np.floating)) or not 0 <= strength <= 1:
        raise ConfigError(f"strength={strength!r} is not supported; accepted: a number from 0 to 1.")
    return float(strength)


def timestep_feed(unet, t: Any, batch: int) -> np.ndarray:
    """The timestep as the UNet graph declares it: a scalar (diffrt, Optimum) or one per batch item."""
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


def _prompt_list(name: str, prompt: Any) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    if isinstance(prompt, (list, tuple)) and not prompt:
        raise ConfigError(f"{name} is an empty list; accepted: a string or a non-empty list of strings.")
    raise ConfigError(f"{name}={prompt!r} is not supported; accepted: a string or a non-empty list of strings.")


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

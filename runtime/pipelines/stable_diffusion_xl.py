"""What the Stable Diffusion XL pipelines share: two text encoders, pooled text embeddings, SDXL's size and crop
conditioning ("time ids"), the base-to-refiner cut-offs and the VAE's latent statistics.

Each step mirrors diffusers 0.42's ``StableDiffusionXL*Pipeline`` so that, given the same weights and noise,
images agree to float rounding; where diffusers has a quirk that changes numbers, we keep it and say so.
Conditioning (Podell et al. 2023, "SDXL: Improving Latent Diffusion Models for High-Resolution Image Synthesis",
section 2.2): the UNet sees the prompt's hidden states from both encoders side by side, the second encoder's
pooled projection, and the image's original size, crop corner and target size (a refiner: an aesthetic score in
place of the target size).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..adapters import EMPTY_FEEDS, AdapterFeeds
from ..errors import ConfigError
from ..schedulers import Scheduler
from .arguments import Prompt, Size, XLArguments, XLImageArguments, check_number
from .call import Call, DenoisingTensors
from .stable_diffusion import StableDiffusionBase, negative_prompts, prompt_list

XL_PIPELINES = "StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline or StableDiffusionXLInpaintPipeline"


@dataclass(frozen=True)
class _TextEncoder:
    """One of the (one or two) text encoders a package has, with what prompt encoding reads from it."""

    name: str
    tokenizer: Any
    engine: Any
    layers: int  # num_hidden_layers: hidden_states.0 is the embeddings, hidden_states.{layers} the last layer


class StableDiffusionXLBase(StableDiffusionBase):
    """Text-conditioned latent diffusion with SDXL's two text encoders and added conditioning.

    ``text_encoder`` (CLIP ViT-L) is optional: a refiner package has only ``text_encoder_2`` (OpenCLIP ViT-bigG,
    with projection), whose pooled output every SDXL UNet takes.
    """

    networks: ClassVar[tuple[str, ...]] = ("text_encoder_2", "unet", "vae_decoder")
    optional_networks: ClassVar[tuple[str, ...]] = ("text_encoder",)
    _callback_tensor_inputs: ClassVar[tuple[str, ...]] = ("latents", "prompt_embeds", "add_text_embeds", "add_time_ids")
    default_guidance_scale: ClassVar[float] = 5.0

    # ----- loading ----------------------------------------------------------------------------------------------
    def check_unet(self, package) -> None:
        """Refuse a UNet without SDXL's added conditioning, or of a width this task cannot drive."""
        in_channels = self.unet_config.in_channels
        if self.unet_config and not self.unet_config.is_sdxl:
            raise ConfigError(
                f"the package's UNet has no SDXL conditioning (addition_embed_type="
                f"{self.unet_config.addition_embed_type!r}, not 'text_time'), which {type(self).__name__} "
                f"needs; it was exported from {package.pipeline_class or 'an unknown pipeline'}: use "
                "StableDiffusionPipeline, StableDiffusionImg2ImgPipeline or StableDiffusionInpaintPipeline."
            )
        if self.unet_config and in_channels not in self.unet_in_channels:
            kind = {4: "a text-to-image UNet", 9: "an inpainting UNet"}.get(in_channels, "an unknown kind")
            suggestion = (
                "StableDiffusionXLInpaintPipeline"
                if in_channels == 9
                else "StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline or StableDiffusionXLInpaintPipeline"
            )
            raise ConfigError(
                f"the package's UNet takes {in_channels} input channels ({kind}), but {type(self).__name__} drives "
                f"a UNet of {' or '.join(map(str, self.unet_in_channels))}; use {suggestion} for this package."
            )

    def load_text_side(self, package) -> None:
        """Both tokenizers and text encoder configs (the first absent from refiners) and the pipeline config."""
        self.tokenizer = package.tokenizer("tokenizer") if self.text_encoder is not None else None
        self.tokenizer_2 = package.tokenizer("tokenizer_2")
        self.text_encoder_config = package.text_encoder_config("text_encoder")
        self.text_encoder_2_config = package.text_encoder_config("text_encoder_2")
        self.force_zeros_for_empty_prompt = bool(package.index.force_zeros_for_empty_prompt)
        self.requires_aesthetics_score = bool(package.index.requires_aesthetics_score)
        self.text_encoders = [
            _TextEncoder(name, tokenizer, engine, _layers(config, engine))
            for name, tokenizer, engine, config in (
                ("text_encoder", self.tokenizer, self.text_encoder, self.text_encoder_config),
                ("text_encoder_2", self.tokenizer_2, self.text_encoder_2, self.text_encoder_2_config),
            )
            if engine is not None
        ]

    @property
    def components(self) -> dict[str, Any]:
        names = ("text_encoder", "text_encoder_2", "unet", "vae_encoder", "vae_decoder")
        names = (*names, "scheduler", "tokenizer", "tokenizer_2")
        return {n: getattr(self, n) for n in names if getattr(self, n, None) is not None}

    # ----- what callbacks read: the running call's settings, per thread -----------------------------------------
    @property
    def denoising_start(self) -> float | None:
        return self._calls.state.denoising_start

    @property
    def denoising_end(self) -> float | None:
        return self._calls.state.denoising_end

    @property
    def text_embeds_dim(self) -> int:
        """Width of the pooled text embedding: text_encoder_2's projection (else the UNet graph's input width)."""
        dim = self.text_encoder_2_config.projection_dim
        if not dim:
            spec = self.unet.inputs.get("text_embeds")
            dim = spec.shape[-1] if spec is not None and isinstance(spec.shape[-1], int) else 0
        return int(dim)

    @property
    def time_ids_count(self) -> int:
        """How many size / crop / score numbers the UNet's added embedding takes (6 base, 5 refiner)."""
        total = self.unet_config.projection_class_embeddings_input_dim
        width = self.unet_config.addition_time_embed_dim
        if not total or not width:
            raise ConfigError(
                "the package's UNet config lacks projection_class_embeddings_input_dim or addition_time_embed_dim, "
                "which an SDXL UNet declares; re-export the package."
            )
        return (int(total) - self.text_embeds_dim) // int(width)

    # ----- prompts ----------------------------------------------------------------------------------------------
    def check_prompts(self, args: XLArguments) -> int:
        """The prompt checks every pipeline makes, then the SDXL-only ones as diffusers makes them (and the pooled
        shapes too); returns the number of prompts."""
        prompts = super().check_prompts(args)
        if args.prompt_2 is not None and args.prompt_embeds is not None:
            raise ConfigError("prompt_2 and prompt_embeds were both given; accepted: one of the two.")
        if args.negative_prompt_2 is not None and args.negative_prompt_embeds is not None:
            raise ConfigError("negative_prompt_2 and negative_prompt_embeds were both given; accepted: one of the two.")
        for name, value in (("prompt_2", args.prompt_2), ("negative_prompt_2", args.negative_prompt_2)):
            if value is not None and not isinstance(value, str) and len(prompt_list(name, value)) != prompts:
                raise ConfigError(
                    f"{name} has {len(value)} prompts but prompt has {prompts}; accepted: one string, or a list "
                    f"of {prompts} strings (one per prompt)."
                )
        for side in ("", "negative_"):
            embeds, pooled = getattr(args, f"{side}prompt_embeds"), getattr(args, f"{side}pooled_prompt_embeds")
            if embeds is not None and pooled is None:
                raise ConfigError(
                    f"{side}prompt_embeds was given without {side}pooled_prompt_embeds; accepted: both, from the same "
                    f"text encoders ({side}pooled_prompt_embeds: text_encoder_2's text_embeds of the same prompts)."
                )
            expected = (prompts, self.text_embeds_dim)
            if pooled is not None and np.shape(pooled) != expected:
                raise ConfigError(
                    f"{side}pooled_prompt_embeds has shape {np.shape(pooled)}; accepted: {expected}, one pooled text "
                    "embedding per prompt."
                )
        return prompts

    def encode_call_prompts(self, call: Call) -> None:
        args = call.args
        (
            call.prompt_embeds,
            call.negative_prompt_embeds,
            call.pooled_prompt_embeds,
            call.negative_pooled_prompt_embeds,
        ) = self.encode_prompt(
            args.prompt,
            args.prompt_2,
            args.num_images_per_prompt,
            call.state.do_classifier_free_guidance,
            negative_prompt=args.negative_prompt,
            negative_prompt_2=args.negative_prompt_2,
            prompt_embeds=args.prompt_embeds,
            negative_prompt_embeds=args.negative_prompt_embeds,
            pooled_prompt_embeds=args.pooled_prompt_embeds,
            negative_pooled_prompt_embeds=args.negative_pooled_prompt_embeds,
            clip_skip=args.clip_skip,
            adapters=call.lora,
        )

    def encode_prompt(
        self,
        prompt: Prompt,
        prompt_2: Prompt = None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        *,
        negative_prompt: Prompt = None,
        negative_prompt_2: Prompt = None,
        prompt_embeds: np.ndarray | None = None,
        negative_prompt_embeds: np.ndarray | None = None,
        pooled_prompt_embeds: np.ndarray | None = None,
        negative_pooled_prompt_embeds: np.ndarray | None = None,
        clip_skip: int | None = None,
        adapters: Mapping[str, Any] | AdapterFeeds | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]:
        """(prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds), each
        (batch x num_images_per_prompt, ...) with each prompt's copies adjacent.

        Hidden states: each encoder's penultimate layer (``clip_skip=k``: k layers further back), un-normed, the
        encoders' outputs side by side. Pooled: text_encoder_2's projection. ``prompt_2`` / ``negative_prompt_2``
        go to the second encoder and default to ``prompt`` / ``negative_prompt``; a package with only
        text_encoder_2 (a refiner) gives it ``prompt``, as diffusers does. Without a negative prompt, packages
        with ``force_zeros_for_empty_prompt`` (SDXL base) use zeros as the negative embeddings. ``adapters``: the
        LoRA adapters the encoders run with (None: the pipeline's active set; see :meth:`adapter_feeds`).
        """
        lora = self.adapter_feeds(adapters)
        pooled = None if pooled_prompt_embeds is None else np.asarray(pooled_prompt_embeds, dtype=np.float32)
        if prompt_embeds is None:
            prompts = prompt_list("prompt", prompt)
            prompts_2 = prompt_list("prompt_2", prompt_2 or prompt)
            prompt_embeds, text_pooled = self._encode_texts(
                [prompts, prompts_2], self._hidden_layer(clip_skip), lora=lora
            )
            pooled = text_pooled if pooled is None else pooled
        prompt_embeds = np.asarray(prompt_embeds, dtype=np.float32)
        batch = prompt_embeds.shape[0]

        negative, negative_pooled = negative_prompt_embeds, negative_pooled_prompt_embeds
        if do_classifier_free_guidance and negative is None:
            if negative_prompt is None and self.force_zeros_for_empty_prompt:
                negative, negative_pooled = np.zeros_like(prompt_embeds), np.zeros_like(pooled)
            else:
                negatives = negative_prompts("negative_prompt", negative_prompt or "", batch)
                negatives_2 = negative_prompts("negative_prompt_2", negative_prompt_2 or negative_prompt or "", batch)
                negative, text_pooled = self._encode_texts(
                    [negatives, negatives_2], self._hidden_layer(None), max_length=prompt_embeds.shape[1], lora=lora
                )
                negative_pooled = text_pooled if negative_pooled is None else negative_pooled

        def per_image(array: np.ndarray | None) -> np.ndarray | None:
            return None if array is None else np.repeat(np.asarray(array, dtype=np.float32), num_images_per_prompt, 0)

        if not do_classifier_free_guidance:
            negative = negative_pooled = None
        return per_image(prompt_embeds), per_image(negative), per_image(pooled), per_image(negative_pooled)

    def _hidden_layer(self, clip_skip: int | None) -> int:
        """How many layers before the last the hidden states are taken from: 1 (the penultimate) + clip_skip."""
        if clip_skip is None:
            return 1
        layers = min(encoder.layers for encoder in self.text_encoders) or None
        valid = isinstance(clip_skip, (int, np.integer)) and not isinstance(clip_skip, bool) and clip_skip >= 0
        if not valid or (layers and clip_skip > layers - 1):
            accepted = f"None or an integer from 0 to {layers - 1}" if layers else "None or an integer >= 0"
            raise ConfigError(f"clip_skip={clip_skip!r} is not supported by these text encoders; accepted: {accepted}.")
        return 1 + int(clip_skip)

    def _encode_texts(
        self, texts: list[list[str]], back: int, max_length: int | None = None, lora: AdapterFeeds = EMPTY_FEEDS
    ) -> tuple[np.ndarray, np.ndarray]:
        """Hidden states ``back`` layers before the last of each encoder (texts[i] for encoder i), concatenated on
        the feature axis, and the pooled projection of text_encoder_2."""
        hidden, pooled = [], None
        for encoder, prompts in zip(self.text_encoders, texts):
            ids = encoder.tokenizer(prompts, max_length=max_length).input_ids
            name = f"hidden_states.{encoder.layers - back}"
            wanted = [name, "text_embeds"] if encoder.name == "text_encoder_2" else [name]
            missing = [n for n in wanted if n not in encoder.engine.outputs]
            if missing:
                raise ConfigError(
                    f"the package's {encoder.name} graph has no output {', '.join(map(repr, missing))}, which SDXL "
                    f"prompt encoding reads (it gives {', '.join(encoder.engine.outputs)}); re-export the package "
                    "with `diffrt export`."
                )
            with self.timed(encoder.name):
                outputs = encoder.engine.run({"input_ids": ids, **lora.of(encoder.name)}, wanted)
            hidden.append(outputs[name])
            pooled = outputs.get("text_embeds", pooled)
        return np.concatenate(hidden, axis=-1).astype(np.float32), np.asarray(pooled, dtype=np.float32)

    # ----- added conditioning: SDXL's time ids ------------------------------------------------------------------
    def check_time_ids(self, count: int) -> None:
        """Refuse time ids the UNet was not trained with, naming the setting that would fit (diffusers' checks)."""
        expected = self.time_ids_count
        if count == expected:
            return
        if count == expected + 1:
            hint = (
                "this UNet takes an aesthetic score in place of the target size (a refiner): use "
                "StableDiffusionXLImg2ImgPipeline or StableDiffusionXLInpaintPipeline with requires_aesthetics_score "
                "true in the package's model_index.json"
            )
        elif count == expected - 1:
            hint = (
                "this UNet takes a target size, not an aesthetic score: set requires_aesthetics_score to false in "
                "the package's model_index.json"
            )
        else:
            hint = "the UNet config does not match text_encoder_2's projection_dim; re-export the package"
        raise ConfigError(
            f"the UNet expects {expected} time ids (sizes, crop corner, score) but this call makes {count}; {hint}."
        )

    def text2img_time_ids(self, call: Call, size: Size) -> np.ndarray:
        """Time ids (UNet batch, 6) for text-to-image. The negative ones apply only when both negative sizes are
        given. As in diffusers, the [negative, positive] pair is tiled per image (not stacked as the embeddings
        are), so with several images and distinct negative ids the rows alternate; identical ids hide this."""
        args = call.args
        ids = _time_ids(args.original_size or size, args.crops_coords_top_left, args.target_size or size)
        self.check_time_ids(len(ids))
        negative = ids
        if args.negative_original_size is not None and args.negative_target_size is not None:
            negative = _time_ids(
                args.negative_original_size, args.negative_crops_coords_top_left, args.negative_target_size
            )
        pair = np.array([negative, ids] if call.state.do_classifier_free_guidance else [ids], dtype=np.float32)
        return np.tile(pair, (call.batch, 1))

    def img2img_time_ids(self, call: Call, size: Size) -> np.ndarray:
        """Time ids (UNet batch, 5 or 6) for image-to-image and inpainting at ``size`` (the latents' size in
        pixels): negatives for the first half.

        A refiner (``requires_aesthetics_score``) takes an aesthetic score in place of the target size. Without
        one the negative ids use the positive crop corner, as diffusers builds them.
        """
        args: XLImageArguments = call.args
        original_size, target_size = args.original_size or size, args.target_size or size
        negative_original_size = args.negative_original_size or original_size
        if self.requires_aesthetics_score:
            ids = (*_pair("original_size", original_size), *_pair("crops_coords_top_left", args.crops_coords_top_left))
            ids = (*ids, check_number("aesthetic_score", args.aesthetic_score))
            negative = (
                *_pair("negative_original_size", negative_original_size),
                *_pair("negative_crops_coords_top_left", args.negative_crops_coords_top_left),
                check_number("negative_aesthetic_score", args.negative_aesthetic_score),
            )
        else:
            ids = _time_ids(original_size, args.crops_coords_top_left, target_size)
            negative = (
                *_pair("negative_original_size", negative_original_size),
                *_pair("crops_coords_top_left", args.crops_coords_top_left),
                *_pair("negative_target_size", args.negative_target_size or target_size),
            )
        self.check_time_ids(len(ids))
        rows = [np.tile(np.array([ids], dtype=np.float32), (call.batch, 1))]
        if call.state.do_classifier_free_guidance:
            rows.insert(0, np.tile(np.array([negative], dtype=np.float32), (call.batch, 1)))
        return np.concatenate(rows)

    # ----- the denoising loop with SDXL's added conditions -------------------------------------------------------
    def denoising_tensors(self, call: Call, latents: np.ndarray, **conditioning: np.ndarray) -> DenoisingTensors:
        """The loop's tensors, with the pooled text embeddings beside the hidden states; ``conditioning`` must
        hold ``add_time_ids``."""
        pooled = call.guided(call.pooled_prompt_embeds, call.negative_pooled_prompt_embeds)
        return super().denoising_tensors(call, latents, add_text_embeds=pooled, **conditioning)

    def unet_inputs(self, tensors: DenoisingTensors) -> dict[str, np.ndarray]:
        return {"text_embeds": tensors.add_text_embeds, "time_ids": tensors.add_time_ids}

    def end_timesteps(self, call: Call, timesteps: np.ndarray) -> tuple[np.ndarray, int]:
        """``timesteps`` cut at ``denoising_end``: those at or above the discrete cut-off (base-to-refiner)."""
        if call.state.denoising_end is None:
            return timesteps, len(timesteps)
        cutoff = discrete_cutoff(call.scheduler, call.state.denoising_end)
        keep = int(np.sum(np.asarray(timesteps) >= cutoff))
        return timesteps[:keep], keep

    def start_timesteps(self, call: Call) -> tuple[np.ndarray, int]:
        """The schedule an image-to-image call runs: the last ``strength`` of it, or, with ``denoising_start``,
        the timesteps below the discrete cut-off (strength then plays no part)."""
        scheduler, args, start_at = call.scheduler, call.args, call.state.denoising_start
        if start_at is None:
            return self.strength_timesteps(scheduler, args)
        self.set_schedule(scheduler, args)
        cutoff = discrete_cutoff(scheduler, start_at)
        steps = int(np.sum(np.asarray(scheduler.timesteps) < cutoff))
        if scheduler.order == 2 and steps % 2 == 0:
            steps += 1  # end after a second-order step's second half, not between its halves
        steps = min(steps, len(scheduler.timesteps))
        start = len(scheduler.timesteps) - steps
        scheduler.set_begin_index(start)
        if steps < 1:
            raise ConfigError(
                f"denoising_start={start_at} with num_inference_steps={args.num_inference_steps} leaves no "
                "denoising step; accepted: a smaller denoising_start or more steps."
            )
        return scheduler.timesteps[start:], steps

    # ----- the VAE, with latent statistics when the config has them ---------------------------------------------
    def latents_stats(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(mean, std) as (1, C, 1, 1) when the VAE config declares ``latents_mean`` and ``latents_std``."""
        config = self.package.vae_config
        mean, std = config.latents_mean, config.latents_std
        if mean is None or std is None:
            return None
        shape = (1, -1, 1, 1)
        return np.asarray(mean, np.float32).reshape(shape), np.asarray(std, np.float32).reshape(shape)

    def normalized_image_latents(self, image: np.ndarray, generator: np.random.Generator) -> np.ndarray:
        """Latents of ``image`` as image-to-image starts from them: a posterior draw (a tiny VAE's latents),
        standardised with the VAE's latent statistics when it has them, else times the scaling factor."""
        sample = self.vae_latents(image, generator)
        stats, factor = self.latents_stats(), self.package.vae_config.scaling_factor
        if stats is None:
            return (factor * sample).astype(np.float32)
        mean, std = stats
        return ((sample - mean) * factor / std).astype(np.float32)

    def unscale_latents(self, latents: np.ndarray) -> np.ndarray:
        stats, factor = self.latents_stats(), self.package.vae_config.scaling_factor
        if stats is None:
            return latents / factor
        mean, std = stats
        return latents * std / factor + mean


def _layers(config: Any, engine: Any) -> int:
    """A text encoder's layer count: from its config, else from its ``hidden_states.{i}`` outputs."""
    if config.num_hidden_layers:
        return int(config.num_hidden_layers)
    return max(sum(1 for name in engine.outputs if name.startswith("hidden_states.")) - 1, 0)


def discrete_cutoff(scheduler: Scheduler, fraction: float) -> int:
    """The training timestep at ``fraction`` of the way through denoising (diffusers' rounding)."""
    total = scheduler.config.num_train_timesteps
    return int(round(total - fraction * total))


def _pair(name: str, value: Any) -> tuple[float, float]:
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in value)
        or not all(math.isfinite(v) for v in value)
    ):
        raise ConfigError(f"{name}={value!r} is not supported; accepted: a (height, width) or (top, left) pair.")
    return float(value[0]), float(value[1])


def _time_ids(original_size: Any, crops_coords_top_left: Any, target_size: Any) -> tuple[float, ...]:
    return (
        *_pair("original_size", original_size),
        *_pair("crops_coords_top_left", crops_coords_top_left),
        *_pair("target_size", target_size),
    )

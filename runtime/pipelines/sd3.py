"""Stable Diffusion 3 (and 3.5) text-to-image, image-to-image and inpainting over an engine package, torch-free.

Prompts go through CLIP-L and CLIP-G (their penultimate hidden states side by side, zero-padded to T5's width,
then T5's states after them; their pooled projections side by side) and T5 when the package has it (without it:
zeros, as diffusers runs SD3 without its third encoder). Classifier-free guidance batches [negative; positive].
``skip_guidance_layers`` (SD3.5's skip-layer guidance) runs the positive half once more with those transformer
layers passed through, within ``skip_layer_guidance_start`` .. ``_stop`` of the schedule, as diffusers does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..adapters import EMPTY_FEEDS, AdapterFeeds
from ..errors import ConfigError
from .arguments import Prompt, check_int, check_number
from .mmdit import ImageArguments, MaskArguments, MMDiTArguments, MMDiTCall, MMDiTPipeline
from .mmdit_tasks import ImageTask, InpaintTask

SD3_PIPELINES = ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline")
CLIP_LENGTH = 77


@dataclass(kw_only=True)
class SD3Arguments(MMDiTArguments):
    """SD3's call, with diffusers' defaults: a prompt per text encoder (``prompt_3``: T5), ``clip_skip`` and
    skip-layer guidance."""

    positional: ClassVar[tuple[str, ...]] = ("prompt", "prompt_2", "prompt_3", "height", "width")

    prompt_3: Prompt = None
    negative_prompt_3: Prompt = None
    clip_skip: int | None = None
    skip_guidance_layers: Sequence[int] | None = None
    skip_layer_guidance_scale: float = 2.8
    skip_layer_guidance_stop: float = 0.2
    skip_layer_guidance_start: float = 0.01
    mu: float | None = None
    """The schedule's resolution shift; None computes it from the image size where the scheduler shifts
    dynamically (``use_dynamic_shifting``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mu is not None:
            self.mu = check_number("mu", self.mu)
        if self.clip_skip is not None:
            self.clip_skip = check_int("clip_skip", self.clip_skip, minimum=0)
        self.skip_layer_guidance_scale = check_number("skip_layer_guidance_scale", self.skip_layer_guidance_scale)
        self.skip_layer_guidance_start = check_number("skip_layer_guidance_start", self.skip_layer_guidance_start, 0, 1)
        self.skip_layer_guidance_stop = check_number("skip_layer_guidance_stop", self.skip_layer_guidance_stop, 0, 1)
        if self.skip_guidance_layers is not None:
            layers = self.skip_guidance_layers
            if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or not layers:
                raise ConfigError(
                    f"skip_guidance_layers={layers!r} is not supported; accepted: None or a non-empty list of layer "
                    "indices, such as [7, 8, 9]."
                )
            self.skip_guidance_layers = [check_int("skip_guidance_layers", v, minimum=0) for v in layers]


@dataclass(kw_only=True)
class SD3Img2ImgArguments(ImageArguments, SD3Arguments):
    positional: ClassVar[tuple[str, ...]] = ("prompt", "prompt_2", "prompt_3", "height", "width", "image", "strength")

    num_inference_steps: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_image()


@dataclass(kw_only=True)
class SD3InpaintArguments(MaskArguments, SD3Arguments):
    positional: ClassVar[tuple[str, ...]] = ("prompt", "prompt_2", "prompt_3", "image", "mask_image")

    num_inference_steps: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_image()


class StableDiffusion3Pipeline(MMDiTPipeline):
    """diffusers' ``StableDiffusion3Pipeline`` on an engine package."""

    arguments = SD3Arguments
    optional_networks: ClassVar[tuple[str, ...]] = ("text_encoder_3",)
    family_pipelines = SD3_PIPELINES
    default_guidance = 7.0

    def __init__(self, package, scheduler=None, limits=None):
        super().__init__(package, scheduler=scheduler, limits=limits)
        self.tokenizer = package.tokenizer("tokenizer")
        self.tokenizer_2 = package.tokenizer("tokenizer_2")
        self.tokenizer_3 = self.t5_tokenizer("tokenizer_3") if self.text_encoder_3 is not None else None
        self.layers = int(self.transformer_config.get("num_layers", 18))

    @property
    def clip_skip(self) -> int | None:
        return self._calls.state.clip_skip

    # ----- prompts ----------------------------------------------------------------------------------------------
    def encode_prompts(self, call: MMDiTCall, count: int) -> None:
        args, n = call.args, call.args.num_images_per_prompt
        call.state.clip_skip = args.clip_skip
        if args.prompt_embeds is None:
            first = self.prompts(args, "prompt", None, count)
            embeds, pooled = self.encode_prompt(
                first,
                self.prompts(args, "prompt_2", args.prompt, count),
                self.prompts(args, "prompt_3", args.prompt, count),
                args.clip_skip,
                args.max_sequence_length,
                call.lora,
            )
            call.embeds.update(prompt_embeds=self.repeat(embeds, n), pooled_prompt_embeds=self.repeat(pooled, n))
        else:
            call.embeds.update(
                prompt_embeds=np.asarray(args.prompt_embeds, np.float32),
                pooled_prompt_embeds=np.asarray(args.pooled_prompt_embeds, np.float32),
            )
        if not call.state.do_classifier_free_guidance:
            return
        if args.negative_prompt_embeds is not None:
            if args.negative_pooled_prompt_embeds is None:
                raise ConfigError("negative_prompt_embeds needs negative_pooled_prompt_embeds too.")
            call.embeds.update(
                negative_prompt_embeds=np.asarray(args.negative_prompt_embeds, np.float32),
                negative_pooled_prompt_embeds=np.asarray(args.negative_pooled_prompt_embeds, np.float32),
            )
            return
        neg = args.negative_prompt if args.negative_prompt is not None else ""
        negs = self.negatives(neg, "negative_prompt", count)
        negs_2 = self.negatives(
            args.negative_prompt_2 if args.negative_prompt_2 is not None else neg, "negative_prompt_2", count
        )
        negs_3 = self.negatives(
            args.negative_prompt_3 if args.negative_prompt_3 is not None else neg, "negative_prompt_3", count
        )
        embeds, pooled = self.encode_prompt(negs, negs_2, negs_3, None, args.max_sequence_length, call.lora)
        call.embeds.update(
            negative_prompt_embeds=self.repeat(embeds, n), negative_pooled_prompt_embeds=self.repeat(pooled, n)
        )

    def encode_prompt(
        self,
        prompt: list[str],
        prompt_2: list[str],
        prompt_3: list[str],
        clip_skip: int | None,
        max_length: int,
        lora: AdapterFeeds = EMPTY_FEEDS,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(prompt_embeds, pooled_prompt_embeds) of one prompt per image, as diffusers' ``encode_prompt`` makes
        them."""
        if not len(prompt) == len(prompt_2) == len(prompt_3):
            raise ConfigError(
                f"prompt, prompt_2 and prompt_3 hold {len(prompt)}, {len(prompt_2)} and {len(prompt_3)} prompts; "
                "accepted: the same count (or a string, which serves every prompt)."
            )
        first, pooled_1 = self.clip_embeds("text_encoder", self.tokenizer, prompt, clip_skip, lora)
        second, pooled_2 = self.clip_embeds("text_encoder_2", self.tokenizer_2, prompt_2, clip_skip, lora)
        clip = np.concatenate([first, second], axis=-1)
        t5 = self.t5_embeds(prompt_3, max_length)
        width = t5.shape[-1]
        clip = (
            np.pad(clip, ((0, 0), (0, 0), (0, width - clip.shape[-1])))
            if width >= clip.shape[-1]
            else clip[..., :width]
        )
        return np.concatenate([clip, t5], axis=1), np.concatenate([pooled_1, pooled_2], axis=-1)

    def clip_embeds(self, name: str, tokenizer, prompts: list[str], clip_skip: int | None, lora: AdapterFeeds):
        """(hidden states ``clip_skip + 2`` from the end, projected pooled output)."""
        engine = getattr(self, name)
        layers = int(self.package.config(name).get("num_hidden_layers", 0))
        skip = clip_skip or 0
        if skip > layers - 1:
            raise ConfigError(f"clip_skip={clip_skip} is not supported by {name}; accepted: 0 to {layers - 1}.")
        hidden = f"hidden_states.{layers - 1 - skip}"
        ids = tokenizer(prompts, max_length=CLIP_LENGTH).input_ids
        with self.timed(name):
            out = engine.run({"input_ids": ids, **lora.of(name)}, [hidden, "text_embeds"])
        return out[hidden], out["text_embeds"]

    def t5_embeds(self, prompts: list[str], max_length: int) -> np.ndarray:
        if self.text_encoder_3 is None:
            width = int(self.transformer_config.get("joint_attention_dim", 4096))
            return np.zeros((len(prompts), max_length, width), np.float32)
        ids = self.tokenizer_3(prompts, max_length=max_length).input_ids
        with self.timed("text_encoder_3"):
            return self.text_encoder_3.run({"input_ids": ids}, ["last_hidden_state"])["last_hidden_state"]

    # ----- steps ------------------------------------------------------------------------------------------------
    def prepare(self, call: MMDiTCall) -> np.ndarray:
        self.set_schedule(call, call.args.sigmas, self.schedule_mu(call))
        shape = self.latent_shape(call)
        if call.args.latents is not None:
            return self.given_latents(call, call.args.latents, shape)
        from ..schedulers.base import randn

        return randn(shape, call.generator)

    def run_transformer(self, call: MMDiTCall, latents, embeds, pooled, t, skip: np.ndarray | None = None):
        feeds = {
            **call.lora.of("transformer"),
            "hidden_states": latents,
            "encoder_hidden_states": embeds,
            "pooled_projections": pooled,
            "timestep": np.full(latents.shape[0], t, dtype=np.float32),
            "skip_layers": skip if skip is not None else np.zeros(self.layers, dtype=bool),
        }
        return self.transformer.run(feeds, ["noise_pred"])["noise_pred"]

    def predict(self, call: MMDiTCall, latents: np.ndarray, t: Any, i: int) -> np.ndarray:
        args, e = call.args, call.embeds
        if not call.state.do_classifier_free_guidance:
            return self.run_transformer(call, latents, e["prompt_embeds"], e["pooled_prompt_embeds"], t)
        embeds = np.concatenate([e["negative_prompt_embeds"], e["prompt_embeds"]])
        pooled = np.concatenate([e["negative_pooled_prompt_embeds"], e["pooled_prompt_embeds"]])
        noise = self.run_transformer(call, np.concatenate([latents] * 2), embeds, pooled, t)
        uncond, text = np.split(noise, 2)
        guided = uncond + call.state.guidance_scale * (text - uncond)
        steps = call.steps
        layers = args.skip_guidance_layers
        if layers is not None and steps * args.skip_layer_guidance_start < i < steps * args.skip_layer_guidance_stop:
            skip = np.zeros(self.layers, dtype=bool)
            if max(layers) >= self.layers:
                raise ConfigError(
                    f"skip_guidance_layers={layers} names a layer past the transformer's {self.layers}; accepted: "
                    f"indices from 0 to {self.layers - 1}."
                )
            skip[layers] = True
            skipped = self.run_transformer(call, latents, e["prompt_embeds"], e["pooled_prompt_embeds"], t, skip)
            guided = guided + (text - skipped) * args.skip_layer_guidance_scale
        return guided.astype(np.float32)


class StableDiffusion3Img2ImgPipeline(ImageTask, StableDiffusion3Pipeline):
    """diffusers' ``StableDiffusion3Img2ImgPipeline`` on an engine package."""

    arguments = SD3Img2ImgArguments


class StableDiffusion3InpaintPipeline(InpaintTask, StableDiffusion3Pipeline):
    """diffusers' ``StableDiffusion3InpaintPipeline`` on an engine package (16-channel transformers)."""

    arguments = SD3InpaintArguments
    decode_shift = False  # diffusers' SD3 inpainting decodes latents / scaling_factor without adding shift_factor

    def __init__(self, package, scheduler=None, limits=None):
        super().__init__(package, scheduler=scheduler, limits=limits)
        channels = int(self.transformer_config.get("in_channels", 16))
        if channels != self.vae_config.latent_channels:
            raise ConfigError(
                f"this package's transformer takes {channels} channels; SD3 inpainting here runs transformers that "
                f"take the {self.vae_config.latent_channels} latent channels (diffusers' 33-channel variant is not "
                "supported)."
            )

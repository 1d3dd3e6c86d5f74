"""Flux text-to-image, image-to-image and inpainting over an engine package, torch-free.

Prompts go through CLIP-L (its pooled output) and T5 (``prompt_2``; its states are the text tokens). Latents are
packed 2x2 into tokens; positions are rotary tables computed here in NumPy from ``txt_ids`` (zeros) and ``img_ids``
(row, column) as diffusers' ``FluxPosEmbed`` computes them (float64 angles). ``guidance_scale`` is the embedded
guidance of dev-style models (ignored by schnell-style ones, as in diffusers); ``true_cfg_scale`` above 1 with a
negative prompt runs real classifier-free guidance, a second transformer call per step. The schedule is
``linspace(1, 1/n, n)`` shifted by ``mu`` from the image's token count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..adapters import EMPTY_FEEDS
from ..errors import ConfigError
from ..schedulers.base import randn
from .arguments import check_number
from .mmdit import ImageArguments, MaskArguments, MMDiTArguments, MMDiTCall, MMDiTPipeline
from .mmdit_tasks import ImageTask, InpaintTask

FLUX_PIPELINES = ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline")
CLIP_LENGTH = 77
ROPE_THETA = 10000


def rotary_tables(ids: np.ndarray, axes_dims: list[int], theta: float = ROPE_THETA) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), each (positions, sum(axes_dims)) float32, of position ids (positions, axes): per axis the angles
    ``id / theta ** (2i / d)`` in float64, each repeated for both channels of its pair (diffusers' ``FluxPosEmbed``)."""
    pos = np.asarray(ids, dtype=np.float32).astype(np.float64)
    cos, sin = [], []
    for axis, dim in enumerate(axes_dims):
        freqs = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
        angles = np.outer(pos[:, axis], freqs)
        cos.append(np.repeat(np.cos(angles), 2, axis=1).astype(np.float32))
        sin.append(np.repeat(np.sin(angles), 2, axis=1).astype(np.float32))
    return np.concatenate(cos, axis=-1), np.concatenate(sin, axis=-1)


def image_ids(rows: int, cols: int) -> np.ndarray:
    """diffusers' ``_prepare_latent_image_ids``: (rows * cols, 3) of (0, row, column)."""
    ids = np.zeros((rows, cols, 3), dtype=np.float32)
    ids[..., 1] += np.arange(rows, dtype=np.float32)[:, None]
    ids[..., 2] += np.arange(cols, dtype=np.float32)[None, :]
    return ids.reshape(rows * cols, 3)


def pack(latents: np.ndarray) -> np.ndarray:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): each 2x2 cell one token (diffusers' ``_pack_latents``)."""
    b, c, h, w = latents.shape
    x = latents.reshape(b, c, h // 2, 2, w // 2, 2).transpose(0, 2, 4, 1, 3, 5)
    return np.ascontiguousarray(x.reshape(b, (h // 2) * (w // 2), c * 4))


def unpack(tokens: np.ndarray, h: int, w: int) -> np.ndarray:
    """(B, h/2 * w/2, 4C) -> (B, C, h, w) (diffusers' ``_unpack_latents``)."""
    b, _, d = tokens.shape
    x = tokens.reshape(b, h // 2, w // 2, d // 4, 2, 2).transpose(0, 3, 1, 4, 2, 5)
    return np.ascontiguousarray(x.reshape(b, d // 4, h, w))


@dataclass(kw_only=True)
class FluxArguments(MMDiTArguments):
    """Flux's call, with diffusers' defaults."""

    positional: ClassVar[tuple[str, ...]] = (
        "prompt",
        "prompt_2",
        "negative_prompt",
        "negative_prompt_2",
        "true_cfg_scale",
        "height",
        "width",
    )

    true_cfg_scale: float = 1.0
    guidance_scale: float = 3.5
    max_sequence_length: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        self.true_cfg_scale = check_number("true_cfg_scale", self.true_cfg_scale)


@dataclass(kw_only=True)
class FluxImg2ImgArguments(ImageArguments, FluxArguments):
    positional: ClassVar[tuple[str, ...]] = (
        *("prompt", "prompt_2", "negative_prompt", "negative_prompt_2", "true_cfg_scale"),
        *("image", "height", "width", "strength"),
    )

    guidance_scale: float = 7.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_image()


@dataclass(kw_only=True)
class FluxInpaintArguments(MaskArguments, FluxArguments):
    positional: ClassVar[tuple[str, ...]] = (
        *("prompt", "prompt_2", "negative_prompt", "negative_prompt_2", "true_cfg_scale"),
        *("image", "mask_image", "masked_image_latents", "height", "width"),
    )

    guidance_scale: float = 7.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_image()


class FluxPipeline(MMDiTPipeline):
    """diffusers' ``FluxPipeline`` on an engine package."""

    arguments = FluxArguments
    family_pipelines = FLUX_PIPELINES
    default_guidance = 3.5
    default_max_shift = 1.15
    packed = True

    def __init__(self, package, scheduler=None, limits=None):
        super().__init__(package, scheduler=scheduler, limits=limits)
        self.tokenizer = package.tokenizer("tokenizer")
        self.tokenizer_2 = self.t5_tokenizer("tokenizer_2")
        self.axes_dims = [int(d) for d in self.transformer_config.get("axes_dims_rope", (16, 56, 56))]
        self.guidance_embeds = bool(self.transformer_config.get("guidance_embeds", False))

    @property
    def embeds_guidance(self) -> bool:
        return True  # guidance_scale is the transformer's input (dev) or unused (schnell): never batched guidance

    def default_size(self) -> tuple[int, int]:
        side = 128 * self.vae_scale_factor  # diffusers' default_sample_size for Flux
        return side, side

    # ----- prompts ----------------------------------------------------------------------------------------------
    def encode_prompts(self, call: MMDiTCall, count: int) -> None:
        args, n = call.args, call.args.num_images_per_prompt
        if args.prompt_embeds is None:
            prompts = self.prompts(args, "prompt", None, count)
            prompts_2 = self.prompts(args, "prompt_2", args.prompt, count)
            embeds, pooled = self.encode_prompt(prompts, prompts_2, args, call.lora)
            call.embeds.update(prompt_embeds=self.repeat(embeds, n), pooled_prompt_embeds=self.repeat(pooled, n))
        else:
            call.embeds.update(
                prompt_embeds=np.asarray(args.prompt_embeds, np.float32),
                pooled_prompt_embeds=np.asarray(args.pooled_prompt_embeds, np.float32),
            )
        negative = args.negative_prompt is not None or (
            args.negative_prompt_embeds is not None and args.negative_pooled_prompt_embeds is not None
        )
        call.known["true_cfg"] = args.true_cfg_scale > 1 and negative
        if not call.known["true_cfg"]:
            return
        if args.negative_prompt_embeds is not None:
            call.embeds.update(
                negative_prompt_embeds=np.asarray(args.negative_prompt_embeds, np.float32),
                negative_pooled_prompt_embeds=np.asarray(args.negative_pooled_prompt_embeds, np.float32),
            )
            return
        negs = self.negatives(args.negative_prompt, "negative_prompt", count)
        negs_2 = self.negatives(
            args.negative_prompt_2 if args.negative_prompt_2 is not None else args.negative_prompt,
            "negative_prompt_2",
            count,
        )
        embeds, pooled = self.encode_prompt(negs, negs_2, args, call.lora)
        call.embeds.update(
            negative_prompt_embeds=self.repeat(embeds, n), negative_pooled_prompt_embeds=self.repeat(pooled, n)
        )

    def encode_prompt(
        self, prompt: list[str], prompt_2: list[str], args, lora=EMPTY_FEEDS
    ) -> tuple[np.ndarray, np.ndarray]:
        if len(prompt) != len(prompt_2):
            raise ConfigError(
                f"prompt and prompt_2 hold {len(prompt)} and {len(prompt_2)} prompts; accepted: the same count."
            )
        ids = self.tokenizer(prompt, max_length=CLIP_LENGTH).input_ids
        with self.timed("text_encoder"):
            pooled = self.text_encoder.run({"input_ids": ids, **lora.of("text_encoder")}, ["pooler_output"])
        pooled = pooled["pooler_output"]
        t5_ids = self.tokenizer_2(prompt_2, max_length=args.max_sequence_length).input_ids
        with self.timed("text_encoder_2"):
            embeds = self.text_encoder_2.run({"input_ids": t5_ids}, ["last_hidden_state"])["last_hidden_state"]
        return embeds, pooled

    # ----- steps ------------------------------------------------------------------------------------------------
    def latent_grid(self, call: MMDiTCall) -> tuple[int, int]:
        f = self.vae_scale_factor
        return 2 * (call.height // (f * 2)), 2 * (call.width // (f * 2))

    def pack(self, call: MMDiTCall, latents: np.ndarray) -> np.ndarray:
        return pack(latents)

    def spatial(self, call: MMDiTCall, latents: np.ndarray) -> np.ndarray:
        return unpack(latents, *self.latent_grid(call))

    def flux_sigmas(self, call: MMDiTCall) -> list[float] | None:
        if call.args.sigmas is not None:
            return list(call.args.sigmas)
        if getattr(call.scheduler.config, "use_flow_sigmas", False):
            return None
        n = call.args.num_inference_steps
        return list(np.linspace(1.0, 1 / n, n))

    def set_schedule(self, call: MMDiTCall, sigmas, mu) -> None:
        super().set_schedule(call, self.flux_sigmas(call), mu)

    def prepare(self, call: MMDiTCall) -> np.ndarray:
        self.set_schedule(call, None, self.schedule_mu(call, always=True))
        call.scheduler.set_begin_index(0)
        shape = self.latent_shape(call)
        if call.args.latents is not None:
            return self.given_latents(call, call.args.latents, pack(np.zeros(shape, np.float32)).shape)
        return pack(randn(shape, call.generator))

    def rotary(self, call: MMDiTCall) -> dict[str, np.ndarray]:
        if "rotary_cos" not in call.known:
            rows, cols = (s // 2 for s in self.latent_grid(call))
            text = np.zeros((call.embeds["prompt_embeds"].shape[1], 3), np.float32)
            cos, sin = rotary_tables(np.concatenate([text, image_ids(rows, cols)]), self.axes_dims)
            call.known.update(rotary_cos=cos, rotary_sin=sin)
        return {"rotary_cos": call.known["rotary_cos"], "rotary_sin": call.known["rotary_sin"]}

    def run_transformer(self, call: MMDiTCall, latents, embeds, pooled, t) -> np.ndarray:
        batch = latents.shape[0]
        feeds = {
            "hidden_states": latents,
            "encoder_hidden_states": embeds,
            "pooled_projections": pooled,
            "timestep": np.full(batch, t, dtype=np.float32) / np.float32(1000),
            **self.rotary(call),
            **call.lora.of("transformer"),
        }
        if self.guidance_embeds:
            feeds["guidance"] = np.full(batch, call.state.guidance_scale, dtype=np.float32)
        return self.transformer.run(feeds, ["noise_pred"])["noise_pred"]

    def predict(self, call: MMDiTCall, latents: np.ndarray, t: Any, i: int) -> np.ndarray:
        e = call.embeds
        noise = self.run_transformer(call, latents, e["prompt_embeds"], e["pooled_prompt_embeds"], t)
        if call.known.get("true_cfg"):
            negative = self.run_transformer(
                call, latents, e["negative_prompt_embeds"], e["negative_pooled_prompt_embeds"], t
            )
            noise = negative + call.args.true_cfg_scale * (noise - negative)
        return noise.astype(np.float32)


class FluxImg2ImgPipeline(ImageTask, FluxPipeline):
    """diffusers' ``FluxImg2ImgPipeline`` on an engine package."""

    arguments = FluxImg2ImgArguments

    def pack(self, call: MMDiTCall, latents: np.ndarray) -> np.ndarray:
        return pack(latents)


class FluxInpaintPipeline(InpaintTask, FluxPipeline):
    """diffusers' ``FluxInpaintPipeline`` on an engine package."""

    arguments = FluxInpaintArguments

    def pack(self, call: MMDiTCall, latents: np.ndarray) -> np.ndarray:
        return pack(latents)

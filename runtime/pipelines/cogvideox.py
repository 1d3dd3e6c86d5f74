"""CogVideoX text-to-video, image-to-video and video-to-video over an engine package, torch-free.

The package holds four graphs: ``text_encoder`` (T5: ``input_ids`` -> ``last_hidden_state``), ``transformer``
(the denoiser: latents (B, F, C, h, w) with text, timestep and positions -> noise prediction), and the causal 3D
VAE as two *step* graphs, ``vae_encoder`` and ``vae_decoder``, that take and return the convolution cache between
frame batches (:mod:`~diffrt.runtime.pipelines.cogvideox_vae`). Positions (rotary tables or sin-cos embeddings) are
computed here in NumPy (:mod:`~diffrt.runtime.pipelines.cogvideox_positions`), as diffusers' pipelines compute them.

Arguments, defaults, noise draws and the denoising loop follow diffusers' ``CogVideoXPipeline``,
``CogVideoXImageToVideoPipeline`` and ``CogVideoXVideoToVideoPipeline`` (dynamic guidance, the DPM scheduler's
carried x0, CogVideoX 1.5's frame padding and ``ofs``), so one seed gives diffusers' frames. Where diffusers'
text-to-video pipeline ignores ``num_videos_per_prompt`` (it sets it to 1), diffrt honours it.

Memory: ``stage_memory="low"`` creates each graph's session when its stage starts and releases it when it ends,
so peak memory is the largest stage rather than the sum; ``pipe.vae.enable_tiling()`` / ``enable_slicing()``
decode in overlapping tiles / one video at a time, with diffusers' blending, so the decode's memory does not grow
with the frame count or the image size.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import PIL.Image

from ..adapters import EMPTY_FEEDS, AdapterFeeds
from ..engines import Engine, SessionSettings, load_engine
from ..errors import ConfigError, NonFiniteError, PackageError
from ..image_processor import VaeImageProcessor
from ..package import EnginePackage
from ..schedulers import CogVideoXDPMScheduler, Scheduler
from ..schedulers.base import as_generator, randn
from ..schema import LEARNED_POSITIONS
from ..t5_tokenizer import T5Tokenizer
from .arguments import CallArguments, Prompt, StepCallback, check_adapters, check_callback, check_int, check_number
from .base import DiffusionPipeline
from .call import CallScope, CallSettings, CallState
from .cogvideox_positions import rotary_embeddings, sincos_pos_embedding, uses_learned_table
from .cogvideox_vae import VideoVae
from .inputs import Limits
from .lora import LoraLoaderMixin
from .stable_diffusion import _step_kwargs, negative_prompts, prompt_list

STAGE_MEMORY = ("high", "low")


@dataclass
class CogVideoXPipelineOutput:
    """``frames``: per video a list of PIL images, a (B, F, H, W, 3) float array in [0, 1], or the latents
    (B, F, C, h, w), per ``output_type``."""

    frames: Any


# ----- arguments ------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class VideoArguments(CallArguments):
    """What a CogVideoX call takes, with diffusers' defaults; ``height`` / ``width`` / ``num_frames`` default to
    the transformer's sample size."""

    positional: ClassVar[tuple[str, ...]] = ("prompt", "negative_prompt", "height", "width", "num_frames")

    prompt: Prompt = None
    negative_prompt: Prompt = None
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    timesteps: Sequence[float] | None = None
    guidance_scale: float = 6.0
    use_dynamic_cfg: bool = False
    num_videos_per_prompt: int = 1
    eta: float = 0.0
    latents: np.ndarray | None = None
    """(B, F, C, h, w) initial noise (text/image-to-video) or starting latents (video-to-video)."""
    prompt_embeds: np.ndarray | None = None
    negative_prompt_embeds: np.ndarray | None = None
    callback_on_step_end: StepCallback | None = None
    callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",)
    max_sequence_length: int | None = None
    """Text tokens the prompts are padded to: diffusers' default is 226; None takes the transformer's
    ``max_text_seq_length`` (226 for every released CogVideoX; a 2B-style transformer fits no other length)."""
    adapters: Mapping[str, Any] | None = None
    """LoRA adapters for this call alone, ``{name: weight}`` (``{}``: none), on a package exported with
    ``--lora-slots``; None runs the pipeline's active set (``set_adapters``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.adapters = check_adapters(self.adapters)
        for name in ("height", "width", "num_frames"):
            if getattr(self, name) is not None:
                setattr(self, name, check_int(name, getattr(self, name)))
        self.guidance_scale = check_number("guidance_scale", self.guidance_scale)
        self.eta = check_number("eta", self.eta, 0.0, 1.0)
        self.num_videos_per_prompt = check_int("num_videos_per_prompt", self.num_videos_per_prompt)
        if self.max_sequence_length is not None:
            self.max_sequence_length = check_int("max_sequence_length", self.max_sequence_length)
        if not isinstance(self.use_dynamic_cfg, (bool, np.bool_)):
            raise ConfigError(f"use_dynamic_cfg={self.use_dynamic_cfg!r} is not supported; accepted: True or False.")
        self.callback_on_step_end_tensor_inputs = check_callback(
            self.callback_on_step_end, self.callback_on_step_end_tensor_inputs
        )
        unknown = set(self.callback_on_step_end_tensor_inputs) - set(CALLBACK_TENSORS)
        if unknown:
            raise ConfigError(
                f"callback_on_step_end_tensor_inputs names {sorted(unknown)}; accepted: {', '.join(CALLBACK_TENSORS)}."
            )
        if self.timesteps is not None:
            self.timesteps = [check_number("timesteps", t) for t in self.timesteps]


CALLBACK_TENSORS = ("latents", "prompt_embeds", "negative_prompt_embeds")


@dataclass(kw_only=True)
class ImageToVideoArguments(VideoArguments):
    """``image``: the first frame (a PIL image, a (H, W, 3) array in [0, 1], or a list of them, one per prompt)."""

    positional: ClassVar[tuple[str, ...]] = ("image", "prompt", "negative_prompt", "height", "width", "num_frames")

    image: Any = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image is None:
            raise ConfigError("image is required for image-to-video; accepted: a PIL image or a list of them.")


@dataclass(kw_only=True)
class VideoToVideoArguments(VideoArguments):
    """``video``: the frames to start from (a list of PIL images, or a list of such lists, one per prompt);
    ``strength``: how much of the schedule runs (1: all of it, the video only sets the noise's mean)."""

    positional: ClassVar[tuple[str, ...]] = ("video", "prompt", "negative_prompt", "height", "width")

    video: Any = None
    strength: float = 0.8

    def __post_init__(self) -> None:
        super().__post_init__()
        self.strength = check_number("strength", self.strength, 0.0, 1.0)
        if self.video is None and self.latents is None:
            raise ConfigError("video is required for video-to-video; accepted: a list of PIL images (the frames).")


# ----- the call's state -----------------------------------------------------------------------------------------
@dataclass
class VideoCall:
    """One call's working set: its arguments, scheduler copy, noise stream, size and encoded prompts."""

    args: VideoArguments
    scheduler: Scheduler
    generator: np.random.Generator
    batch: int
    height: int
    width: int
    num_frames: int
    state: CallState
    """What callbacks read and set through the pipeline (``pipe.guidance_scale``, ``pipe._interrupt``)."""
    prompt_embeds: np.ndarray | None = None  # (batch, tokens, hidden)
    negative_prompt_embeds: np.ndarray | None = None
    timesteps: np.ndarray | None = None
    steps: int = 0
    """The step count dynamic guidance divides by (after video-to-video's strength cut)."""
    extra_frames: int = 0
    """Latent frames CogVideoX 1.5 added in front to fill its temporal patches, dropped before decoding."""
    lora: AdapterFeeds = EMPTY_FEEDS
    """The LoRA factors this call feeds the transformer (its adapter set, fixed when it starts)."""
    text_length: int = 226
    """Tokens each prompt is padded to (``max_sequence_length``)."""

    @property
    def guided(self) -> bool:
        return self.args.guidance_scale > 1.0


class _Stages:
    """The graphs of a package, either shared (created once, kept) or created per stage and released after it."""

    def __init__(self, package: EnginePackage, low_memory: bool) -> None:
        self.package = package
        self.low_memory = low_memory

    @contextlib.contextmanager
    def use(self, network: str) -> Iterator[Engine]:
        if not self.low_memory:
            yield self.package.engine(network)
            return
        engine = load_engine(
            self.package.path / network,
            provider=self.package.provider,
            settings=self.package.settings_for(network),
            name=network,
        )
        try:
            yield engine
        finally:
            del engine


# ----- the pipelines --------------------------------------------------------------------------------------------
class CogVideoXPipeline(CallSettings, LoraLoaderMixin, DiffusionPipeline):
    """Text-to-video: ``pipe(prompt, num_frames=49, height=480, width=720).frames``."""

    arguments: ClassVar[type[CallArguments]] = VideoArguments
    video_networks: ClassVar[tuple[str, ...]] = ("text_encoder", "transformer", "vae_decoder")

    def __init__(
        self,
        package: EnginePackage,
        scheduler: Scheduler | None = None,
        limits: Limits | None = None,
        stage_memory: str = "high",
    ):
        if stage_memory not in STAGE_MEMORY:
            raise ConfigError(f"stage_memory={stage_memory!r} is not supported; accepted: 'high' or 'low'.")
        package.require(self.video_networks, type(self).__name__)
        super().__init__(package, scheduler=scheduler, limits=limits)
        self.stage_memory = stage_memory
        self.stages = _Stages(package, low_memory=stage_memory == "low")
        self.transformer_config = package.config("transformer")
        # ``pipe.vae``: diffusers' switches (enable_tiling / enable_slicing ...) for every later call; each call runs
        # a copy of it with its own step engines.
        self.vae = VideoVae(package.config("vae_decoder") or package.config("vae_encoder"))
        self.vae_scaling_factor = float(self.vae.config.get("scaling_factor", 1.15258426))
        self.vae_scale_factor_spatial = 2 ** (len(self.vae.config.get("block_out_channels", (0,) * 4)) - 1)
        self.vae_scale_factor_temporal = int(self.vae.config.get("temporal_compression_ratio", 4))
        self.video_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor_spatial)
        self.tokenizer = T5Tokenizer.from_pretrained(package.path, subfolder="tokenizer")
        self._calls = CallScope(CallState(6.0))
        self.check_transformer()

    image_conditioned: ClassVar[bool] = False
    """Whether the transformer takes the image's latents beside the noise (twice the latent channels)."""

    def check_transformer(self) -> None:
        """Refuse a package whose transformer this pipeline cannot drive (an image-to-video one under text-to-video,
        or the reverse), naming the pipeline that can."""
        latent = int(self.vae.config.get("latent_channels", 16))
        takes = int(self.transformer_config.get("in_channels", latent))
        wants = 2 * latent if self.image_conditioned else latent
        if takes != wants:
            other = (
                "CogVideoXPipeline or CogVideoXVideoToVideoPipeline"
                if takes == latent
                else ("CogVideoXImageToVideoPipeline")
            )
            raise ConfigError(
                f"the package's transformer takes {takes} input channels, but {type(self).__name__} drives one of "
                f"{wants} ({latent} latent channels{' plus the image' if self.image_conditioned else ''}); use "
                f"{other} for this package."
            )

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        path: str | os.PathLike,
        provider: str = "auto",
        session_settings: SessionSettings | None = None,
        scheduler: Scheduler | None = None,
        limits: Limits | None = None,
        stage_memory: str = "high",
    ) -> CogVideoXPipeline:
        """Open a CogVideoX engine package; ``stage_memory="low"`` keeps one graph's session alive at a time."""
        package = EnginePackage(path, provider=provider, session_settings=session_settings)
        return cls(package, scheduler=scheduler, limits=limits, stage_memory=stage_memory)

    @classmethod
    def from_pipe(cls, pipe: DiffusionPipeline, scheduler: Scheduler | None = None) -> CogVideoXPipeline:
        if not isinstance(pipe, CogVideoXPipeline):
            raise ConfigError(f"pipe={type(pipe).__name__} is not supported; accepted: a diffrt CogVideoX pipeline.")
        scheduler = scheduler if scheduler is not None else pipe.scheduler
        made = cls(pipe.package, scheduler=scheduler, limits=pipe.limits, stage_memory=pipe.stage_memory)
        made.vae = pipe.vae
        return made

    @property
    def components(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler, "tokenizer": self.tokenizer, "vae": self.vae}

    # ----- one call ---------------------------------------------------------------------------------------------
    def generate(self, args: VideoArguments) -> CogVideoXPipelineOutput:
        """Generate videos (diffusers' arguments; see the argument class)."""
        call = self.start(args)
        latents, conditioning = self.prepare(call)
        latents = self.denoise(call, latents, conditioning)
        return self.finish(call, latents)

    def start(self, args: VideoArguments) -> VideoCall:
        config = self.transformer_config
        height = args.height or config.get("sample_height", 60) * self.vae_scale_factor_spatial
        width = args.width or config.get("sample_width", 90) * self.vae_scale_factor_spatial
        step = self.vae_scale_factor_spatial * config.get("patch_size", 2)
        if height % step or width % step:
            raise ConfigError(
                f"height={height} and width={width} are not supported; accepted: multiples of {step} (the VAE's "
                f"{self.vae_scale_factor_spatial}x times the transformer's patch size {config.get('patch_size', 2)})."
            )
        self.limits.check_size(height, width, "the package's shape range")
        frames = args.num_frames or config.get("sample_frames", 49)
        prompts = self.prompt_count(args)
        batch = prompts * args.num_videos_per_prompt
        self.limits.check_batch(batch, "the package's batch range")
        state = CallState(args.guidance_scale)
        self._calls.use(state)
        call = VideoCall(
            args, copy.deepcopy(self.scheduler), as_generator(args.generator), batch, height, width, frames, state
        )
        call.lora = self.adapter_feeds(args.adapters)
        call.text_length = args.max_sequence_length or int(config.get("max_text_seq_length", 226))
        self.encode_prompts(call, prompts)
        return call

    def prompt_count(self, args: VideoArguments) -> int:
        if args.prompt is not None and args.prompt_embeds is not None:
            raise ConfigError("prompt and prompt_embeds were both given; accepted: one of them.")
        if args.prompt is None and args.prompt_embeds is None:
            raise ConfigError("no prompt was given; accepted: prompt (a string or a list) or prompt_embeds.")
        if args.prompt is not None:
            return len(prompt_list("prompt", args.prompt))
        return int(np.asarray(args.prompt_embeds).shape[0])

    def encode_prompts(self, call: VideoCall, prompts: int) -> None:
        args = call.args
        n = args.num_videos_per_prompt
        with self.stages.use("text_encoder") as encoder:
            if args.prompt_embeds is not None:
                positive = _embeds("prompt_embeds", args.prompt_embeds)
            else:
                positive = self.encode_text(encoder, prompt_list("prompt", args.prompt), call.text_length)
            negative = None
            if call.guided:
                if args.negative_prompt_embeds is not None:
                    negative = _embeds("negative_prompt_embeds", args.negative_prompt_embeds)
                else:
                    texts = negative_prompts("negative_prompt", args.negative_prompt or "", prompts)
                    negative = self.encode_text(encoder, texts, call.text_length)
                if negative.shape != positive.shape:
                    raise ConfigError(
                        f"negative_prompt_embeds has shape {negative.shape}; accepted: prompt_embeds' {positive.shape}."
                    )
        call.prompt_embeds = np.repeat(positive, n, axis=0)
        call.negative_prompt_embeds = None if negative is None else np.repeat(negative, n, axis=0)

    def encode_text(self, encoder: Engine, texts: list[str], max_length: int) -> np.ndarray:
        ids = self.tokenizer(texts, max_length=max_length).input_ids
        with self.timed("text_encoder"):
            return encoder.run({"input_ids": ids}, ["last_hidden_state"])["last_hidden_state"].astype(np.float32)

    # ----- latents ----------------------------------------------------------------------------------------------
    def latent_frames(self, num_frames: int) -> int:
        return (num_frames - 1) // self.vae_scale_factor_temporal + 1

    def padded_frames(self, call: VideoCall) -> tuple[int, int]:
        """CogVideoX 1.5 (``patch_size_t``) pads the latent frames to a multiple of it: (frames, padding)."""
        frames = self.latent_frames(call.num_frames)
        p_t = self.transformer_config.get("patch_size_t")
        extra = (p_t - frames % p_t) if p_t and frames % p_t else 0
        return frames, extra

    def latent_shape(self, call: VideoCall, frames: int, channels: int) -> tuple[int, ...]:
        f = self.vae_scale_factor_spatial
        return (call.batch, frames, channels, call.height // f, call.width // f)

    def prepare(self, call: VideoCall) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Text-to-video's start: fresh noise (or ``latents``) times the scheduler's initial sigma."""
        self.set_schedule(call)
        frames, extra = self.padded_frames(call)
        call.extra_frames = extra
        shape = self.latent_shape(call, frames + extra, self.transformer_config.get("in_channels", 16))
        return self.initial_noise(call, shape), {}

    def initial_noise(self, call: VideoCall, shape: tuple[int, ...]) -> np.ndarray:
        if call.args.latents is None:
            latents = randn(shape, call.generator)
        else:
            latents = np.asarray(call.args.latents, dtype=np.float32)
            if latents.shape != shape:
                raise ConfigError(f"latents has shape {latents.shape}; accepted: {shape} (batch, frames, C, h, w).")
        return (latents * call.scheduler.init_noise_sigma).astype(np.float32)

    def set_schedule(self, call: VideoCall) -> None:
        args = call.args
        if args.timesteps is not None:
            call.scheduler.set_timesteps(timesteps=args.timesteps)
            call.steps = len(call.scheduler.timesteps)
        else:
            call.scheduler.set_timesteps(args.num_inference_steps)
            call.steps = args.num_inference_steps
        call.timesteps = np.asarray(call.scheduler.timesteps)
        call.state.num_timesteps = len(call.timesteps)

    # ----- denoising --------------------------------------------------------------------------------------------
    def positions(self, call: VideoCall, frames: int, transformer: Engine) -> dict[str, np.ndarray]:
        """The transformer's position inputs for ``frames`` latent frames at the call's size."""
        config = self.transformer_config
        f = self.vae_scale_factor_spatial
        h, w = call.height // f, call.width // f
        text = call.prompt_embeds.shape[1]
        width = config.get("num_attention_heads", 30) * config.get("attention_head_dim", 64)
        feeds: dict[str, np.ndarray] = {}
        if "rotary_cos" in transformer.inputs:
            cos, sin = rotary_embeddings(config, frames, h, w, f)
            feeds["rotary_cos"], feeds["rotary_sin"] = cos, sin
        learned = "pos_embedding" in transformer.inputs and uses_learned_table(config, frames, h, w)
        rows = int(config.get("max_text_seq_length", 226))
        if (
            "pos_embedding" in transformer.inputs
            and not config.get("use_rotary_positional_embeddings")
            and text != rows
        ):
            raise ConfigError(  # diffusers fails here too: its sin-cos table has exactly that many text rows
                f"max_sequence_length={text} does not fit this transformer's sin-cos positions; accepted: {rows} "
                "(its max_text_seq_length)."
            )
        if "pos_embedding" in transformer.inputs:
            feeds["pos_embedding"] = (
                self.learned_positions(text)[1] if learned else sincos_pos_embedding(config, frames, h, w)
            )
        if "text_pos_embedding" in transformer.inputs:
            rows = self.learned_positions(text)[0] if learned else None
            feeds["text_pos_embedding"] = rows if rows is not None else np.zeros((1, text, width), np.float32)
        return feeds

    def learned_positions(self, text: int) -> tuple[np.ndarray, np.ndarray]:
        """The learned joint table split into (text rows, image rows); ``text`` must be the table's text length,
        as diffusers adds the joint table to the joint sequence."""
        path = self.package.path / "transformer" / LEARNED_POSITIONS
        if not path.is_file():
            raise PackageError(f"engine package {str(self.package.path)!r} has no transformer/{LEARNED_POSITIONS}.")
        table = np.load(path, allow_pickle=False).astype(np.float32)
        rows = self.transformer_config.get("max_text_seq_length", 226)
        if text != rows:
            raise ConfigError(
                f"max_sequence_length={text} does not fit this transformer's learned positions; accepted: {rows} "
                "(its max_text_seq_length)."
            )
        return table[:, :rows], table[:, rows:]

    def denoise(self, call: VideoCall, latents: np.ndarray, conditioning: dict[str, np.ndarray]) -> np.ndarray:
        args = call.args
        scheduler = call.scheduler
        timesteps = call.timesteps
        steps = call.steps
        dpm = isinstance(scheduler, CogVideoXDPMScheduler)
        step_kwargs = _step_kwargs(scheduler, call.generator, args.eta)
        embeds = (
            np.concatenate([call.negative_prompt_embeds, call.prompt_embeds]) if call.guided else call.prompt_embeds
        )
        old_x0 = None
        with self.stages.use("transformer") as transformer, self.progress_bar(total=len(timesteps)) as bar:
            fixed = self.positions(call, latents.shape[1], transformer)
            if "ofs" in transformer.inputs:
                fixed["ofs"] = np.full((embeds.shape[0],), 2.0, dtype=np.float32)
            for i, t in enumerate(timesteps):
                if call.state.interrupt:
                    continue
                model_input = np.concatenate([latents] * 2) if call.guided else latents
                model_input = scheduler.scale_model_input(model_input, t)
                if "image_latents" in conditioning:
                    image = conditioning["image_latents"]
                    image = np.concatenate([image] * 2) if call.guided else image
                    model_input = np.concatenate([model_input, image], axis=2)
                feeds = {
                    "hidden_states": model_input.astype(np.float32),
                    "encoder_hidden_states": embeds,
                    "timestep": np.full((model_input.shape[0],), t, dtype=np.float32),
                    **fixed,
                    **call.lora.of("transformer"),
                }
                with self.timed("transformer"):
                    noise = transformer.run(feeds, ["noise_pred"])["noise_pred"].astype(np.float32)
                if args.use_dynamic_cfg:
                    phase = ((steps - float(t)) / steps) ** 5.0
                    call.state.guidance_scale = 1 + args.guidance_scale * ((1 - math.cos(math.pi * phase)) / 2)
                if call.guided:
                    uncond, text = np.split(noise, 2)
                    noise = uncond + np.float32(call.state.guidance_scale) * (text - uncond)
                if dpm:
                    back = timesteps[i - 1] if i > 0 else None
                    out = scheduler.step(noise, old_x0, t, back, latents, **step_kwargs)
                    latents, old_x0 = out.prev_sample, out.pred_original_sample
                else:
                    latents = scheduler.step(noise, t, latents, **step_kwargs).prev_sample
                latents = np.asarray(latents, dtype=np.float32)
                if not np.isfinite(latents).all():
                    raise NonFiniteError(
                        f"the latents turned non-finite (NaN or infinity) at step {i + 1} of {len(timesteps)}; the "
                        "transformer overflows at this precision: run it in fp32 or re-export the package."
                    )
                if args.callback_on_step_end is not None:
                    latents, call.prompt_embeds, call.negative_prompt_embeds = self.callback(
                        call, i, t, latents, embeds
                    )
                bar.update()
        return latents

    def callback(self, call: VideoCall, i: int, t: Any, latents: np.ndarray, embeds: np.ndarray):
        tensors = {"latents": latents, "prompt_embeds": embeds, "negative_prompt_embeds": call.negative_prompt_embeds}
        given = {k: tensors[k] for k in call.args.callback_on_step_end_tensor_inputs}
        out = call.args.callback_on_step_end(self, i, t, given)
        if out is not None and not isinstance(out, dict):
            raise ConfigError(
                f"callback_on_step_end returned {type(out).__name__}; accepted: None or a dict of tensors by name."
            )
        out = out or {}
        latents = np.asarray(out.get("latents", latents), dtype=np.float32)
        return latents, call.prompt_embeds, call.negative_prompt_embeds

    # ----- decoding ---------------------------------------------------------------------------------------------
    def finish(self, call: VideoCall, latents: np.ndarray) -> CogVideoXPipelineOutput:
        if call.args.output_type == "latent":
            return CogVideoXPipelineOutput(frames=latents)
        latents = latents[:, call.extra_frames :]
        video = self.decode_latents(latents)
        return CogVideoXPipelineOutput(frames=self.postprocess_video(video, call.args.output_type))

    def decode_latents(self, latents: np.ndarray) -> np.ndarray:
        """(B, F, C, h, w) diffusion latents -> (B, 3, frames, H, W) pixels in about [-1, 1]."""
        z = np.ascontiguousarray(latents.transpose(0, 2, 1, 3, 4)) / np.float32(self.vae_scaling_factor)
        with self.stages.use("vae_decoder") as decoder, self.timed("vae_decoder"):
            vae = self.video_vae(decoder=decoder)
            video = vae.decode(z.astype(np.float32))
        if not np.isfinite(video).all():
            raise NonFiniteError(
                "the VAE decoder gave non-finite pixels (NaN or infinity) from finite latents; it overflows at this "
                "precision: run it in fp32 (SessionSettings(precision='fp32'))."
            )
        return video

    def video_vae(self, decoder: Engine | None = None, encoder: Engine | None = None) -> VideoVae:
        """``pipe.vae`` with its settings as they are now, running these engines."""
        vae = copy.copy(self.vae)
        vae.decode_step = None if decoder is None else _runner(decoder)
        vae.encode_step = None if encoder is None else _runner(encoder)
        return vae

    def postprocess_video(self, video: np.ndarray, output_type: str) -> Any:
        frames = np.clip(video / 2 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 4, 1)  # (B, F, H, W, 3)
        if output_type == "np":
            return frames.astype(np.float32)
        return [VaeImageProcessor.numpy_to_pil(v) for v in frames]

    # ----- shared by image- and video-to-video ------------------------------------------------------------------
    def posterior(self, pixels: np.ndarray, generator: np.random.Generator) -> np.ndarray:
        """A draw from the VAE posterior of one video (1, 3, F, H, W) in [-1, 1]: (1, C, f, h, w), unscaled."""
        with self.stages.use("vae_encoder") as encoder, self.timed("vae_encoder"):
            params = self.video_vae(encoder=encoder).encode(pixels.astype(np.float32))
        mean, logvar = np.split(params, 2, axis=1)
        std = np.exp(0.5 * np.clip(logvar, -30.0, 20.0))
        return (mean + std * randn(mean.shape, generator)).astype(np.float32)


class CogVideoXImageToVideoPipeline(CogVideoXPipeline):
    """Image-to-video: the image's latents, padded with zero frames, ride beside the noise on the channel axis."""

    arguments: ClassVar[type[CallArguments]] = ImageToVideoArguments
    video_networks: ClassVar[tuple[str, ...]] = ("text_encoder", "transformer", "vae_encoder", "vae_decoder")
    image_conditioned: ClassVar[bool] = True

    def prepare(self, call: VideoCall) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        args: ImageToVideoArguments = call.args  # type: ignore[assignment]
        self.set_schedule(call)
        frames, extra = self.padded_frames(call)
        call.extra_frames = extra
        channels = self.transformer_config.get("in_channels", 32) // 2
        images = self.video_processor.preprocess(args.image, height=call.height, width=call.width)
        prompts = call.batch // args.num_videos_per_prompt
        if images.shape[0] not in (1, prompts, call.batch):
            raise ConfigError(f"image holds {images.shape[0]} images; accepted: one, or one per prompt ({prompts}).")
        if images.shape[0] != call.batch:
            images = np.repeat(images, call.batch // images.shape[0], axis=0)
        p_t = self.transformer_config.get("patch_size_t")
        frames += extra  # diffusers pads the frame count before it makes the latents
        shape = self.latent_shape(call, frames, channels)
        if p_t:
            shape = (shape[0], shape[1] + shape[1] % p_t, *shape[2:])  # diffusers' padding rule, kept as written
        image_latents = np.concatenate(
            [self.posterior(img[None, :, None], call.generator) for img in images]
        ).transpose(0, 2, 1, 3, 4)  # (B, 1, C, h, w)
        scale = self.vae_scaling_factor
        image_latents = image_latents / scale if self.vae.config.get("invert_scale_latents") else scale * image_latents
        padding = np.zeros((call.batch, frames - 1, *image_latents.shape[2:]), dtype=np.float32)
        image_latents = np.concatenate([image_latents.astype(np.float32), padding], axis=1)
        if p_t:
            first = image_latents[:, : image_latents.shape[1] % p_t]
            image_latents = np.concatenate([first, image_latents], axis=1)
        latents = self.initial_noise(call, shape)
        return latents, {"image_latents": image_latents.astype(np.float32)}


class CogVideoXVideoToVideoPipeline(CogVideoXPipeline):
    """Video-to-video: the video's latents, noised to the schedule's first timestep of the last ``strength``."""

    arguments: ClassVar[type[CallArguments]] = VideoToVideoArguments
    video_networks: ClassVar[tuple[str, ...]] = ("text_encoder", "transformer", "vae_encoder", "vae_decoder")

    def prepare(self, call: VideoCall) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        args: VideoToVideoArguments = call.args  # type: ignore[assignment]
        self.set_schedule(call)
        steps = call.steps
        start = max(steps - min(int(steps * args.strength), steps), 0)
        call.timesteps = call.timesteps[start * call.scheduler.order :]
        call.steps = steps - start
        call.state.num_timesteps = len(call.timesteps)
        if len(call.timesteps) == 0:
            raise ConfigError(
                f"strength={args.strength} with {steps} inference steps leaves no denoising step; "
                "accepted: strength * num_inference_steps >= 1."
            )
        channels = self.transformer_config.get("in_channels", 16)
        if args.latents is not None:
            return (np.asarray(args.latents, dtype=np.float32) * call.scheduler.init_noise_sigma), {}
        videos = self.preprocess_videos(args.video, call)
        call.num_frames = videos.shape[2]
        frames = self.latent_frames(call.num_frames)
        p_t = self.transformer_config.get("patch_size_t")
        if p_t and frames % p_t:
            raise ConfigError(
                f"video has {call.num_frames} frames, {frames} latent frames; accepted: a latent frame count divisible "
                f"by the transformer's patch_size_t ({p_t})."
            )
        scale = np.float32(self.vae_scaling_factor)
        init = np.concatenate([self.posterior(v[None], call.generator) for v in videos])
        init = scale * init.transpose(0, 2, 1, 3, 4)
        shape = self.latent_shape(call, frames, channels)
        noise = randn(shape, call.generator)
        first = np.repeat(call.timesteps[:1], call.batch)
        latents = call.scheduler.add_noise(init.astype(np.float32), noise, first)
        return (np.asarray(latents, dtype=np.float32) * call.scheduler.init_noise_sigma), {}

    def preprocess_videos(self, video: Any, call: VideoCall) -> np.ndarray:
        """(B, 3, F, H, W) in [-1, 1] from a list of frames (one video) or a list of such lists."""
        if isinstance(video, np.ndarray):
            videos = [video] if video.ndim == 4 else list(video)
        elif isinstance(video, (list, tuple)) and video and isinstance(video[0], (list, tuple, np.ndarray)):
            videos = list(video)
        elif isinstance(video, (list, tuple)) and video and isinstance(video[0], PIL.Image.Image):
            videos = [video]
        else:
            raise ConfigError(
                f"video={type(video).__name__} is not supported; accepted: a list of PIL images (one video), a list "
                "of such lists, or a (F, H, W, 3) / (B, F, H, W, 3) array in [0, 1]."
            )
        out = []
        for frames in videos:
            pixels = self.video_processor.preprocess(list(frames), height=call.height, width=call.width)
            out.append(pixels.transpose(1, 0, 2, 3))  # (3, F, H, W)
        stacked = np.stack(out).astype(np.float32)
        if stacked.shape[0] not in (1, call.batch):
            raise ConfigError(
                f"video holds {stacked.shape[0]} videos; accepted: one, or one per prompt ({call.batch})."
            )
        return np.repeat(stacked, call.batch // stacked.shape[0], axis=0)


# ----- helpers ----------------------------------------------------------------------------------------------------
def _runner(engine: Engine):
    return lambda feeds: engine.run(feeds)


def _embeds(name: str, value: Any) -> np.ndarray:
    embeds = np.asarray(value, dtype=np.float32)
    if embeds.ndim != 3 or not np.isfinite(embeds).all():
        raise ConfigError(f"{name} has shape {embeds.shape}; accepted: finite (batch, tokens, hidden) embeddings.")
    return embeds

"""Shape contracts of the networks in an engine package, each declared once.

A :class:`Network` names its inputs and outputs with their dtypes and symbolic shapes. Export reads it for
``input_names`` / ``output_names`` / ``dynamic_axes`` and sample inputs; a TensorRT build reads its min/opt/max
profile; the runtime reads the concrete shapes it will allocate. Nothing else in diffrt restates a shape.

Symbolic dimensions are strings resolved by :meth:`Network.dims`: ``batch``, ``height``/``width`` (pixels),
``latent_height``/``latent_width`` (pixels divided by the VAE scale factor) and ``sequence`` (text tokens). Video
networks add their own (``latent_frames``, ``tokens``, a cache's ``latent_height*4``): given to ``dims`` as keyword
arguments or derived from the others by the network's ``derive`` function; a name ``d*k`` or ``d/k`` is the
dimension ``d`` scaled by the integer ``k``.
Everything here is NumPy only: the runtime imports it without torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np

from .errors import ConfigError

Dim = int | str


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: its name, NumPy dtype name and shape (ints and symbolic dimension names)."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def resolve(self, dims: dict[str, int]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else resolve_dim(d, dims) for d in self.shape)


def resolve_dim(name: str, dims: dict[str, int]) -> int:
    """The value of symbolic dimension ``name``: a key of ``dims``, or ``d*k`` / ``d/k`` of one."""
    if name in dims:
        return dims[name]
    for op in ("*", "/"):
        base, sep, factor = name.rpartition(op)
        if sep and factor.isdigit() and base in dims:
            return dims[base] * int(factor) if op == "*" else dims[base] // int(factor)
    raise KeyError(name)


@dataclass(frozen=True)
class ShapeRange:
    """The images a package is built for: (min, opt, max) of batch and of pixel height and width.

    ``batch`` counts images per call of a network; the UNet of a guided pipeline sees twice as many, which
    :meth:`Network.profile` accounts for. A static package has min == opt == max.
    """

    batch: tuple[int, int, int] = (1, 1, 4)
    height: tuple[int, int, int] = (256, 512, 1024)
    width: tuple[int, int, int] = (256, 512, 1024)

    def __post_init__(self) -> None:
        for name in ("batch", "height", "width"):
            lo, opt, hi = getattr(self, name)
            if not 0 < lo <= opt <= hi:
                raise ConfigError(f"{name} range {(lo, opt, hi)} must satisfy 0 < min <= opt <= max.")

    @property
    def static_size(self) -> bool:
        return self.height[0] == self.height[2] and self.width[0] == self.width[2]

    @classmethod
    def around(cls, height: int, width: int, batch: int = 4, static: bool = False) -> ShapeRange:
        """A range centred on one size: half to twice it (or exactly it when ``static``)."""
        if static:
            return cls(batch=(1, batch, batch), height=(height,) * 3, width=(width,) * 3)
        return cls(batch=(1, 1, batch), height=(height // 2, height, height * 2), width=(width // 2, width, width * 2))

    def to_json(self) -> dict[str, list[int]]:
        return {"batch": list(self.batch), "height": list(self.height), "width": list(self.width)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShapeRange:
        return cls(**{k: tuple(int(v) for v in data[k]) for k in ("batch", "height", "width")})


@dataclass(frozen=True)
class Network:
    """The shape contract of one network of a package (one ONNX graph, one TensorRT engine)."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    scale_factor: int = 1
    """Pixels per latent cell (the VAE's scale factor); 1 for networks that work in pixels."""
    sequence_length: int = 77
    batch_multiplier: int = 1
    """Calls see ``batch_multiplier`` x images (2 for a UNet under classifier-free guidance)."""
    fixed_dims: dict[str, int] = field(default_factory=dict)
    """Dimensions the graph fixes whatever the image size (a depth estimator's input resolution)."""
    vocab_size: int = 1000
    """Upper bound of integer inputs in :meth:`sample_feeds` (token ids)."""
    derive: Callable[[dict[str, int]], dict[str, int]] | None = None
    """Dimensions computed from the others (a transformer's token count from the latent size and frames)."""

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dims(self, batch: int, height: int, width: int, **extra: int) -> dict[str, int]:
        """Values of every symbolic dimension for ``batch`` images of ``height`` x ``width`` pixels; ``extra``
        gives a video network's own dimensions (``latent_frames=3``)."""
        f = self.scale_factor
        if height % f or width % f:
            raise ConfigError(f"height and width must be multiples of {f} for {self.name}; got {height}x{width}.")
        dims = {
            "batch": batch,
            "height": height,
            "width": width,
            "latent_height": height // f,
            "latent_width": width // f,
            "sequence": self.sequence_length,
            **self.fixed_dims,
            **extra,
        }
        if self.derive is not None:
            dims.update(self.derive(dims))
        return dims

    def shapes(self, batch: int, height: int, width: int, **extra: int) -> dict[str, tuple[int, ...]]:
        """Concrete shapes of every input and output: what a runtime allocates."""
        dims = self.dims(batch, height, width, **extra)
        return {t.name: t.resolve(dims) for t in (*self.inputs, *self.outputs)}

    def dynamic_axes(self, static_size: bool = False) -> dict[str, dict[int, str]]:
        """``torch.onnx.export``'s dynamic_axes: every symbolic dimension, less height/width when static."""
        spatial = {"height", "width", "latent_height", "latent_width"}
        axes: dict[str, dict[int, str]] = {}
        for t in (*self.inputs, *self.outputs):
            named = {
                i: d
                for i, d in enumerate(t.shape)
                if isinstance(d, str)
                and d not in self.fixed_dims
                and not (static_size and d.partition("*")[0].partition("/")[0] in spatial)
            }
            if named:
                axes[t.name] = named
        return axes

    def profile(self, shape_range: ShapeRange) -> dict[str, tuple[tuple[int, ...], ...]]:
        """TensorRT optimization profile: input name -> (min, opt, max) shapes."""
        m = self.batch_multiplier
        points = [
            self.dims(b * m, h, w)
            for b, h, w in zip(shape_range.batch, shape_range.height, shape_range.width, strict=True)
        ]
        return {t.name: tuple(t.resolve(p) for p in points) for t in self.inputs if t.shape}

    def sample_feeds(self, batch: int, height: int, width: int, seed: int = 0, **extra: int) -> dict[str, np.ndarray]:
        """Random inputs of the right shapes and dtypes (token ids in range, timesteps in [0, 1000), flags True)."""
        rng = np.random.default_rng(seed)
        dims = self.dims(batch, height, width, **extra)
        feeds = {}
        for t in self.inputs:
            shape = t.resolve(dims)
            if t.dtype == "bool":
                feeds[t.name] = np.ones(shape, dtype=bool)
            elif t.dtype == "int64":
                feeds[t.name] = rng.integers(0, self.vocab_size, size=shape, dtype=np.int64)
            elif t.name in ("timestep", "ofs"):
                feeds[t.name] = rng.uniform(0, 1000, size=shape).astype(t.dtype)
            else:
                feeds[t.name] = rng.standard_normal(shape).astype(t.dtype)
        return feeds

    def with_name(self, name: str) -> Network:
        return replace(self, name=name)


def _f32(name: str, *shape: Dim) -> TensorSpec:
    return TensorSpec(name, "float32", tuple(shape))


def unet_network(
    config: dict[str, Any],
    scale_factor: int,
    sequence_length: int = 77,
    text_embeds_dim: int | None = None,
    deepcache_branches: Sequence[int] = (),
) -> Network:
    """The conditional UNet: ``sample``, ``timestep`` (one per sample, (batch,)), ``encoder_hidden_states`` ->
    ``out_sample``. Per-sample timesteps let a server run requests at different steps in one UNet batch; packages
    whose UNet takes a scalar timestep (diffrt exports before per-sample timesteps) still run (``timestep_feed``).

    Optional inputs follow the config: ``timestep_cond`` (``time_cond_proj_dim``), ``class_labels``
    (``class_embed_type`` / ``num_class_embeds``), and for SDXL's ``addition_embed_type="text_time"`` the pooled
    ``text_embeds`` (batch, ``text_embeds_dim``: the second text encoder's ``projection_dim``) and ``time_ids``
    (batch, n): n = 6 for a base model (original size, crop corner, target size), 5 for a refiner.

    ``deepcache_branches`` (packages exported with ``--deepcache``) add an output ``deep_features.{b}`` per branch:
    what :func:`unet_shallow_network` ``b`` takes on the steps that follow (see :func:`deep_features_channels`).
    """
    latent = ("batch", config.get("in_channels", 4), "latent_height", "latent_width")
    inputs = [
        _f32("sample", *latent),
        _f32("timestep", "batch"),
        _f32("encoder_hidden_states", "batch", "sequence", config["cross_attention_dim"]),
    ]
    if config.get("addition_embed_type") == "text_time":
        inputs.extend(_text_time_inputs(config, text_embeds_dim))
    if config.get("time_cond_proj_dim"):
        inputs.append(_f32("timestep_cond", "batch", config["time_cond_proj_dim"]))
    inputs.extend(_class_label_inputs(config))
    out = ("batch", config.get("out_channels", 4), "latent_height", "latent_width")
    features = [_deep_features(config, b, f"{DEEP_FEATURES}.{b}") for b in deepcache_branches]
    return Network(
        "unet",
        tuple(inputs),
        (_f32("out_sample", *out), *features),
        scale_factor=scale_factor,
        sequence_length=sequence_length,
        batch_multiplier=2,
    )


# ----- DeepCache (Ma et al. 2023, "DeepCache: Accelerating Diffusion Models for Free"): the UNet's shallow path
DEEP_FEATURES = "deep_features"


def deepcache_branches(config: Mapping[str, Any]) -> tuple[int, ...]:
    """The DeepCache branches (DeepCacheSDHelper's ``cache_branch_id`` 0, 1, 2: layers of the outermost block) a
    UNet tells apart. Branch ``b`` keeps the last ``b + 1`` layers of the last up block (which has the first
    down block's ``layers_per_block`` plus one), so from ``b = layers_per_block`` on it keeps the whole block
    and higher branches are the same."""
    return tuple(range(min(3, _first_block_layers(config) + 1)))


def _first_block_layers(config: Mapping[str, Any]) -> int:
    """Layers of the first down block; the last up block, which mirrors it, has one more."""
    layers = config.get("layers_per_block", 2)
    return layers if isinstance(layers, int) else layers[0]


def deep_features_channels(config: Mapping[str, Any], branch: int) -> int:
    """Channels of branch ``branch``'s deep features: the map entering the last up block's first kept layer (its
    own width after its first layer; before, the output of the up block below, or of the mid block in a one-block
    UNet)."""
    channels = config.get("block_out_channels", (320, 640, 1280, 1280))
    whole_block = branch >= _first_block_layers(config)
    return channels[min(1, len(channels) - 1)] if whole_block else channels[0]


def unet_shallow_name(branch: int) -> str:
    """The package folder (and network name) of DeepCache branch ``branch``'s shallow UNet."""
    return f"unet_shallow_{branch}"


def unet_shallow_network(
    config: dict[str, Any],
    scale_factor: int,
    branch: int,
    sequence_length: int = 77,
    text_embeds_dim: int | None = None,
) -> Network:
    """DeepCache's cheap step for ``branch``: the UNet's inputs plus ``deep_features`` (batch, C, latent_height,
    latent_width), the full UNet's ``deep_features.{branch}`` from the last step that ran it -> ``out_sample``.
    It runs the time embedding, ``conv_in``, the first ``branch`` layers of the first down block and the last
    ``branch + 1`` layers of the last up block; nothing deeper."""
    if branch not in deepcache_branches(config):
        raise ConfigError(
            f"DeepCache branch {branch!r} is not one this UNet has; accepted: {list(deepcache_branches(config))}."
        )
    unet = unet_network(config, scale_factor, sequence_length, text_embeds_dim)
    features = _deep_features(config, branch, DEEP_FEATURES)
    return replace(unet, name=unet_shallow_name(branch), inputs=(*unet.inputs, features))


def _deep_features(config: Mapping[str, Any], branch: int, name: str) -> TensorSpec:
    return _f32(name, "batch", deep_features_channels(config, branch), "latent_height", "latent_width")


def _text_time_inputs(config: dict[str, Any], text_embeds_dim: int | None) -> list[TensorSpec]:
    """``text_embeds`` and ``time_ids`` of a text_time UNet, their widths checked against the config."""
    if not isinstance(text_embeds_dim, int) or text_embeds_dim <= 0:
        raise ConfigError(
            f"a UNet with addition_embed_type='text_time' (SDXL) needs text_embeds_dim, the pooled text embedding "
            f"width (text_encoder_2's projection_dim); got {text_embeds_dim!r}."
        )
    total = config.get("projection_class_embeddings_input_dim")
    time_dim = config.get("addition_time_embed_dim")
    if not total or not time_dim or (total - text_embeds_dim) <= 0 or (total - text_embeds_dim) % time_dim:
        raise ConfigError(
            f"UNet config projection_class_embeddings_input_dim={total!r} must be text_embeds_dim "
            f"({text_embeds_dim}) plus a positive multiple of addition_time_embed_dim ({time_dim!r})."
        )
    return [
        _f32("text_embeds", "batch", text_embeds_dim),
        _f32("time_ids", "batch", (total - text_embeds_dim) // time_dim),
    ]


def unconditional_unet_network(config: dict[str, Any]) -> Network:
    """The unconditional ``UNet2DModel`` of DDPM pipelines: works in pixels, ``sample`` + ``timestep``."""
    inputs = [_f32("sample", "batch", config.get("in_channels", 3), "height", "width"), _f32("timestep")]
    inputs.extend(_class_label_inputs(config))
    out = _f32("out_sample", "batch", config.get("out_channels", 3), "height", "width")
    return Network("unet", tuple(inputs), (out,), scale_factor=1)


def _class_label_inputs(config: dict[str, Any]) -> list[TensorSpec]:
    kind = config.get("class_embed_type")
    if kind is None and config.get("num_class_embeds"):
        return [TensorSpec("class_labels", "int64", ("batch",))]
    if kind == "timestep":
        return [_f32("class_labels", "batch")]
    if kind in ("projection", "simple_projection"):
        return [_f32("class_labels", "batch", config["projection_class_embeddings_input_dim"])]
    if kind == "identity":
        width = config.get("time_embedding_dim") or config["block_out_channels"][0] * 4
        return [_f32("class_labels", "batch", width)]
    return []


def text_encoder_network(config: dict[str, Any], name: str = "text_encoder", projection: bool = False) -> Network:
    """A CLIP text encoder: ``input_ids`` -> ``last_hidden_state`` and ``pooler_output`` (or ``text_embeds``).

    ``clip_skip.{k}`` outputs carry the final-layer-normed hidden state ``k`` layers before the last, which is
    what diffusers feeds an SD 1.x/2.x UNet for ``clip_skip=k``. ``hidden_states.{i}`` (i = 0 .. num_hidden_layers)
    are the raw hidden states as transformers returns them (0: the embeddings; the last: before the final layer
    norm), named as Optimum names them; SDXL reads ``hidden_states.{L - 1 - clip_skip}`` un-normed. Graphs
    exported elsewhere may lack either kind.
    """
    hidden = config["hidden_size"]
    outputs = [_f32("last_hidden_state", "batch", "sequence", hidden)]
    outputs.append(
        _f32("text_embeds", "batch", config["projection_dim"]) if projection else _f32("pooler_output", "batch", hidden)
    )
    layers = config["num_hidden_layers"]
    outputs.extend(_f32(f"clip_skip.{k}", "batch", "sequence", hidden) for k in range(1, layers))
    outputs.extend(_f32(f"hidden_states.{i}", "batch", "sequence", hidden) for i in range(layers + 1))
    return Network(
        name,
        (TensorSpec("input_ids", "int64", ("batch", "sequence")),),
        tuple(outputs),
        sequence_length=config.get("max_position_embeddings", 77),
        batch_multiplier=1,
        vocab_size=config["vocab_size"],
    )


TINY_VAE = "AutoencoderTiny"
PREVIEW_DECODER = "vae_decoder_preview"


def is_tiny_vae(config: Mapping[str, Any]) -> bool:
    """Whether a VAE config is diffusers' ``AutoencoderTiny`` (TAESD): latents out of the encoder, no posterior."""
    return config.get("_class_name") == TINY_VAE


def vae_encoder_network(config: dict[str, Any], scale_factor: int) -> Network:
    """``sample`` (pixels in [-1, 1]) -> ``latent_parameters``: posterior mean and log-variance (AutoencoderKL);
    or -> ``latents``, the latents themselves, unscaled (AutoencoderTiny, which has no posterior)."""
    lc = config.get("latent_channels", 4)
    output = _f32("latents", "batch", lc, "latent_height", "latent_width")
    if not is_tiny_vae(config):
        output = _f32("latent_parameters", "batch", 2 * lc, "latent_height", "latent_width")
    return Network(
        "vae_encoder",
        (_f32("sample", "batch", config.get("in_channels", 3), "height", "width"),),
        (output,),
        scale_factor=scale_factor,
    )


def vae_decoder_network(config: dict[str, Any], scale_factor: int) -> Network:
    """``latent_sample`` (latents divided by the scaling factor) -> ``sample`` (pixels in about [-1, 1])."""
    lc = config.get("latent_channels", 4)
    return Network(
        "vae_decoder",
        (_f32("latent_sample", "batch", lc, "latent_height", "latent_width"),),
        (_f32("sample", "batch", config.get("out_channels", 3), "height", "width"),),
        scale_factor=scale_factor,
    )


def preview_decoder_network(config: dict[str, Any], scale_factor: int) -> Network:
    """The decoder of a second, tiny VAE a package may carry for progress previews (``vae_decoder_preview/``):
    :func:`vae_decoder_network`'s contract under its own name; its latents are the package VAE's, divided by the
    preview VAE's scaling factor."""
    return vae_decoder_network(config, scale_factor).with_name(PREVIEW_DECODER)


def depth_estimator_network(input_size: tuple[int, int]) -> Network:
    """DPT depth estimation at the fixed resolution its image processor resizes to."""
    h, w = input_size
    return Network(
        "depth_estimator",
        (_f32("pixel_values", "batch", 3, "depth_height", "depth_width"),),
        (_f32("predicted_depth", "batch", "depth_height", "depth_width"),),
        fixed_dims={"depth_height": h, "depth_width": w},
    )


def depth_input_size(preprocessor: dict[str, Any]) -> tuple[int, int]:
    """The (height, width) a DPT image processor (its ``preprocessor_config.json``) resizes images to."""
    size = preprocessor.get("size", 384)
    if isinstance(size, int):
        return size, size
    if "height" in size:
        return int(size["height"]), int(size["width"])
    edge = int(size.get("shortest_edge", 384))
    return edge, edge


def vae_scale_factor(vae_config: dict[str, Any]) -> int:
    """Pixels per latent cell: 2 ** (number of VAE blocks - 1), as diffusers derives it."""
    return 2 ** (len(vae_config.get("block_out_channels", (0,))) - 1)


def cogvideox_transformer_network(config: dict[str, Any], scale_factor: int = 8) -> Network:
    """CogVideoX's denoiser: ``hidden_states`` (batch, latent_frames, C, h, w), ``encoder_hidden_states`` (T5),
    ``timestep`` (batch,) -> ``noise_pred`` of the latents' shape.

    Positions come in as inputs, computed by the runtime in NumPy as diffusers' pipelines compute them:
    ``rotary_cos`` / ``rotary_sin`` (tokens, head_dim) for rotary models (5B, 1.5), ``pos_embedding``
    (1, tokens, inner_dim) for sin-cos (2B) or learned (5B I2V) ones, plus ``text_pos_embedding`` (1, sequence,
    inner_dim), the learned table's text rows (zeros under sin-cos). ``ofs`` (batch,) is CogVideoX 1.5's
    image-to-video offset. ``tokens`` counts the image patches: latent_frames / patch_size_t x (h / p) x (w / p).
    """
    p = config.get("patch_size", 2)
    p_t = config.get("patch_size_t") or 1
    heads, head_dim = config.get("num_attention_heads", 30), config.get("attention_head_dim", 64)
    rotary = bool(config.get("use_rotary_positional_embeddings"))
    learned = bool(config.get("use_learned_positional_embeddings"))
    latent = ("batch", "latent_frames", config.get("in_channels", 16), "latent_height", "latent_width")
    inputs = [
        _f32("hidden_states", *latent),
        _f32("encoder_hidden_states", "batch", "sequence", config.get("text_embed_dim", 4096)),
        _f32("timestep", "batch"),
    ]
    if config.get("ofs_embed_dim"):
        inputs.append(_f32("ofs", "batch"))
    if rotary:
        inputs += [_f32("rotary_cos", "tokens", head_dim), _f32("rotary_sin", "tokens", head_dim)]
    if not rotary or learned:
        inputs.append(_f32("pos_embedding", 1, "tokens", heads * head_dim))
    if learned:  # a learned table's text rows (diffusers adds its whole joint table)
        inputs.append(_f32("text_pos_embedding", 1, "sequence", heads * head_dim))
    out = ("batch", "latent_frames", config.get("out_channels", 16), "latent_height", "latent_width")

    def tokens(dims: dict[str, int]) -> dict[str, int]:
        frames = dims.get("latent_frames", p_t)
        return {"tokens": frames // p_t * (dims["latent_height"] // p) * (dims["latent_width"] // p)}

    return Network(
        "transformer",
        tuple(inputs),
        (_f32("noise_pred", *out),),
        scale_factor=scale_factor,
        sequence_length=config.get("max_text_seq_length", 226),
        batch_multiplier=2,
        derive=tokens,
    )


def _video_frames_out(ratio: int):
    """Frames a decoder step makes from T latent frames: ratio x T, less ratio - 1 when T is odd (the first batch
    of an odd count keeps its first frame single)."""

    def derive(dims: dict[str, int]) -> dict[str, int]:
        derived = {}
        if "latent_frames" in dims:
            t = dims["latent_frames"]
            derived["frames_out"] = ratio * t - (ratio - 1) * (t % 2)
        if "frames" in dims:
            f = dims["frames"]
            derived["latent_frames_out"] = f // ratio + f % 2
        return derived

    return derive


def cogvideox_vae_decoder_network(config: dict[str, Any]) -> Network:
    """One frame batch of the causal 3D VAE decoder: ``latent_sample`` (batch, C, T, h, w) divided by the scaling
    factor, ``has_cache`` (1,) bool (False for the first batch), ``cache_in.{i}`` -> ``sample`` (batch, 3, frames,
    H, W) and ``cache_out.{i}``. :func:`decoder_cache_specs` lists each causal convolution's (channels, scale):
    its cache is (batch, channels, 2, latent_height*scale, latent_width*scale); the first batch feeds zeros, ignored.
    """
    f = 2 ** (len(config.get("block_out_channels", (0,) * 4)) - 1)
    lc = config.get("latent_channels", 16)
    inputs = [_f32("latent_sample", "batch", lc, "latent_frames", "latent_height", "latent_width")]
    inputs.append(TensorSpec("has_cache", "bool", (1,)))
    specs = [_cache_spec(i, c, s, "latent") for i, (c, s) in enumerate(decoder_cache_specs(config))]
    inputs += [replace(t, name=f"cache_in.{i}") for i, t in enumerate(specs)]
    outputs = [_f32("sample", "batch", config.get("out_channels", 3), "frames_out", "height", "width")]
    outputs += [replace(t, name=f"cache_out.{i}") for i, t in enumerate(specs)]
    ratio = config.get("temporal_compression_ratio", 4)
    return Network("vae_decoder", tuple(inputs), tuple(outputs), scale_factor=f, derive=_video_frames_out(ratio))


def cogvideox_vae_encoder_network(config: dict[str, Any]) -> Network:
    """One frame batch of the causal 3D VAE encoder: ``sample`` (batch, 3, frames, H, W) in [-1, 1], ``has_cache``,
    ``cache_in.{i}`` -> ``latent_parameters`` (batch, 2C, latent frames, h, w: mean and log-variance) and
    ``cache_out.{i}``. :func:`encoder_cache_specs` lists (channels, divisor): a cache is (batch, channels, 2,
    height/d, width/d)."""
    f = 2 ** (len(config.get("block_out_channels", (0,) * 4)) - 1)
    lc = config.get("latent_channels", 16)
    inputs = [_f32("sample", "batch", config.get("in_channels", 3), "frames", "height", "width")]
    inputs.append(TensorSpec("has_cache", "bool", (1,)))
    specs = [_cache_spec(i, c, d, "pixel") for i, (c, d) in enumerate(encoder_cache_specs(config))]
    inputs += [replace(t, name=f"cache_in.{i}") for i, t in enumerate(specs)]
    outputs = [_f32("latent_parameters", "batch", 2 * lc, "latent_frames_out", "latent_height", "latent_width")]
    outputs += [replace(t, name=f"cache_out.{i}") for i, t in enumerate(specs)]
    ratio = config.get("temporal_compression_ratio", 4)
    return Network("vae_encoder", tuple(inputs), tuple(outputs), scale_factor=f, derive=_video_frames_out(ratio))


def _cache_spec(i: int, channels: int, factor: int, space: str) -> TensorSpec:
    if space == "latent":
        h, w = (
            ("latent_height", "latent_width") if factor == 1 else (f"latent_height*{factor}", f"latent_width*{factor}")
        )
    else:
        h, w = ("height", "width") if factor == 1 else (f"height/{factor}", f"width/{factor}")
    return _f32(f"cache.{i}", "batch", channels, 2, h, w)


# ----- the causal 3D VAE's convolution cache (CogVideoX): one entry per time-kernel-3 causal conv, in run order
VAE_DEFAULTS: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (128, 256, 256, 512),
    "latent_channels": 16,
    "layers_per_block": 3,
    "temporal_compression_ratio": 4,
    "sample_height": 480,
    "sample_width": 720,
}


def _vae_get(config: Mapping[str, Any], key: str) -> Any:
    return config.get(key, VAE_DEFAULTS[key])


class CacheSpec(NamedTuple):
    """One conv-cache entry: the causal conv's input ``channels`` and its resolution ``factor``. A decoder cache is
    (B, channels, 2, latent_height * factor, latent_width * factor), an encoder cache (B, channels, 2,
    height // factor, width // factor) (each encoder downsampler floors the size by 2)."""

    channels: int
    factor: int


def decoder_cache_layout(config: Mapping[str, Any]) -> list[tuple[str, int, int]]:
    """(state-dict name of the causal conv, channels, factor) of each decoder cache entry, in graph order
    (``cache_in.0`` first): conv_in, the mid block's two resnets (conv1, conv2 each), every up block's resnets,
    conv_out. This is the order the decoder runs them in."""
    channels = list(reversed(_vae_get(config, "block_out_channels")))
    layers = _vae_get(config, "layers_per_block") + 1
    layout = [("decoder.conv_in", _vae_get(config, "latent_channels"), 1)]
    for j in range(2):
        layout += _resnet("decoder.mid_block", j, channels[0], channels[0], 1)
    for i, out in enumerate(channels):
        previous = channels[max(i - 1, 0)]
        for j in range(layers):
            layout += _resnet(f"decoder.up_blocks.{i}", j, previous if j == 0 else out, out, 2**i)
    layout.append(("decoder.conv_out", channels[-1], 2 ** (len(channels) - 1)))
    return layout


def encoder_cache_layout(config: Mapping[str, Any]) -> list[tuple[str, int, int]]:
    """As :func:`decoder_cache_layout` for the encoder: conv_in, every down block's resnets, the mid block's two
    resnets, conv_out."""
    channels = list(_vae_get(config, "block_out_channels"))
    layers = _vae_get(config, "layers_per_block")
    layout = [("encoder.conv_in", _vae_get(config, "in_channels"), 1)]
    for i, out in enumerate(channels):
        previous = channels[max(i - 1, 0)]
        for j in range(layers):
            layout += _resnet(f"encoder.down_blocks.{i}", j, previous if j == 0 else out, out, 2**i)
    deepest = 2 ** (len(channels) - 1)
    for j in range(2):
        layout += _resnet("encoder.mid_block", j, channels[-1], channels[-1], deepest)
    layout.append(("encoder.conv_out", channels[-1], deepest))
    return layout


def _resnet(block: str, j: int, in_channels: int, out_channels: int, factor: int) -> list[tuple[str, int, int]]:
    prefix = f"{block}.resnets.{j}"
    return [(f"{prefix}.conv1", in_channels, factor), (f"{prefix}.conv2", out_channels, factor)]


def decoder_cache_specs(config: Mapping[str, Any]) -> list[CacheSpec]:
    """(channels, factor over the latent size) of each decoder cache entry, in ``cache_in.{i}`` order."""
    return [CacheSpec(channels, factor) for _, channels, factor in decoder_cache_layout(config)]


def encoder_cache_specs(config: Mapping[str, Any]) -> list[CacheSpec]:
    """(channels, divisor of the frame size) of each encoder cache entry, in ``cache_in.{i}`` order."""
    return [CacheSpec(channels, factor) for _, channels, factor in encoder_cache_layout(config)]


T5_SEQUENCE_LENGTH = 226  # diffusers' max_sequence_length for CogVideoX


def t5_encoder_network(
    config: dict[str, Any], sequence_length: int = T5_SEQUENCE_LENGTH, name: str = "text_encoder"
) -> Network:
    """A transformers ``T5EncoderModel`` (CogVideoX's ``text_encoder``): ``input_ids`` (batch, sequence) int64 ->
    ``last_hidden_state`` (batch, sequence, d_model), after T5's final layer norm. diffusers' CogVideoX pipelines
    pass no attention mask (pads are attended to), so the graph takes the ids alone."""
    for key in ("d_model", "vocab_size"):
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"T5 encoder config {key}={value!r} is not supported; accepted: a positive integer.")
    if not isinstance(sequence_length, int) or isinstance(sequence_length, bool) or sequence_length <= 0:
        raise ConfigError(f"sequence_length={sequence_length!r} is not supported; accepted: a positive integer.")
    return Network(
        name,
        (TensorSpec("input_ids", "int64", ("batch", "sequence")),),
        (TensorSpec("last_hidden_state", "float32", ("batch", "sequence", config["d_model"])),),
        sequence_length=sequence_length,
        batch_multiplier=1,
        vocab_size=config["vocab_size"],
    )


# ----- SD3 and Flux (MMDiT transformers) ------------------------------------------------------------------------
SD3_SEQUENCE_LENGTH = 77 + 256  # CLIP tokens + diffusers' default max_sequence_length for SD3's T5
FLUX_SEQUENCE_LENGTH = 512  # diffusers' default max_sequence_length for Flux


def _positive(config: Mapping[str, Any], key: str, default: int) -> int:
    value = config.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"transformer config {key}={value!r} is not supported; accepted: a positive integer.")
    return value


def sd3_transformer_network(config: Mapping[str, Any], scale_factor: int = 8) -> Network:
    """SD3's denoiser: ``hidden_states`` (batch, C, latent_height, latent_width), ``encoder_hidden_states`` (batch,
    sequence, joint_attention_dim: CLIP-L and CLIP-G side by side, zero-padded, then T5), ``pooled_projections``
    (batch, pooled_projection_dim), ``timestep`` (batch,), ``skip_layers`` (num_layers,) bool (True: that block
    passes its input through, diffusers' ``skip_layers``) -> ``noise_pred`` of the latents' shape."""
    layers = _positive(config, "num_layers", 18)
    latent = ("batch", _positive(config, "in_channels", 16), "latent_height", "latent_width")
    out = ("batch", config.get("out_channels") or latent[1], "latent_height", "latent_width")
    return Network(
        "transformer",
        (
            _f32("hidden_states", *latent),
            _f32("encoder_hidden_states", "batch", "sequence", _positive(config, "joint_attention_dim", 4096)),
            _f32("pooled_projections", "batch", _positive(config, "pooled_projection_dim", 2048)),
            _f32("timestep", "batch"),
            TensorSpec("skip_layers", "bool", (layers,)),
        ),
        (_f32("noise_pred", *out),),
        scale_factor=scale_factor,
        sequence_length=SD3_SEQUENCE_LENGTH,
        batch_multiplier=2,
    )


def flux_transformer_network(config: Mapping[str, Any], scale_factor: int = 8) -> Network:
    """Flux's denoiser on packed latents (2x2 latent cells per token): ``hidden_states`` (batch, tokens,
    in_channels), ``encoder_hidden_states`` (batch, sequence, joint_attention_dim: T5), ``pooled_projections``
    (batch, pooled_projection_dim: CLIP), ``timestep`` (batch,) in [0, 1], ``guidance`` (batch,) for guidance-
    distilled (dev-style) models, ``rotary_cos`` / ``rotary_sin`` (positions, attention_head_dim) for the text then
    image positions -> ``noise_pred`` (batch, tokens, out_channels). tokens = latent_height/2 x latent_width/2."""
    channels = _positive(config, "in_channels", 64)
    head_dim = _positive(config, "attention_head_dim", 128)
    inputs = [
        _f32("hidden_states", "batch", "tokens", channels),
        _f32("encoder_hidden_states", "batch", "sequence", _positive(config, "joint_attention_dim", 4096)),
        _f32("pooled_projections", "batch", _positive(config, "pooled_projection_dim", 768)),
        _f32("timestep", "batch"),
    ]
    if config.get("guidance_embeds"):
        inputs.append(_f32("guidance", "batch"))
    inputs += [_f32("rotary_cos", "positions", head_dim), _f32("rotary_sin", "positions", head_dim)]

    def derive(dims: dict[str, int]) -> dict[str, int]:
        tokens = (dims["latent_height"] // 2) * (dims["latent_width"] // 2)
        return {"tokens": tokens, "positions": dims["sequence"] + tokens}

    return Network(
        "transformer",
        tuple(inputs),
        (_f32("noise_pred", "batch", "tokens", config.get("out_channels") or channels),),
        scale_factor=scale_factor,
        sequence_length=FLUX_SEQUENCE_LENGTH,
        batch_multiplier=1,
        derive=derive,
    )

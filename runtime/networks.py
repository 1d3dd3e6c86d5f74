"""Shape contracts of the networks in an engine package, each declared once.

A :class:`Network` names its inputs and outputs with their dtypes and symbolic shapes. Export reads it for
``input_names`` / ``output_names`` / ``dynamic_axes`` and sample inputs; a TensorRT build reads its min/opt/max
profile; the runtime reads the concrete shapes it will allocate. Nothing else in diffrt restates a shape.

Symbolic dimensions are strings resolved by :meth:`Network.dims`: ``batch``, ``height``/``width`` (pixels),
``latent_height``/``latent_width`` (pixels divided by the VAE scale factor) and ``sequence`` (text tokens).
Everything here is NumPy only: the runtime imports it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

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
        return tuple(d if isinstance(d, int) else dims[d] for d in self.shape)


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

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dims(self, batch: int, height: int, width: int) -> dict[str, int]:
        """Values of every symbolic dimension for ``batch`` images of ``height`` x ``width`` pixels."""
        f = self.scale_factor
        if height % f or width % f:
            raise ConfigError(f"height and width must be multiples of {f} for {self.name}; got {height}x{width}.")
        return {
            "batch": batch,
            "height": height,
            "width": width,
            "latent_height": height // f,
            "latent_width": width // f,
            "sequence": self.sequence_length,
            **self.fixed_dims,
        }

    def shapes(self, batch: int, height: int, width: int) -> dict[str, tuple[int, ...]]:
        """Concrete shapes of every input and output: what a runtime allocates."""
        dims = self.dims(batch, height, width)
        return {t.name: t.resolve(dims) for t in (*self.inputs, *self.outputs)}

    def dynamic_axes(self, static_size: bool = False) -> dict[str, dict[int, str]]:
        """``torch.onnx.export``'s dynamic_axes: every symbolic dimension, less height/width when static."""
        spatial = {"height", "width", "latent_height", "latent_width"}
        axes: dict[str, dict[int, str]] = {}
        for t in (*self.inputs, *self.outputs):
            named = {
                i: d
                for i, d in enumerate(t.shape)
                if isinstance(d, str) and d not in self.fixed_dims and not (static_size and d in spatial)
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

    def sample_feeds(self, batch: int, height: int, width: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Random inputs of the right shapes and dtypes (token ids in range, timesteps in [0, 1000))."""
        rng = np.random.default_rng(seed)
        shapes = self.shapes(batch, height, width)
        feeds = {}
        for t in self.inputs:
            shape = shapes[t.name]
            if t.dtype == "int64":
                feeds[t.name] = rng.integers(0, self.vocab_size, size=shape, dtype=np.int64)
            elif t.name == "timestep":
                feeds[t.name] = rng.uniform(0, 1000, size=shape).astype(t.dtype)
            else:
                feeds[t.name] = rng.standard_normal(shape).astype(t.dtype)
        return feeds

    def with_name(self, name: str) -> Network:
        return replace(self, name=name)


def _f32(name: str, *shape: Dim) -> TensorSpec:
    return TensorSpec(name, "float32", tuple(shape))


def unet_network(
    config: dict[str, Any], scale_factor: int, sequence_length: int = 77, text_embeds_dim: int | None = None
) -> Network:
    """The conditional UNet: ``sample``, ``timestep`` (one per sample, (batch,)), ``encoder_hidden_states`` ->
    ``out_sample``. Per-sample timesteps let a server run requests at different steps in one UNet batch; packages
    whose UNet takes a scalar timestep (diffrt exports before per-sample timesteps) still run (``timestep_feed``).

    Optional inputs follow the config: ``timestep_cond`` (``time_cond_proj_dim``), ``class_labels``
    (``class_embed_type`` / ``num_class_embeds``), and for SDXL's ``addition_embed_type="text_time"`` the pooled
    ``text_embeds`` (batch, ``text_embeds_dim``: the second text encoder's ``projection_dim``) and ``time_ids``
    (batch, n): n = 6 for a base model (original size, crop corner, target size), 5 for a refiner.
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
    return Network(
        "unet",
        tuple(inputs),
        (_f32("out_sample", *out),),
        scale_factor=scale_factor,
        sequence_length=sequence_length,
        batch_multiplier=2,
    )


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


def vae_encoder_network(config: dict[str, Any], scale_factor: int) -> Network:
    """``sample`` (pixels in [-1, 1]) -> ``latent_parameters``: posterior mean and log-variance."""
    lc = config.get("latent_channels", 4)
    return Network(
        "vae_encoder",
        (_f32("sample", "batch", config.get("in_channels", 3), "height", "width"),),
        (_f32("latent_parameters", "batch", 2 * lc, "latent_height", "latent_width"),),
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

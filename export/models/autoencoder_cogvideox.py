"""CogVideoX's 3D causal VAE (diffusers' ``AutoencoderKLCogVideoX``), written to export as *step graphs*.

diffusers runs the VAE over a video in frame batches and hands every causal convolution with a time kernel of 3 the
last two frames of its padded input from the batch before (``conv_cache``). Here one call of :meth:`decode_step` /
:meth:`encode_step` is one such batch: the cache goes in as a flat tuple of tensors and the new cache comes out, like
an LLM's KV cache, so one ONNX graph serves a video of any length. ``has_cache`` (a (1,) bool tensor) tells the first
batch (False: every causal conv pads with its first frame repeated, as diffusers does without a cache) from the
later ones. The cache order is the order the convolutions run in (see :meth:`decoder_cache_layout`; the NumPy driver
``diffrt.runtime.pipelines.cogvideox_vae`` restates it from the config alone).

diffusers branches on ``T % 2`` in Python where frames are up- or downsampled in time; a trace would bake the branch
in. These modules compute the same values branch-free, with ``T % 2`` taken from the tensor's shape so that it stays
dynamic in the graph: nearest upsampling x2 of T frames (odd T keeping the first frame once) gathers frames
``(k + T % 2) // 2``; average pooling of odd T pools ``[x0, x0, x1, ...]`` (avg(x0, x0) == x0); the spatial norm's
latent frames are repeated by the time ratio r, dropping the first ``(r - 1) * (T % 2)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import block_types, check_matching_lengths
from .resnet import activation

DOWN_BLOCK = "CogVideoXDownBlock3D"
UP_BLOCK = "CogVideoXUpBlock3D"


class ConvCache:
    """The conv cache of one step: the tensors that came in (None: no cache at all, eager first batch) and the ones
    each causal conv hands on, in the order the convs run."""

    def __init__(self, has_cache: torch.Tensor | None, tensors: tuple[torch.Tensor, ...] | None):
        self.has_cache = has_cache
        self.tensors = tensors
        self.new: list[torch.Tensor] = []

    def pad(self, x: torch.Tensor, time_pad: int) -> torch.Tensor:
        """``x`` with ``time_pad`` frames in front: the cached ones, or the first frame repeated on a first batch."""
        first = x[:, :, :1].expand(-1, -1, time_pad, -1, -1)
        if self.tensors is None:
            past = first
        else:
            past = torch.where(self.has_cache, self.tensors[len(self.new)], first)
        padded = torch.cat([past, x], dim=2)
        self.new.append(padded[:, :, -time_pad:])
        return padded


class CausalConv3d(nn.Module):
    """diffusers' ``CogVideoXCausalConv3d`` ("first" padding): pad in time from the cache, zero-pad in space."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.time_pad = kernel_size - 1
        self.factor = 1  # resolution factor of the cache (set by the network builder)
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, padding=(0, kernel_size // 2, kernel_size // 2))

    def forward(self, x: torch.Tensor, cache: ConvCache) -> torch.Tensor:
        if self.time_pad:
            x = cache.pad(x, self.time_pad)
        return self.conv(x)


class PointwiseConv3d(nn.Module):
    """A 1x1x1 ``CogVideoXCausalConv3d`` (no padding, no cache): only its ``conv`` name level matters."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def frame_parity(x: torch.Tensor) -> Any:
    """``T % 2`` of a (B, C, T, H, W) tensor, taken from its shape (a traced value inside an ONNX export)."""
    return x.shape[2] % 2


def repeat_frames(x: torch.Tensor, ratio: int) -> torch.Tensor:
    """Each frame ``ratio`` times, dropping the first ``(ratio - 1) * (T % 2)``: diffusers' nearest interpolation of
    the first frame and the rest separately when T is odd (T = 1 stays one frame), of all frames when T is even."""
    if ratio == 1:
        return x
    drop = (ratio - 1) * frame_parity(x)
    index = torch.div(torch.arange(ratio * x.shape[2] - drop, device=x.device) + drop, ratio, rounding_mode="floor")
    return x.index_select(2, index)


def upsample_space(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest upsampling of height and width by ``factor`` (pixel ``i`` takes source ``i // factor``)."""
    if factor == 1:
        return x
    return F.interpolate(x, scale_factor=(1.0, float(factor), float(factor)), mode="nearest")


def conv_per_frame(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 2D conv applied to every frame of (B, C, T, H, W): a 3D conv with a time kernel of 1."""
    return F.conv3d(x, conv.weight.unsqueeze(2), conv.bias, stride=(1, *conv.stride), padding=(0, *conv.padding))


class Downsample3D(nn.Module):
    """diffusers' ``CogVideoXDownsample3D``: optional average pooling of frame pairs (an odd count keeps its first
    frame alone), then a stride-2 3x3 conv of every frame after one pixel of zero padding right and bottom."""

    def __init__(self, channels: int, compress_time: bool):
        super().__init__()
        self.compress_time = compress_time
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compress_time:
            x = torch.cat([x[:, :, : frame_parity(x)], x], dim=2)  # odd T: [x0, x0, x1, ...]
            x = (x[:, :, 0::2] + x[:, :, 1::2]) / 2
        return conv_per_frame(self.conv, F.pad(x, (0, 1, 0, 1)))


class Upsample3D(nn.Module):
    """diffusers' ``CogVideoXUpsample3D``: nearest x2 in space (and in time, the first of an odd count once), then a
    3x3 conv of every frame."""

    def __init__(self, channels: int, compress_time: bool):
        super().__init__()
        self.compress_time = compress_time
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compress_time:
            x = repeat_frames(x, 2)
        return conv_per_frame(self.conv, upsample_space(x, 2))


class SpatialNorm3D(nn.Module):
    """diffusers' ``CogVideoXSpatialNorm3D``: GroupNorm(f) * conv_y(zq) + conv_b(zq), ``zq`` (the latents) already
    brought to f's frames and size by :func:`resample_latents`."""

    def __init__(self, f_channels: int, zq_channels: int, groups: int):
        super().__init__()
        self.norm_layer = nn.GroupNorm(groups, f_channels, eps=1e-6)
        self.conv_y = PointwiseConv3d(zq_channels, f_channels)
        self.conv_b = PointwiseConv3d(zq_channels, f_channels)

    def forward(self, f: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        return self.norm_layer(f) * self.conv_y(zq) + self.conv_b(zq)


def resample_latents(zq: torch.Tensor, time_ratio: int, space_factor: int) -> torch.Tensor:
    """The latents at the frames and size of a decoder level ``time_ratio`` x more frames (odd counts keeping the
    first frame once) and ``space_factor`` x larger: diffusers' nearest ``F.interpolate`` in the spatial norm."""
    return upsample_space(repeat_frames(zq, time_ratio), space_factor)


class ResnetBlock3D(nn.Module):
    """diffusers' ``CogVideoXResnetBlock3D`` without time embedding: norm, act, causal conv, twice, plus the input
    (through a 1x1x1 conv when the channels change). The norms are spatial norms when ``zq_channels`` is given."""

    def __init__(
        self, in_channels: int, out_channels: int, groups: int, eps: float, act_fn: str, zq_channels: int | None
    ):
        super().__init__()
        if zq_channels is None:
            self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
            self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        else:
            self.norm1 = SpatialNorm3D(in_channels, zq_channels, groups)
            self.norm2 = SpatialNorm3D(out_channels, zq_channels, groups)
        self.nonlinearity = activation(act_fn)
        self.conv1 = CausalConv3d(in_channels, out_channels)
        self.conv2 = CausalConv3d(out_channels, out_channels)
        self.conv_shortcut = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def _norm(self, norm: nn.Module, x: torch.Tensor, zq: torch.Tensor | None) -> torch.Tensor:
        return norm(x) if zq is None else norm(x, zq)

    def forward(self, x: torch.Tensor, cache: ConvCache, zq: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(self.nonlinearity(self._norm(self.norm1, x, zq)), cache)
        h = self.conv2(self.nonlinearity(self._norm(self.norm2, h, zq)), cache)
        return h + (x if self.conv_shortcut is None else self.conv_shortcut(x))


def _set_factor(module: nn.Module, factor: int) -> nn.Module:
    for child in module.modules():
        if isinstance(child, CausalConv3d):
            child.factor = factor
    return module


class Block3D(nn.Module):
    """A down, mid or up block: resnets, then an optional ``downsamplers.0`` / ``upsamplers.0``."""

    def __init__(self, resnets: list[ResnetBlock3D], resampler: str | None = None, compress_time: bool = False):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        channels = resnets[-1].conv2.conv.out_channels
        if resampler == "down":
            self.downsamplers = nn.ModuleList([Downsample3D(channels, compress_time)])
        elif resampler == "up":
            self.upsamplers = nn.ModuleList([Upsample3D(channels, compress_time)])
        self.resampler = resampler

    def forward(self, x: torch.Tensor, cache: ConvCache, zq: torch.Tensor | None = None) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, cache, zq)
        if self.resampler == "down":
            x = self.downsamplers[0](x)
        elif self.resampler == "up":
            x = self.upsamplers[0](x)
        return x


class Encoder3D(nn.Module):
    """diffusers' ``CogVideoXEncoder3D``: conv_in, down blocks (the first log2(ratio) compress time), two-resnet mid
    block, GroupNorm, SiLU, conv_out to mean and log-variance."""

    def __init__(self, in_channels, latent_channels, block_out_channels, layers, act_fn, eps, groups, time_levels):
        super().__init__()
        n = len(block_out_channels)
        self.conv_in = CausalConv3d(in_channels, block_out_channels[0])
        blocks = []
        for i, out in enumerate(block_out_channels):
            previous = block_out_channels[max(i - 1, 0)]
            resnets = [
                ResnetBlock3D(previous if j == 0 else out, out, groups, eps, act_fn, None) for j in range(layers)
            ]
            resampler = "down" if i < n - 1 else None
            blocks.append(_set_factor(Block3D(resnets, resampler, i < time_levels), 2**i))
        self.down_blocks = nn.ModuleList(blocks)
        deepest = block_out_channels[-1]
        mid = [ResnetBlock3D(deepest, deepest, groups, eps, act_fn, None) for _ in range(2)]
        self.mid_block = _set_factor(Block3D(mid), 2 ** (n - 1))
        self.norm_out = nn.GroupNorm(groups, deepest, eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = _set_factor(CausalConv3d(deepest, 2 * latent_channels), 2 ** (n - 1))

    def forward(self, x: torch.Tensor, cache: ConvCache) -> torch.Tensor:
        x = self.conv_in(x, cache)
        for block in self.down_blocks:
            x = block(x, cache)
        x = self.mid_block(x, cache)
        return self.conv_out(self.conv_act(self.norm_out(x)), cache)


class Decoder3D(nn.Module):
    """diffusers' ``CogVideoXDecoder3D``: conv_in, mid block, up blocks (the first log2(ratio) double the frames),
    all with spatial norms conditioned on the latents, spatial norm, SiLU, conv_out."""

    def __init__(self, latent_channels, out_channels, block_out_channels, layers, act_fn, eps, groups, time_levels):
        super().__init__()
        channels = list(reversed(block_out_channels))
        n = len(channels)
        self.time_levels = time_levels
        self.conv_in = CausalConv3d(latent_channels, channels[0])
        mid = [ResnetBlock3D(channels[0], channels[0], groups, eps, act_fn, latent_channels) for _ in range(2)]
        self.mid_block = Block3D(mid)
        blocks = []
        for i, out in enumerate(channels):
            previous = channels[max(i - 1, 0)]
            resnets = [
                ResnetBlock3D(previous if j == 0 else out, out, groups, eps, act_fn, latent_channels)
                for j in range(layers + 1)
            ]
            resampler = "up" if i < n - 1 else None
            blocks.append(_set_factor(Block3D(resnets, resampler, i < time_levels), 2**i))
        self.up_blocks = nn.ModuleList(blocks)
        self.norm_out = SpatialNorm3D(channels[-1], latent_channels, groups)
        self.conv_act = nn.SiLU()
        self.conv_out = _set_factor(CausalConv3d(channels[-1], out_channels), 2 ** (n - 1))

    def _zq(self, z: torch.Tensor, level: int) -> torch.Tensor:
        """The latents at up-block ``level``'s frames and size (after ``level`` upsamplers)."""
        return resample_latents(z, 2 ** min(level, self.time_levels), 2**level)

    def forward(self, z: torch.Tensor, cache: ConvCache) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z, cache), cache, z)
        for level, block in enumerate(self.up_blocks):
            x = block(x, cache, self._zq(z, level))
        x = self.norm_out(x, self._zq(z, len(self.up_blocks) - 1))
        return self.conv_out(self.conv_act(x), cache)


def _frame_batches(num_frames: int, batch_size: int) -> list[slice]:
    remaining = num_frames % batch_size
    return [
        slice(batch_size * k + (0 if k == 0 else remaining), batch_size * (k + 1) + remaining)
        for k in range(max(num_frames // batch_size, 1))
    ]


class AutoencoderKLCogVideoX(nn.Module):
    """diffusers' ``AutoencoderKLCogVideoX``, built from its ``config.json`` (``AutoencoderKLCogVideoX(**config)``).

    :meth:`decode_step` / :meth:`encode_step` are the exported graphs (one frame batch, conv cache in and out);
    :meth:`decode` / :meth:`encode` run a whole video through them with diffusers' frame batching (no tiling or
    slicing: the NumPy driver does those). ``quant_conv`` / ``post_quant_conv`` are built as diffusers builds them,
    on ``2 * out_channels`` / ``out_channels`` channels (so they only work where ``out_channels`` equals
    ``latent_channels``, as in diffusers). Scaling factors and ``invert_scale_latents`` are kept as attributes for the
    pipeline. Keys that start with ``_`` and unknown keys are ignored.
    """

    num_latent_frames_batch_size = 2
    num_sample_frames_batch_size = 8

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = (DOWN_BLOCK,) * 4,
        up_block_types: tuple[str, ...] = (UP_BLOCK,) * 4,
        block_out_channels: tuple[int, ...] = (128, 256, 256, 512),
        latent_channels: int = 16,
        layers_per_block: int = 3,
        act_fn: str = "silu",
        norm_eps: float = 1e-6,
        norm_num_groups: int = 32,
        temporal_compression_ratio: float = 4,
        sample_height: int = 480,
        sample_width: int = 720,
        scaling_factor: float = 1.15258426,
        shift_factor: float | None = None,
        latents_mean: tuple[float, ...] | None = None,
        latents_std: tuple[float, ...] | None = None,
        force_upcast: bool = True,
        use_quant_conv: bool = False,
        use_post_quant_conv: bool = False,
        invert_scale_latents: bool = False,
        **ignored: Any,
    ):
        super().__init__()
        check_matching_lengths(down_block_types, up_block_types, block_out_channels)
        block_types(down_block_types, (DOWN_BLOCK,), "down_block_types")
        block_types(up_block_types, (UP_BLOCK,), "up_block_types")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.latent_channels = latent_channels
        self.sample_height = sample_height
        self.sample_width = sample_width
        self.scaling_factor = scaling_factor
        self.shift_factor = shift_factor
        self.latents_mean = latents_mean
        self.latents_std = latents_std
        self.force_upcast = force_upcast
        self.invert_scale_latents = invert_scale_latents
        self.temporal_compression_ratio = temporal_compression_ratio
        self.spatial_scale = 2 ** (len(block_out_channels) - 1)

        time_levels = int(math.log2(temporal_compression_ratio))
        network = (list(block_out_channels), layers_per_block, act_fn, norm_eps, norm_num_groups, time_levels)
        self.encoder = Encoder3D(in_channels, latent_channels, *network)
        self.decoder = Decoder3D(latent_channels, out_channels, *network)
        self.quant_conv = nn.Conv3d(2 * out_channels, 2 * out_channels, 1) if use_quant_conv else None
        self.post_quant_conv = nn.Conv3d(out_channels, out_channels, 1) if use_post_quant_conv else None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AutoencoderKLCogVideoX:
        """Build from a diffusers ``config.json`` dict (``_class_name`` and other ``_`` keys are ignored)."""
        return cls(**{key: value for key, value in config.items() if not key.startswith("_")})

    # the cache layout ----------------------------------------------------------------------------------------------

    @staticmethod
    def _layout(network: nn.Module, prefix: str) -> list[tuple[str, int, int]]:
        return [
            (f"{prefix}.{name}", module.conv.in_channels, module.factor)
            for name, module in network.named_modules()
            if isinstance(module, CausalConv3d) and module.time_pad
        ]

    def decoder_cache_layout(self) -> list[tuple[str, int, int]]:
        """(state-dict name, channels, factor) of each decoder cache entry, in ``cache_in.{i}`` order: the causal
        convs with a time kernel of 3, in the order they run. Entry i is (B, channels, 2, h * factor, w * factor)
        for latents (B, C, T, h, w)."""
        return self._layout(self.decoder, "decoder")

    def encoder_cache_layout(self) -> list[tuple[str, int, int]]:
        """As :meth:`decoder_cache_layout` for the encoder: entry i is (B, channels, 2, H // factor, W // factor)
        for frames (B, C, F, H, W)."""
        return self._layout(self.encoder, "encoder")

    def decoder_cache_shapes(self, batch: int, height: int, width: int) -> list[tuple[int, ...]]:
        return [(batch, c, 2, height * f, width * f) for _, c, f in self.decoder_cache_layout()]

    def encoder_cache_shapes(self, batch: int, height: int, width: int) -> list[tuple[int, ...]]:
        return [(batch, c, 2, height // f, width // f) for _, c, f in self.encoder_cache_layout()]

    # the steps -----------------------------------------------------------------------------------------------------

    def decode_step(
        self, latent_sample: torch.Tensor, has_cache: torch.Tensor | None, *cache: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """One frame batch of latents (B, C, T, h, w), T = 1, 2 or 3, already divided by ``scaling_factor``:
        ``(sample, *new_cache)``. ``has_cache`` (1,) bool: False on the first batch, whose ``cache`` tensors are
        ignored; ``has_cache`` None with no ``cache`` is the first batch too (eager use)."""
        z = latent_sample if self.post_quant_conv is None else self.post_quant_conv(latent_sample)
        state = ConvCache(has_cache, cache or None)
        sample = self.decoder(z, state)
        self._check(state.new, self.decoder_cache_shapes(z.shape[0], *z.shape[3:]), cache)
        return (sample, *state.new)

    def encode_step(
        self, sample: torch.Tensor, has_cache: torch.Tensor | None, *cache: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """One frame batch of video (B, C, F, H, W) in [-1, 1], F = 1, 8 or 9: ``(latent_parameters, *new_cache)``,
        the parameters being mean and log-variance concatenated on channels (diffusers' ``latent_dist.parameters``)."""
        state = ConvCache(has_cache, cache or None)
        moments = self.encoder(sample, state)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        self._check(state.new, self.encoder_cache_shapes(sample.shape[0], *sample.shape[3:]), cache)
        return (moments, *state.new)

    @staticmethod
    def _check(new: list[torch.Tensor], expected: list[tuple[int, ...]], given: tuple[torch.Tensor, ...]) -> None:
        """Outside a trace: the caches made agree with the documented layout (and with the ones given)."""
        if torch.jit.is_tracing():
            return
        shapes = [tuple(t.shape) for t in new]
        if shapes != expected:
            raise AssertionError(f"conv cache shapes {shapes} differ from the documented layout {expected}")
        if given and [tuple(t.shape) for t in given] != shapes:
            raise AssertionError("the conv cache given does not have the layout's shapes")

    # whole videos --------------------------------------------------------------------------------------------------

    def decode(self, latent_sample: torch.Tensor) -> torch.Tensor:
        """A whole video through :meth:`decode_step` with diffusers' latent frame batches (2, the first taking the
        remainder), the cache carried from batch to batch as the graph carries it (zeros and ``has_cache`` False
        first)."""
        shapes = self.decoder_cache_shapes(latent_sample.shape[0], *latent_sample.shape[3:])
        return self._run(self.decode_step, latent_sample, self.num_latent_frames_batch_size, shapes)

    def encode(self, sample: torch.Tensor) -> torch.Tensor:
        """A whole video through :meth:`encode_step` with diffusers' frame batches (8, the first taking the
        remainder)."""
        shapes = self.encoder_cache_shapes(sample.shape[0], *sample.shape[3:])
        return self._run(self.encode_step, sample, self.num_sample_frames_batch_size, shapes)

    @staticmethod
    def _run(step, x: torch.Tensor, batch_size: int, shapes: list[tuple[int, ...]]) -> torch.Tensor:
        outputs, has_cache = [], torch.tensor([False], device=x.device)
        cache = [torch.zeros(shape, dtype=x.dtype, device=x.device) for shape in shapes]
        for frames in _frame_batches(x.shape[2], batch_size):
            out, *cache = step(x[:, :, frames], has_cache, *cache)
            has_cache = torch.tensor([True], device=x.device)
            outputs.append(out)
        return torch.cat(outputs, dim=2)


# ---------------------------------------------------------------------------------------------------- ONNX export


class StepGraph(nn.Module):
    """``decode_step`` or ``encode_step`` as a module with positional inputs, for ``torch.onnx.export``."""

    def __init__(self, model: AutoencoderKLCogVideoX, which: str):
        super().__init__()
        if which not in ("decode", "encode"):
            raise ValueError(f"which={which!r}: 'decode' or 'encode'")
        self.model = model
        self.which = which

    def forward(self, x: torch.Tensor, has_cache: torch.Tensor, *cache: torch.Tensor) -> tuple[torch.Tensor, ...]:
        step = self.model.decode_step if self.which == "decode" else self.model.encode_step
        return step(x, has_cache, *cache)


def step_graph_io(model: AutoencoderKLCogVideoX, which: str) -> tuple[list[str], list[str], dict[str, dict]]:
    """Input names, output names and dynamic axes of a step graph (names as the NumPy driver feeds them)."""
    f = model.spatial_scale
    if which == "decode":
        layout = model.decoder_cache_layout()
        x, y = "latent_sample", "sample"
        x_axes = {0: "batch", 2: "latent_frames", 3: "latent_height", 4: "latent_width"}
        y_axes = {0: "batch", 2: "frames", 3: f"latent_height*{f}", 4: f"latent_width*{f}"}
        cache_dims = [
            (f"latent_height*{k}", f"latent_width*{k}") if k > 1 else ("latent_height", "latent_width")
            for _, _, k in layout
        ]
    else:
        layout = model.encoder_cache_layout()
        x, y = "sample", "latent_parameters"
        x_axes = {0: "batch", 2: "frames", 3: "height", 4: "width"}
        y_axes = {0: "batch", 2: "latent_frames", 3: f"height/{f}", 4: f"width/{f}"}
        cache_dims = [(f"height/{k}", f"width/{k}") if k > 1 else ("height", "width") for _, _, k in layout]
    count = len(layout)
    inputs = [x, "has_cache", *(f"cache_in.{i}" for i in range(count))]
    outputs = [y, *(f"cache_out.{i}" for i in range(count))]
    axes = {x: x_axes, y: y_axes}
    for i, (height, width) in enumerate(cache_dims):
        axes[f"cache_in.{i}"] = axes[f"cache_out.{i}"] = {0: "batch", 3: height, 4: width}
    return inputs, outputs, axes


def export_step(
    model: AutoencoderKLCogVideoX,
    which: str,
    path,
    size: tuple[int, int, int, int] = (1, 2, 8, 8),
    opset: int = 17,
) -> None:
    """Trace ``decode_step`` (``which="decode"``) or ``encode_step`` to an ONNX file at ``path`` with dynamic batch,
    frames, height and width. ``size`` = (batch, frames, height, width) of the traced input: latent frames and size
    for the decoder, video frames and pixels for the encoder."""
    batch, frames, height, width = size
    channels = model.latent_channels if which == "decode" else model.in_channels
    shapes = (model.decoder_cache_shapes if which == "decode" else model.encoder_cache_shapes)(batch, height, width)
    args = (
        torch.zeros(batch, channels, frames, height, width),
        torch.tensor([True]),
        *(torch.zeros(shape) for shape in shapes),
    )
    inputs, outputs, axes = step_graph_io(model, which)
    with torch.no_grad():
        torch.onnx.export(
            StepGraph(model, which).eval(),
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )

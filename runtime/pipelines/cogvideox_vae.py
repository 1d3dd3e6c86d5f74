"""CogVideoX's 3D causal VAE, run as step graphs that carry their convolution cache (NumPy only, no torch).

diffusers decodes latents (B, C, T, h, w) in frame batches of ``num_latent_frames_batch_size`` = 2 latent frames, the
first batch taking the remainder (so a batch holds 1, 2 or 3 latent frames), and encodes videos in batches of
``num_sample_frames_batch_size`` = 8 frames (the first taking the remainder: 1, 8 or 9 frames). Every causal
convolution with a time kernel of 3 pads a batch with the last 2 frames of its padded input from the batch before
(its *conv cache*); the first batch pads with its first frame repeated. GroupNorm statistics span the frames of one
batch, so the batching decides the result and is reproduced here exactly.

The exported graphs are one such step each, and the cache goes in and out of them like an LLM's KV cache:

decoder step
    inputs ``latent_sample`` (B, latent_channels, T, h, w) float32, already divided by ``scaling_factor``;
    ``has_cache`` (1,) bool; ``cache_in.{i}`` (B, C_i, 2, h * f_i, w * f_i) float32 for each entry ``i`` of
    :func:`decoder_cache_specs`. Outputs ``sample`` (B, out_channels, T', 8h, 8w) and ``cache_out.{i}`` (same shapes
    as ``cache_in.{i}``). T' is 1, 8 or 9 for T = 1, 2, 3 (temporal compression 4).
encoder step
    inputs ``sample`` (B, in_channels, F, H, W) in [-1, 1]; ``has_cache``; ``cache_in.{i}`` (B, C_i, 2, H // f_i,
    W // f_i) for each entry of :func:`encoder_cache_specs`. Outputs ``latent_parameters`` (B, 2 * latent_channels,
    F', H // 8, W // 8) (mean, then log-variance: diffusers' ``latent_dist.parameters``) and ``cache_out.{i}``.

``has_cache`` False marks the first batch: the graph then ignores ``cache_in.*`` (any values of the documented shapes;
:class:`VideoVae` feeds zeros) and pads with the first frame, as diffusers does when its ``conv_cache`` is None.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..networks import (
    CacheSpec,
    decoder_cache_layout,
    decoder_cache_specs,
    encoder_cache_layout,
    encoder_cache_specs,
)
from ..networks import (
    _vae_get as _get,
)

Step = Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]]

DECODER_INPUT = "latent_sample"
DECODER_OUTPUT = "sample"
ENCODER_INPUT = "sample"
ENCODER_OUTPUT = "latent_parameters"
HAS_CACHE = "has_cache"
CACHE_TIME = 2  # frames a time-kernel-3 causal conv keeps


def cache_in(i: int) -> str:
    return f"cache_in.{i}"


def cache_out(i: int) -> str:
    return f"cache_out.{i}"


def decoder_cache_shapes(config: Mapping[str, Any], batch: int, latent_height: int, latent_width: int) -> list:
    """The shapes of ``cache_in.{i}`` / ``cache_out.{i}`` for a decoder step on latents of this size."""
    return [
        (batch, s.channels, CACHE_TIME, latent_height * s.factor, latent_width * s.factor)
        for s in decoder_cache_specs(config)
    ]


def encoder_cache_shapes(config: Mapping[str, Any], batch: int, height: int, width: int) -> list:
    """The shapes of ``cache_in.{i}`` / ``cache_out.{i}`` for an encoder step on frames of this size."""
    return [(batch, s.channels, CACHE_TIME, height // s.factor, width // s.factor) for s in encoder_cache_specs(config)]


def frame_batches(num_frames: int, batch_size: int) -> list[slice]:
    """diffusers' frame batches: ``max(n // size, 1)`` batches, the first one taking the ``n % size`` extra frames."""
    remaining = num_frames % batch_size
    count = max(num_frames // batch_size, 1)
    return [
        slice(batch_size * k + (0 if k == 0 else remaining), batch_size * (k + 1) + remaining) for k in range(count)
    ]


def ort_step(session: Any) -> Step:
    """A step callable over an ONNX Runtime ``InferenceSession`` (feeds and outputs by name)."""
    names = [output.name for output in session.get_outputs()]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, feeds), strict=True))

    return run


def blend_v(a: np.ndarray, b: np.ndarray, extent: int) -> np.ndarray:
    """Blend the bottom rows of tile ``a`` into the top rows of ``b`` linearly (in place on ``b``, as diffusers)."""
    extent = min(a.shape[3], b.shape[3], extent)
    for y in range(extent):
        b[:, :, :, y, :] = a[:, :, :, y - extent, :] * (1 - y / extent) + b[:, :, :, y, :] * (y / extent)
    return b


def blend_h(a: np.ndarray, b: np.ndarray, extent: int) -> np.ndarray:
    """Blend the right columns of tile ``a`` into the left columns of ``b`` (in place on ``b``)."""
    extent = min(a.shape[4], b.shape[4], extent)
    for x in range(extent):
        b[:, :, :, :, x] = a[:, :, :, :, x - extent] * (1 - x / extent) + b[:, :, :, :, x] * (x / extent)
    return b


@dataclass(frozen=True)
class _Direction:
    """What differs between decoding and encoding for the shared batching, slicing and tiling loop."""

    step: Step
    input_name: str
    output_name: str
    frames_per_batch: int
    cache_shapes: Callable[[int, int, int], list]
    tile_in: tuple[int, int]  # input tile size (height, width)
    tile_out: tuple[int, int]  # output tile size
    overlap: tuple[float, float]  # tile_overlap_factor_height, tile_overlap_factor_width


class VideoVae:
    """CogVideoX's VAE over its two step graphs: diffusers' ``AutoencoderKLCogVideoX.decode``/``encode`` with frame
    batching, conv-cache carrying, and optional slicing and tiling, in NumPy.

    ``decode_step`` / ``encode_step`` take feeds by name and return outputs by name (see the module docstring; wrap an
    ONNX Runtime session with :func:`ort_step`). ``config`` is the VAE's diffusers ``config.json`` dict. ``slicing``
    runs one batch element at a time (diffusers' ``enable_slicing``); ``tiling`` splits frames into overlapping
    tiles that are blended (``enable_tiling``), with diffusers' parameter names and defaults (half of
    ``sample_height`` / ``sample_width``, overlap factors 1/6 and 1/5). Each step sees one frame batch of one slice
    and one tile, so a step's memory stays the same whatever the frame count and, with tiling, the image size;
    :meth:`iter_decode` yields the decoded video batch by batch.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        decode_step: Step | None = None,
        encode_step: Step | None = None,
        *,
        slicing: bool = False,
        tiling: bool = False,
        tile_sample_min_height: int | None = None,
        tile_sample_min_width: int | None = None,
        tile_overlap_factor_height: float | None = None,
        tile_overlap_factor_width: float | None = None,
        num_latent_frames_batch_size: int = 2,
        num_sample_frames_batch_size: int = 8,
    ):
        self.config = dict(config)
        self.decode_step = decode_step
        self.encode_step = encode_step
        self.use_slicing = slicing
        self.use_tiling = False
        self.num_latent_frames_batch_size = num_latent_frames_batch_size
        self.num_sample_frames_batch_size = num_sample_frames_batch_size
        self.spatial_scale = 2 ** (len(_get(config, "block_out_channels")) - 1)
        self.latent_channels = _get(config, "latent_channels")
        self.tile_sample_min_height = _get(config, "sample_height") // 2
        self.tile_sample_min_width = _get(config, "sample_width") // 2
        self.tile_overlap_factor_height = 1 / 6
        self.tile_overlap_factor_width = 1 / 5
        self.enable_tiling(
            tile_sample_min_height, tile_sample_min_width, tile_overlap_factor_height, tile_overlap_factor_width
        )
        self.use_tiling = tiling

    # diffusers' switches -------------------------------------------------------------------------------------------

    def enable_tiling(
        self,
        tile_sample_min_height: int | None = None,
        tile_sample_min_width: int | None = None,
        tile_overlap_factor_height: float | None = None,
        tile_overlap_factor_width: float | None = None,
    ) -> None:
        """Turn tiling on; a value left None keeps the current one (diffusers' ``enable_tiling``)."""
        self.use_tiling = True
        self.tile_sample_min_height = tile_sample_min_height or self.tile_sample_min_height
        self.tile_sample_min_width = tile_sample_min_width or self.tile_sample_min_width
        self.tile_overlap_factor_height = tile_overlap_factor_height or self.tile_overlap_factor_height
        self.tile_overlap_factor_width = tile_overlap_factor_width or self.tile_overlap_factor_width
        if not 0 < self.tile_overlap_factor_height < 1 or not 0 < self.tile_overlap_factor_width < 1:
            raise ConfigError("tile_overlap_factor_height and tile_overlap_factor_width must lie between 0 and 1.")

    def disable_tiling(self) -> None:
        self.use_tiling = False

    def enable_slicing(self) -> None:
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    @property
    def tile_latent_min_height(self) -> int:
        return int(self.tile_sample_min_height / self.spatial_scale)

    @property
    def tile_latent_min_width(self) -> int:
        return int(self.tile_sample_min_width / self.spatial_scale)

    # decode / encode -----------------------------------------------------------------------------------------------

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Video (B, out_channels, frames, H, W) of latents (B, latent_channels, T, h, w) already divided by
        ``scaling_factor`` (diffusers' ``vae.decode(z).sample``)."""
        return np.concatenate(list(self.iter_decode(z)), axis=2)

    def iter_decode(self, z: np.ndarray) -> Iterator[np.ndarray]:
        """The decoded video one frame batch at a time (1, 8 or 9 frames each at temporal compression 4)."""
        if self.decode_step is None:
            raise ConfigError("this VideoVae has no decode_step.")
        height, width = z.shape[3:]
        tiled = self.use_tiling and (width > self.tile_latent_min_width or height > self.tile_latent_min_height)
        direction = _Direction(
            self.decode_step,
            DECODER_INPUT,
            DECODER_OUTPUT,
            self.num_latent_frames_batch_size,
            lambda b, h, w: decoder_cache_shapes(self.config, b, h, w),
            (self.tile_latent_min_height, self.tile_latent_min_width),
            (self.tile_sample_min_height, self.tile_sample_min_width),
            (self.tile_overlap_factor_height, self.tile_overlap_factor_width),
        )
        return self._run(direction, np.ascontiguousarray(z, dtype=np.float32), tiled)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Posterior parameters (B, 2 * latent_channels, T, H / 8, W / 8) of videos (B, in_channels, F, H, W) in
        [-1, 1]: mean then log-variance, diffusers' ``vae.encode(x).latent_dist.parameters``."""
        return np.concatenate(list(self.iter_encode(x)), axis=2)

    def iter_encode(self, x: np.ndarray) -> Iterator[np.ndarray]:
        """The latent parameters one frame batch at a time."""
        if self.encode_step is None:
            raise ConfigError("this VideoVae has no encode_step.")
        height, width = x.shape[3:]
        tiled = self.use_tiling and (width > self.tile_sample_min_width or height > self.tile_sample_min_height)
        direction = _Direction(
            self.encode_step,
            ENCODER_INPUT,
            ENCODER_OUTPUT,
            self.num_sample_frames_batch_size,
            lambda b, h, w: encoder_cache_shapes(self.config, b, h, w),
            (self.tile_sample_min_height, self.tile_sample_min_width),
            (self.tile_latent_min_height, self.tile_latent_min_width),
            (self.tile_overlap_factor_height, self.tile_overlap_factor_width),
        )
        return self._run(direction, np.ascontiguousarray(x, dtype=np.float32), tiled)

    # the shared loop -----------------------------------------------------------------------------------------------

    def _run(self, d: _Direction, x: np.ndarray, tiled: bool) -> Iterator[np.ndarray]:
        """Frame batches outermost, then batch slices, then tiles: each (slice, tile) carries its own cache, so the
        result is diffusers' (which runs every slice and tile through all frame batches before the next)."""
        if x.ndim != 5:
            raise ConfigError(f"{d.input_name} must have 5 dimensions (B, C, T, H, W); got shape {x.shape}.")
        slices = [slice(b, b + 1) for b in range(x.shape[0])] if self.use_slicing and x.shape[0] > 1 else [slice(None)]
        height, width = x.shape[3:]
        if tiled:
            stride = (int(d.tile_in[0] * (1 - d.overlap[0])), int(d.tile_in[1] * (1 - d.overlap[1])))
            tiles = [
                [(slice(i, i + d.tile_in[0]), slice(j, j + d.tile_in[1])) for j in range(0, width, stride[1])]
                for i in range(0, height, stride[0])
            ]
        else:
            tiles = [[(slice(None), slice(None))]]
        caches: dict[tuple[int, int, int], list[np.ndarray] | None] = {}
        for frames in frame_batches(x.shape[2], d.frames_per_batch):
            parts = []
            for s, batch in enumerate(slices):
                rows = []
                for i, row in enumerate(tiles):
                    outputs = []
                    for j, (ys, xs) in enumerate(row):
                        outputs.append(self._step(d, x[batch, :, frames, ys, xs], caches, (s, i, j)))
                    rows.append(outputs)
                parts.append(self._blend(d, rows) if tiled else rows[0][0])
            yield np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]

    @staticmethod
    def _step(d: _Direction, chunk: np.ndarray, caches: dict, key: tuple[int, int, int]) -> np.ndarray:
        chunk = np.ascontiguousarray(chunk)
        cache = caches.get(key)
        if cache is None:
            shapes = d.cache_shapes(chunk.shape[0], *chunk.shape[3:])
            cache = [np.zeros(shape, np.float32) for shape in shapes]
        feeds = {d.input_name: chunk, HAS_CACHE: np.array([key in caches], dtype=bool)}
        feeds.update({cache_in(i): tensor for i, tensor in enumerate(cache)})
        outputs = d.step(feeds)
        caches[key] = [np.asarray(outputs[cache_out(i)]) for i in range(len(cache))]
        result = np.asarray(outputs[d.output_name], dtype=np.float32)
        return result if result.flags.writeable else result.copy()  # tile blending writes into it

    @staticmethod
    def _blend(d: _Direction, rows: list[list[np.ndarray]]) -> np.ndarray:
        """diffusers' tile blending: each tile blended (in place) with the already blended tiles above and to its
        left, then cropped to the row limit."""
        extent = (int(d.tile_out[0] * d.overlap[0]), int(d.tile_out[1] * d.overlap[1]))
        limit = (d.tile_out[0] - extent[0], d.tile_out[1] - extent[1])
        result_rows = []
        for i, row in enumerate(rows):
            result_row = []
            for j, tile in enumerate(row):
                if i > 0:
                    tile = blend_v(rows[i - 1][j], tile, extent[0])
                if j > 0:
                    tile = blend_h(row[j - 1], tile, extent[1])
                result_row.append(tile[:, :, :, : limit[0], : limit[1]])
            result_rows.append(np.concatenate(result_row, axis=4))
        return np.concatenate(result_rows, axis=3)


__all__ = [
    "CacheSpec",
    "VideoVae",
    "blend_h",
    "blend_v",
    "decoder_cache_layout",
    "decoder_cache_shapes",
    "decoder_cache_specs",
    "encoder_cache_layout",
    "encoder_cache_shapes",
    "encoder_cache_specs",
    "frame_batches",
    "ort_step",
]

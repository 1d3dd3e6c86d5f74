"""CogVideoX's positional inputs, computed in NumPy as diffusers computes them (this module never imports torch).

The transformer graph takes its positions as inputs:

* ``rotary_embeddings``: the (cos, sin) rotary tables that diffusers' ``CogVideoXPipeline`` (and the image- and
  video-to-video pipelines, which share the code) pass as ``image_rotary_emb``: CogVideoX 1.0's "linspace" grid,
  resized and centre-cropped onto the transformer's sample size, or CogVideoX 1.5's "slice" grid (``patch_size_t``).
* ``sincos_pos_embedding``: the image part of ``CogVideoXPatchEmbed``'s 3D sin-cos table for a given latent size
  (CogVideoX-2b; the text rows of diffusers' joint table are zeros, so the graph adds it to the image tokens only).
* ``uses_learned_table``: whether diffusers adds an image-to-video model's *learned* table (which the exporter
  stores beside the graph) or recomputes the sin-cos one for that frame count.

Arithmetic follows diffusers' dtypes: the rotary tables are float32 throughout (frequencies, positions, angles),
the sin-cos table is taken in float64 and rounded to float32. The float32 grid positions and frequencies are
torch's bit for bit (see ``_linspace32``); cos and sin are taken in float64 and rounded, so they are within a float32
ulp of torch's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ConfigError

# diffusers' CogVideoXTransformer3DModel defaults, for config keys a config.json leaves out.
DEFAULTS: dict[str, Any] = {
    "num_attention_heads": 30,
    "attention_head_dim": 64,
    "sample_width": 90,
    "sample_height": 60,
    "sample_frames": 49,
    "patch_size": 2,
    "patch_size_t": None,
    "temporal_compression_ratio": 4,
    "spatial_interpolation_scale": 1.875,
    "temporal_interpolation_scale": 1.0,
    "use_rotary_positional_embeddings": False,
    "use_learned_positional_embeddings": False,
}
ROPE_THETA = 10000.0


def _get(config: Mapping[str, Any], key: str) -> Any:
    value = config.get(key, DEFAULTS[key])
    return DEFAULTS[key] if value is None and key != "patch_size_t" else value


def _check_size(latent_frames: int, latent_height: int, latent_width: int) -> None:
    for name, value in (
        ("latent_frames", latent_frames),
        ("latent_height", latent_height),
        ("latent_width", latent_width),
    ):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ConfigError(f"{name}={value!r} is not supported; accepted values: positive integers.")


# ----- rotary embeddings ----------------------------------------------------------------------------------------
def _resize_crop_region(grid_height: int, grid_width: int, base_width: int, base_height: int):
    """The (top, left), (bottom, right) corners of the ``grid`` resized to fit the base grid and centred in it
    (diffusers' ``get_resize_crop_region_for_grid``; Python's ``round`` rounds halves to even, as there)."""
    if grid_height / grid_width > base_height / base_width:
        resize_height = base_height
        resize_width = int(round(base_height / grid_height * grid_width))
    else:
        resize_width = base_width
        resize_height = int(round(base_width / grid_width * grid_height))
    top = int(round((base_height - resize_height) / 2.0))
    left = int(round((base_width - resize_width) / 2.0))
    return (top, left), (top + resize_height, left + resize_width)


def _linspace32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps, dtype=torch.float32)`` as torch's CPU kernel computes it.

    Both ends are rounded to float32 and the step is ``(end - start) / (steps - 1)`` in float32; the first half
    counts up from ``start`` (``start + step * i``), the second half down from ``end`` (``end - step * k``), each a
    fused multiply-add (the kernel is built with FMA contraction), i.e. the exact value rounded once to float32.
    float64 holds those exact values here (a float32 step times a small integer plus a float32 of similar size), so
    one rounding to float32 reproduces the kernel's values bit for bit.
    """
    first, last = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([first], dtype=np.float32)
    step = np.float32(np.float32(last - first) / np.float32(steps - 1))
    index = np.arange(steps)
    half = steps // 2
    up = np.float64(first) + np.float64(step) * index[:half].astype(np.float64)
    down = np.float64(last) - np.float64(step) * (steps - 1 - index[half:]).astype(np.float64)
    return np.concatenate([up, down]).astype(np.float32)


def _axis_tables(dim: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin) of ``positions x frequencies`` for one axis, each frequency repeated twice: (len, dim) float32.

    Frequencies are ``1 / theta ** (2i / dim)`` in float32, angles a float32 product, as diffusers'
    ``get_1d_rotary_pos_embed`` makes them.
    """
    exponent = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    frequencies = np.float32(1.0) / (ROPE_THETA ** exponent.astype(np.float64)).astype(np.float32)
    angles = np.outer(positions.astype(np.float32), frequencies).astype(np.float32)
    cos = np.cos(angles.astype(np.float64)).astype(np.float32)
    sin = np.sin(angles.astype(np.float64)).astype(np.float32)
    return np.repeat(cos, 2, axis=1), np.repeat(sin, 2, axis=1)


def _combine(t: np.ndarray, h: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(frames x rows x columns, dim_t + dim_h + dim_w): per token its frame's, row's and column's columns."""
    frames, rows, cols = t.shape[0], h.shape[0], w.shape[0]
    table = np.concatenate(
        [
            np.broadcast_to(t[:, None, None, :], (frames, rows, cols, t.shape[1])),
            np.broadcast_to(h[None, :, None, :], (frames, rows, cols, h.shape[1])),
            np.broadcast_to(w[None, None, :, :], (frames, rows, cols, w.shape[1])),
        ],
        axis=-1,
    )
    return np.ascontiguousarray(table.reshape(frames * rows * cols, -1), dtype=np.float32)


def rotary_embeddings(
    config: Mapping[str, Any],
    latent_frames: int,
    latent_height: int,
    latent_width: int,
    vae_scale_factor_spatial: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """The transformer's ``rotary_cos`` and ``rotary_sin`` inputs, each (tokens, attention_head_dim) float32.

    ``config`` is the transformer's ``config.json``; the size is the latents' (frames, height, width), with the
    frames counted after any CogVideoX 1.5 padding (the pipeline's ``latents.size(1)``). These are the values
    ``CogVideoXPipeline._prepare_rotary_positional_embeddings`` computes for the pixel size
    ``latent_height x vae_scale_factor_spatial`` by ``latent_width x vae_scale_factor_spatial`` (the image- and
    video-to-video pipelines compute them the same way). diffusers divides the pixel size by
    ``vae_scale_factor_spatial x patch_size``, which is ``latent size // patch_size`` for any scale factor, so the
    factor is accepted for that signature and does not change the result.
    """
    _check_size(latent_frames, latent_height, latent_width)
    del vae_scale_factor_spatial  # (h * f) // (f * p) == h // p
    p = _get(config, "patch_size")
    p_t = _get(config, "patch_size_t")
    head_dim = _get(config, "attention_head_dim")
    if head_dim % 16:
        raise ConfigError(
            f"attention_head_dim={head_dim!r} is not supported for rotary embeddings; accepted values: multiples of "
            "16 (diffusers splits each head into frame, row and column parts of head_dim/4, 3*head_dim/8 and "
            "3*head_dim/8 channels, each an even number)."
        )
    dim_t, dim_hw = head_dim // 4, head_dim // 8 * 3
    rows, cols = latent_height // p, latent_width // p
    if rows < 1 or cols < 1:
        raise ConfigError(
            f"latent size {latent_height}x{latent_width} is smaller than one patch ({p}x{p}); accepted: at least "
            f"{p} latent rows and columns."
        )
    base_width, base_height = _get(config, "sample_width") // p, _get(config, "sample_height") // p

    if p_t is None:  # CogVideoX 1.0: the grid resized onto the base grid, centred, sampled evenly
        frames = latent_frames
        (top, left), (bottom, right) = _resize_crop_region(rows, cols, base_width, base_height)
        pos_h = _linspace32(top, bottom * (rows - 1) / rows, rows)
        pos_w = _linspace32(left, right * (cols - 1) / cols, cols)
        pos_t = _linspace32(0, frames * (frames - 1) / frames, frames)
    else:  # CogVideoX 1.5: integer positions, the first rows / columns of the base grid
        frames = (latent_frames + p_t - 1) // p_t
        if rows > base_height or cols > base_width:
            raise ConfigError(
                f"latent size {latent_height}x{latent_width} gives a {rows}x{cols} patch grid; this CogVideoX 1.5 "
                f"transformer's rotary grid has {base_height}x{base_width} patches (sample_height="
                f"{_get(config, 'sample_height')}, sample_width={_get(config, 'sample_width')}); accepted: latent "
                f"height at most {base_height * p} and width at most {base_width * p}."
            )
        pos_t = np.arange(frames, dtype=np.float32)
        pos_h = np.arange(rows, dtype=np.float32)
        pos_w = np.arange(cols, dtype=np.float32)

    t_cos, t_sin = _axis_tables(dim_t, pos_t)
    h_cos, h_sin = _axis_tables(dim_hw, pos_h)
    w_cos, w_sin = _axis_tables(dim_hw, pos_w)
    return _combine(t_cos, h_cos, w_cos), _combine(t_sin, h_sin, w_sin)


# ----- sin-cos positional embeddings ----------------------------------------------------------------------------
def _sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """``[sin(pos * omega), cos(pos * omega)]``, ``omega = 1 / 10000 ** (i / (dim/2))``: (len, dim) float64."""
    if dim % 2:
        raise ConfigError(f"a sin-cos positional embedding needs an even width; got {dim}.")
    omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
    omega = 1.0 / 10000.0**omega
    angles = np.outer(positions.astype(np.float64).reshape(-1), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_pos_embedding(
    config: Mapping[str, Any], latent_frames: int, latent_height: int, latent_width: int
) -> np.ndarray:
    """The transformer's ``pos_embedding`` input for a sin-cos model: (1, tokens, inner_dim) float32.

    Equal to the image rows of ``CogVideoXPatchEmbed._get_positional_embeddings`` for latents of that size (which
    diffusers recomputes whenever the size or frame count is not the sample size, and otherwise reads from its
    buffer, which holds the same numbers). Per token: a quarter of the channels encode the frame, the other three
    quarters the column and row (in that order), positions divided by the interpolation scales.
    """
    _check_size(latent_frames, latent_height, latent_width)
    p = _get(config, "patch_size")
    embed_dim = _get(config, "num_attention_heads") * _get(config, "attention_head_dim")
    if embed_dim % 16:
        raise ConfigError(
            f"num_attention_heads x attention_head_dim = {embed_dim} is not supported for sin-cos positional "
            "embeddings; accepted: a multiple of 16 (each of the frame, column and row parts needs an even width)."
        )
    tcr = _get(config, "temporal_compression_ratio")
    # diffusers turns latent frames into pixel frames and back: (((F - 1) * r + 1) - 1) // r + 1 == F
    frames = ((latent_frames - 1) * tcr + 1 - 1) // tcr + 1
    rows, cols = latent_height // p, latent_width // p
    if rows < 1 or cols < 1:
        raise ConfigError(
            f"latent size {latent_height}x{latent_width} is smaller than one patch ({p}x{p}); accepted: at least "
            f"{p} latent rows and columns."
        )
    spatial_scale = np.float32(_get(config, "spatial_interpolation_scale"))
    temporal_scale = np.float32(_get(config, "temporal_interpolation_scale"))
    dim_spatial, dim_temporal = 3 * embed_dim // 4, embed_dim // 4

    # positions in float32 (as diffusers' grids), embeddings in float64
    column = np.arange(cols, dtype=np.float32) / spatial_scale
    row = np.arange(rows, dtype=np.float32) / spatial_scale
    column_grid = np.broadcast_to(column[None, :], (rows, cols))
    row_grid = np.broadcast_to(row[:, None], (rows, cols))
    spatial = np.concatenate(
        [_sincos_1d(dim_spatial // 2, column_grid), _sincos_1d(dim_spatial // 2, row_grid)], axis=1
    )  # (rows * cols, 3D/4)
    temporal = _sincos_1d(dim_temporal, np.arange(frames, dtype=np.float32) / temporal_scale)  # (frames, D/4)

    table = np.concatenate(
        [
            np.broadcast_to(temporal[:, None, :], (frames, rows * cols, dim_temporal)),
            np.broadcast_to(spatial[None, :, :], (frames, rows * cols, dim_spatial)),
        ],
        axis=-1,
    )
    return np.ascontiguousarray(table.reshape(1, frames * rows * cols, embed_dim), dtype=np.float32)


def uses_learned_table(config: Mapping[str, Any], latent_frames: int, latent_height: int, latent_width: int) -> bool:
    """Whether diffusers adds the transformer's learned ``pos_embedding`` table for latents of this size.

    Only a model with ``use_learned_positional_embeddings`` has one, and diffusers uses it only at the sample size
    and frame count (``(latent_frames - 1) * temporal_compression_ratio + 1 == sample_frames``); for another frame
    count it recomputes the sin-cos table (:func:`sincos_pos_embedding`). Like diffusers, a learned model refuses
    another height or width: that raises ``ConfigError`` (a ``ValueError``).
    """
    _check_size(latent_frames, latent_height, latent_width)
    if not _get(config, "use_learned_positional_embeddings"):
        return False
    sample_height, sample_width = _get(config, "sample_height"), _get(config, "sample_width")
    if (latent_height, latent_width) != (sample_height, sample_width):
        raise ConfigError(
            f"latent height x width {latent_height}x{latent_width} is not supported by this transformer's learned "
            f"positional embeddings; accepted: only its sample size, latent {sample_height}x{sample_width} (height x "
            f"width; pixels: that times the VAE's scale factor)."
        )
    pixel_frames = (latent_frames - 1) * _get(config, "temporal_compression_ratio") + 1
    return pixel_frames == _get(config, "sample_frames")


__all__ = ["rotary_embeddings", "sincos_pos_embedding", "uses_learned_table"]

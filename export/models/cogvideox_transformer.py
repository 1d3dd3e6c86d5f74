"""CogVideoX's denoiser (diffusers' ``CogVideoXTransformer3DModel``), written for ONNX export.

Text tokens and video patches run through one stack of blocks with joint self-attention; each block modulates its
LayerNorms with the timestep embedding (separate shift / scale / gate for text and video, diffusers'
``CogVideoXLayerNormZero``). Covered: CogVideoX-2b (3D sin-cos positional embeddings), 5b (rotary embeddings),
5b-I2V (rotary plus a learned table), and 1.5 (``patch_size_t``: patches span frames too, projected by a Linear;
``ofs_embed_dim``: an extra "ofs" embedding added to the timestep embedding).

Positions are graph inputs, computed by the runtime in NumPy (:mod:`diffrt.runtime.pipelines.cogvideox_positions`):
``rotary_cos`` / ``rotary_sin`` (what diffusers' pipeline passes as ``image_rotary_emb``) and ``pos_embedding``,
the image rows of diffusers' joint table (its text rows are zeros, so adding only to the image tokens is the same
arithmetic, and the text may have any length). A learned table stays a buffer (``patch_embed.pos_embedding``, so a
diffusers state dict loads strictly) but is fed as ``pos_embedding`` too: diffusers replaces it by the sin-cos table
at another frame count. (diffusers adds a learned table's first ``max_text_seq_length`` rows to the text tokens
too; this graph does not, which is the same only while those rows are zero, as in a table diffusers initialises.)
Shapes come from the tensors, so a traced graph is dynamic in batch, frames, height, width
and text length; attention is written out as ``softmax(q k^T / sqrt(d)) v``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigError, not_supported
from .embeddings import TimestepEmbedding, Timesteps

FF_ACTIVATIONS = {"gelu": "none", "gelu-approximate": "tanh"}


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of (B, H, N, D) ``x`` by the angles whose (N, D) cos / sin are given (each
    angle repeated for both channels of its pair): ``x * cos + (-x_{2i+1}, x_{2i}) * sin``, in float32 like diffusers
    (a no-op for a float32 model)."""
    pairs = x.unflatten(-1, (-1, 2))
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class CogVideoXPatchEmbed(nn.Module):
    """Text projection and video patch embedding; returns the text and the image tokens (positions added).

    CogVideoX 1.0 embeds each frame's p x p patches with a strided Conv2d; 1.5 gathers p_t x p x p patches across
    frames and projects them with a Linear. Tokens run frame by frame, row by row.
    """

    def __init__(
        self,
        patch_size: int,
        patch_size_t: int | None,
        in_channels: int,
        embed_dim: int,
        text_embed_dim: int,
        bias: bool,
        learned_table_tokens: int | None,
    ):
        super().__init__()
        self.patch_size = patch_size
        self.patch_size_t = patch_size_t
        if patch_size_t is None:
            self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)
        else:  # diffusers gives this Linear a bias whatever patch_bias says
            self.proj = nn.Linear(in_channels * patch_size * patch_size * patch_size_t, embed_dim)
        self.text_proj = nn.Linear(text_embed_dim, embed_dim)
        if learned_table_tokens is not None:
            # (1, max_text_seq_length + sample tokens, embed_dim): filled by load_state_dict, read by the exporter
            self.register_buffer("pos_embedding", torch.zeros(1, learned_table_tokens, embed_dim), persistent=True)

    def forward(self, text: torch.Tensor, video: torch.Tensor, pos_embedding: torch.Tensor | None):
        """(text tokens, image tokens, (patch frames, patch rows, patch columns)), the grid sizes as traced shape
        values for undoing the patching."""
        text_tokens = self.text_proj(text)
        batch, frames = video.shape[0], video.shape[1]
        p = self.patch_size
        if self.patch_size_t is None:
            x = self.proj(video.flatten(0, 1))  # (B*F, D, h, w)
            grid = (frames, x.shape[2], x.shape[3])
            x = x.flatten(2).transpose(1, 2)  # (B*F, h*w, D)
            image_tokens = x.reshape(batch, -1, x.shape[-1])  # (B, F*h*w, D)
        else:
            # (sizes read after ``unflatten`` would be traced as constants; the input's shape stays dynamic)
            grid = (frames // self.patch_size_t, video.shape[3] // p, video.shape[4] // p)
            x = video.permute(0, 1, 3, 4, 2)  # B, F, H, W, C
            x = x.unflatten(3, (-1, p)).unflatten(2, (-1, p)).unflatten(1, (-1, self.patch_size_t))
            # B, F/pt, pt, h, p, w, p, C -> B, F/pt, h, w, C, pt, p, p
            x = x.permute(0, 1, 3, 5, 7, 2, 4, 6).flatten(4, 7).flatten(1, 3)  # B, F/pt * h * w, C*pt*p*p
            image_tokens = self.proj(x)
        if pos_embedding is not None:
            image_tokens = image_tokens + pos_embedding.to(image_tokens.dtype)
        return text_tokens, image_tokens, grid


class LayerNormZero(nn.Module):
    """diffusers' ``CogVideoXLayerNormZero``: LayerNorm of text and video, each shifted and scaled by its own part
    of ``linear(silu(temb))``; also returns the two gates for the residual branches."""

    def __init__(self, conditioning_dim: int, dim: int, elementwise_affine: bool, eps: float):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(conditioning_dim, 6 * dim)
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, hidden: torch.Tensor, text: torch.Tensor, temb: torch.Tensor):
        shift, scale, gate, text_shift, text_scale, text_gate = self.linear(self.silu(temb)).chunk(6, dim=1)
        hidden = self.norm(hidden) * (1 + scale)[:, None, :] + shift[:, None, :]
        text = self.norm(text) * (1 + text_scale)[:, None, :] + text_shift[:, None, :]
        return hidden, text, gate[:, None, :], text_gate[:, None, :]


class JointAttention(nn.Module):
    """Self-attention over [text; video] with per-head LayerNorm on queries and keys, rotary positions on the video
    queries and keys (when given), and one output projection (diffusers' ``CogVideoXAttnProcessor2_0``)."""

    def __init__(self, dim: int, heads: int, head_dim: int, bias: bool, out_bias: bool = True):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.scale = head_dim**-0.5
        self.norm_q = nn.LayerNorm(head_dim, eps=1e-6)
        self.norm_k = nn.LayerNorm(head_dim, eps=1e-6)
        self.to_q = nn.Linear(dim, inner, bias=bias)
        self.to_k = nn.Linear(dim, inner, bias=bias)
        self.to_v = nn.Linear(dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim, bias=out_bias)])  # diffusers' to_out.1 is a dropout

    def forward(
        self,
        hidden: torch.Tensor,
        text: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        text_length = text.shape[1]
        x = torch.cat([text, hidden], dim=1)
        batch = x.shape[0]
        q = self.to_q(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # B, H, N, d
        k = self.to_k(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        v = self.to_v(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        q = self.norm_q(q)
        k = self.norm_k(k)
        if rotary is not None:
            cos, sin = rotary
            q = torch.cat([q[:, :, :text_length], apply_rotary(q[:, :, text_length:], cos, sin)], dim=2)
            k = torch.cat([k[:, :, :text_length], apply_rotary(k[:, :, text_length:], cos, sin)], dim=2)
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        out = torch.matmul(scores.softmax(dim=-1), v)  # B, H, N, d
        out = out.transpose(1, 2).reshape(batch, -1, q.shape[1] * q.shape[3])
        out = self.to_out[0](out)
        return out[:, text_length:], out[:, :text_length]


class GELUProjection(nn.Module):
    """``gelu(proj(x))`` (diffusers' ``GELU`` activation module of its ``FeedForward``)."""

    def __init__(self, dim_in: int, dim_out: int, approximate: str, bias: bool):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out, bias=bias)
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate=self.approximate)


class FeedForward(nn.Module):
    """``net.2(gelu(net.0.proj(x)))`` with diffusers' names (``net.1`` and ``net.3`` are dropouts there)."""

    def __init__(self, dim: int, approximate: str, inner_dim: int | None = None, bias: bool = True):
        super().__init__()
        inner_dim = inner_dim or 4 * dim
        self.net = nn.ModuleList(
            [GELUProjection(dim, inner_dim, approximate, bias), nn.Identity(), nn.Linear(inner_dim, dim, bias=bias)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class CogVideoXBlock(nn.Module):
    """Modulated joint attention and feed-forward over text and video, each with a gated residual."""

    def __init__(
        self,
        dim: int,
        heads: int,
        head_dim: int,
        time_embed_dim: int,
        approximate: str,
        attention_bias: bool,
        elementwise_affine: bool,
        eps: float,
    ):
        super().__init__()
        self.norm1 = LayerNormZero(time_embed_dim, dim, elementwise_affine, eps)
        self.attn1 = JointAttention(dim, heads, head_dim, attention_bias)
        self.norm2 = LayerNormZero(time_embed_dim, dim, elementwise_affine, eps)
        self.ff = FeedForward(dim, approximate)

    def forward(
        self,
        hidden: torch.Tensor,
        text: torch.Tensor,
        temb: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        text_length = text.shape[1]
        norm_hidden, norm_text, gate, text_gate = self.norm1(hidden, text, temb)
        attn_hidden, attn_text = self.attn1(norm_hidden, norm_text, rotary)
        hidden = hidden + gate * attn_hidden
        text = text + text_gate * attn_text

        norm_hidden, norm_text, gate, text_gate = self.norm2(hidden, text, temb)
        ff = self.ff(torch.cat([norm_text, norm_hidden], dim=1))
        hidden = hidden + gate * ff[:, text_length:]
        text = text + text_gate * ff[:, :text_length]
        return hidden, text


class AdaLayerNormOut(nn.Module):
    """diffusers' ``AdaLayerNorm`` as CogVideoX builds it (``chunk_dim=1``): ``norm(x) * (1 + scale) + shift`` with
    ``shift, scale = linear(silu(temb))``."""

    def __init__(self, embedding_dim: int, dim: int, elementwise_affine: bool, eps: float):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(embedding_dim, 2 * dim)
        self.norm = nn.LayerNorm(dim, eps, elementwise_affine)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        shift, scale = self.linear(self.silu(temb)).chunk(2, dim=1)
        return self.norm(x) * (1 + scale[:, None, :]) + shift[:, None, :]


class CogVideoXTransformer3DModel(nn.Module):
    """diffusers' ``CogVideoXTransformer3DModel``, built from its ``config.json`` (``Model(**config)``).

    Parameter and buffer names equal diffusers', so ``load_state_dict(diffusers_model.state_dict(), strict=True)``
    works. Config keys that start with ``_`` and keys diffusers does not know are ignored; ``dropout`` changes
    nothing at inference. Values these modules do not implement raise a ``ConfigError`` (a ``ValueError``) naming
    the key.

    :meth:`forward` takes ``hidden_states`` (B, F, C, H, W) latents, ``encoder_hidden_states`` (B, S, text_embed_dim),
    ``timestep`` (B,), ``ofs`` (B,) or (1,) when ``ofs_embed_dim`` is set, ``rotary_cos`` / ``rotary_sin``
    (tokens, attention_head_dim) when ``use_rotary_positional_embeddings``, and ``pos_embedding``
    (1, tokens, inner_dim) unless the model is rotary-only; tokens = F / patch_size_t x H / p x W / p.
    """

    def __init__(
        self,
        num_attention_heads: int = 30,
        attention_head_dim: int = 64,
        in_channels: int = 16,
        out_channels: int | None = 16,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        time_embed_dim: int = 512,
        ofs_embed_dim: int | None = None,
        text_embed_dim: int = 4096,
        num_layers: int = 30,
        dropout: float = 0.0,
        attention_bias: bool = True,
        sample_width: int = 90,
        sample_height: int = 60,
        sample_frames: int = 49,
        patch_size: int = 2,
        patch_size_t: int | None = None,
        temporal_compression_ratio: int = 4,
        max_text_seq_length: int = 226,
        activation_fn: str = "gelu-approximate",
        timestep_activation_fn: str = "silu",
        norm_elementwise_affine: bool = True,
        norm_eps: float = 1e-5,
        spatial_interpolation_scale: float = 1.875,
        temporal_interpolation_scale: float = 1.0,
        use_rotary_positional_embeddings: bool = False,
        use_learned_positional_embeddings: bool = False,
        patch_bias: bool = True,
        **ignored: Any,
    ):
        super().__init__()
        if use_learned_positional_embeddings and not use_rotary_positional_embeddings:
            raise ConfigError(
                "use_learned_positional_embeddings=True needs use_rotary_positional_embeddings=True (diffusers "
                "refuses learned positional embeddings without rotary ones too)."
            )
        if activation_fn not in FF_ACTIVATIONS:
            raise not_supported(
                "activation_fn", activation_fn, "the feed-forward supports 'gelu-approximate' and 'gelu'"
            )
        if out_channels is None:
            raise ConfigError("out_channels=None is not supported; accepted values: a positive integer.")
        self.rotary = bool(use_rotary_positional_embeddings)
        self.positional = not self.rotary or bool(use_learned_positional_embeddings)
        if patch_size_t is not None and self.positional:
            raise not_supported(
                "patch_size_t",
                patch_size_t,
                "diffusers' positional embedding tables count one token per frame; with patches across frames only "
                "rotary positions (use_learned_positional_embeddings=False) fit",
            )
        inner_dim = num_attention_heads * attention_head_dim
        self.patch_size = patch_size
        self.patch_size_t = patch_size_t
        self.out_channels = out_channels
        self.max_text_seq_length = max_text_seq_length

        learned_tokens = None
        if use_learned_positional_embeddings:
            frames = (sample_frames - 1) // temporal_compression_ratio + 1
            patches = (sample_height // patch_size) * (sample_width // patch_size) * frames
            learned_tokens = max_text_seq_length + patches
        self.patch_embed = CogVideoXPatchEmbed(
            patch_size, patch_size_t, in_channels, inner_dim, text_embed_dim, patch_bias, learned_tokens
        )

        self.time_proj = Timesteps(inner_dim, flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(inner_dim, time_embed_dim, timestep_activation_fn)
        self.ofs_proj = None
        self.ofs_embedding = None
        if ofs_embed_dim:
            self.ofs_proj = Timesteps(ofs_embed_dim, flip_sin_to_cos, freq_shift)
            self.ofs_embedding = TimestepEmbedding(ofs_embed_dim, ofs_embed_dim, timestep_activation_fn)

        self.transformer_blocks = nn.ModuleList(
            [
                CogVideoXBlock(
                    inner_dim,
                    num_attention_heads,
                    attention_head_dim,
                    time_embed_dim,
                    FF_ACTIVATIONS[activation_fn],
                    attention_bias,
                    norm_elementwise_affine,
                    norm_eps,
                )
                for _ in range(num_layers)
            ]
        )
        self.norm_final = nn.LayerNorm(inner_dim, norm_eps, norm_elementwise_affine)
        self.norm_out = AdaLayerNormOut(time_embed_dim, inner_dim, norm_elementwise_affine, norm_eps)
        self.proj_out = nn.Linear(inner_dim, patch_size * patch_size * (patch_size_t or 1) * out_channels)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CogVideoXTransformer3DModel:
        """Build from a diffusers ``config.json`` dict (``_class_name`` and other ``_`` keys are ignored)."""
        return cls(**{key: value for key, value in config.items() if not key.startswith("_")})

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        ofs: torch.Tensor | None = None,
        rotary_cos: torch.Tensor | None = None,
        rotary_sin: torch.Tensor | None = None,
        pos_embedding: torch.Tensor | None = None,
        text_pos_embedding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The noise prediction (B, F, out_channels, H, W) for latents (B, F, C, H, W); see the class docstring.
        ``text_pos_embedding`` (1, S, inner_dim): a learned table's text rows, added to the text tokens (zeros when
        the runtime falls back to sin-cos positions, as diffusers' joint table then has zero text rows)."""
        self._check_inputs(ofs, rotary_cos, rotary_sin, pos_embedding)
        batch = hidden_states.shape[0]
        dtype = hidden_states.dtype

        if not torch.is_tensor(timestep):
            timestep = torch.tensor([float(timestep)], device=hidden_states.device)
        emb = self.time_embedding(self.time_proj(timestep.reshape(-1)).to(dtype))
        if self.ofs_embedding is not None:
            if not torch.is_tensor(ofs):
                ofs = torch.tensor([float(ofs)], device=hidden_states.device)
            emb = emb + self.ofs_embedding(self.ofs_proj(ofs.reshape(-1)).to(dtype))

        text, hidden, (grid_frames, rows, cols) = self.patch_embed(encoder_hidden_states, hidden_states, pos_embedding)
        if text_pos_embedding is not None:
            text = text + text_pos_embedding.to(text.dtype)
        rotary = (rotary_cos.float(), rotary_sin.float()) if self.rotary else None
        for block in self.transformer_blocks:
            hidden, text = block(hidden, text, emb, rotary)

        hidden = self.norm_final(hidden)
        hidden = self.proj_out(self.norm_out(hidden, emb))

        p = self.patch_size
        p_t = self.patch_size_t
        if p_t is None:
            out = hidden.reshape(batch, grid_frames, rows, cols, -1, p, p)
            # B, F, h, w, C, p, p -> B, F, C, h, p, w, p
            return out.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)
        out = hidden.reshape(batch, grid_frames, rows, cols, -1, p_t, p, p)
        # B, F/pt, h, w, C, pt, p, p -> B, F/pt, pt, C, h, p, w, p
        return out.permute(0, 1, 5, 4, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(1, 2)

    def _check_inputs(self, ofs, rotary_cos, rotary_sin, pos_embedding) -> None:
        """Which optional inputs this config needs (a static check on presence, nothing data-dependent)."""
        if self.ofs_embedding is not None and ofs is None:
            raise ConfigError("this transformer has an ofs embedding (ofs_embed_dim): pass ofs (diffusers: 2.0).")
        if self.rotary and (rotary_cos is None or rotary_sin is None):
            raise ConfigError(
                "this transformer uses rotary positional embeddings: pass rotary_cos and rotary_sin "
                "(diffrt.runtime.pipelines.cogvideox_positions.rotary_embeddings)."
            )
        if not self.rotary and (rotary_cos is not None or rotary_sin is not None):
            raise ConfigError("rotary_cos / rotary_sin given, but use_rotary_positional_embeddings is False.")
        if self.positional and pos_embedding is None:
            raise ConfigError(
                "this transformer adds positional embeddings: pass pos_embedding (1, tokens, inner_dim) "
                "(diffrt.runtime.pipelines.cogvideox_positions.sincos_pos_embedding, or the learned table)."
            )
        if not self.positional and pos_embedding is not None:
            raise ConfigError("pos_embedding given, but this transformer uses rotary positions only.")


__all__ = ["CogVideoXTransformer3DModel"]

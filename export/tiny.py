"""A tiny Stable Diffusion pipeline with deterministic random weights, written as a diffusers folder.

It is the default model of ``make engines`` until the bundled demo model exists: every component of a
text-to-image package at a few megabytes, built with diffrt's own model classes (no diffusers needed) and the
real CLIP vocabulary. It draws noise, not pictures.

    python -m diffrt.export.tiny OUT_FOLDER [--seed N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .clip_vocab import CLIP_TEXT_TOKENS

UNET = {
    "_class_name": "UNet2DConditionModel",
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}
VAE = {
    "_class_name": "AutoencoderKL",
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": [16, 32, 32],
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": 0.18215,
}
TEXT_ENCODER = {
    **CLIP_TEXT_TOKENS,
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 3,
    "projection_dim": 32,
    "hidden_act": "quick_gelu",
}
SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
}


def build_tiny_sd(folder: str | Path, seed: int = 0) -> Path:
    """Write the tiny pipeline to ``folder`` (created) and return it."""
    import torch
    import transformers

    from .clip_vocab import write_clip_tokenizer
    from .diffusers_folder import save_model, write_text_to_image_index
    from .models import AutoencoderKL, UNet2DConditionModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    save_model(UNet2DConditionModel(**UNET), UNET, folder / "unet")
    torch.manual_seed(seed + 1)
    save_model(AutoencoderKL(**VAE), VAE, folder / "vae")
    torch.manual_seed(seed + 2)
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(**TEXT_ENCODER))
    text_encoder.save_pretrained(folder / "text_encoder")
    write_clip_tokenizer(folder / "tokenizer")
    write_text_to_image_index(folder, SCHEDULER)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffrt.export.tiny", description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder to write the diffusers pipeline to")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"wrote {build_tiny_sd(args.out, args.seed)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A tiny Stable Diffusion pipeline with deterministic random weights, written as a diffusers folder.

It is the default model of ``make engines`` until the bundled demo model exists: every component of a
text-to-image package at a few megabytes, built with diffrt's own model classes (no diffusers needed) and the
real CLIP vocabulary. It draws noise, not pictures.

    python -m diffrt.export.tiny OUT_FOLDER [--seed N]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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
    "vocab_size": 49408,
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 3,
    "max_position_embeddings": 77,
    "projection_dim": 32,
    "hidden_act": "quick_gelu",
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
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


def _full_config(model_class, config: dict) -> dict:
    """``config`` with every other constructor default written out, as diffusers' save_pretrained writes it."""
    import inspect

    defaults = {
        name: p.default
        for name, p in inspect.signature(model_class.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD
    }
    defaults = {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()}
    return {"_class_name": config["_class_name"], **defaults, **config}


def _save_model(model, config: dict, folder: Path) -> None:
    from safetensors.torch import save_file

    config = _full_config(type(model), config)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, folder / "diffusion_pytorch_model.safetensors"
    )


def build_tiny_sd(folder: str | Path, seed: int = 0) -> Path:
    """Write the tiny pipeline to ``folder`` (created) and return it."""
    import torch
    import transformers

    from .clip_vocab import write_clip_tokenizer
    from .models import AutoencoderKL, UNet2DConditionModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    _save_model(UNet2DConditionModel(**UNET), UNET, folder / "unet")
    torch.manual_seed(seed + 1)
    _save_model(AutoencoderKL(**VAE), VAE, folder / "vae")
    torch.manual_seed(seed + 2)
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(**TEXT_ENCODER))
    text_encoder.save_pretrained(folder / "text_encoder")
    write_clip_tokenizer(folder / "tokenizer")
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER, indent=2) + "\n")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
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

"""The Stable Diffusion 1.5 architecture with deterministic random weights, written as a diffusers folder.

The real SD 1.5 configs (860 M-parameter UNet, ViT-L/14 text encoder, the 4-channel KL VAE) and the real CLIP
vocabulary, seeded weights: what a benchmark needs for SD 1.5's cost without downloading a checkpoint. It draws
noise, not pictures. Built once; a folder that already holds ``model_index.json`` is reused as it is.

    python benchmarks/sd15.py OUT_FOLDER          # about a minute and 4.3 GB on disk
"""

from __future__ import annotations

import sys
from pathlib import Path

SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
)
SD15_VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4,
    layers_per_block=2,
    sample_size=512,
)


def build_source(folder: Path) -> Path:
    """Write the SD 1.5-architecture pipeline to ``folder`` (seed 0) unless it is already there; return it."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from diffrt.export.clip_vocab import write_clip_tokenizer

    if (folder / "model_index.json").is_file():
        return folder
    torch.manual_seed(0)
    text = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**SD15_VAE),
        text_encoder=CLIPTextModel(text),
        tokenizer=CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder.parent / "_vocab")),
        unet=UNet2DConditionModel(**SD15_UNET),
        scheduler=PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_vae(source: Path, folder: Path, seed: int = 0) -> Path:
    """A TAESD-shaped ``AutoencoderTiny`` (diffusers' defaults: 64 channels, blocks (1, 3, 3, 3) / (3, 3, 3, 1))
    matching the VAE of ``source`` (latent channels, scale factor), seeded random weights, written to ``folder``
    unless already there. It costs what TAESD costs; its pictures mean nothing (random weights)."""
    import json
    import math

    import torch
    from diffusers import AutoencoderTiny

    if (folder / "config.json").is_file():
        return folder
    vae = json.loads((source / "vae" / "config.json").read_text())
    stages = int(math.log2(2 ** (len(vae["block_out_channels"]) - 1)))
    torch.manual_seed(seed)
    tiny = AutoencoderTiny(
        latent_channels=vae.get("latent_channels", 4),
        encoder_block_out_channels=(64,) * (stages + 1),
        decoder_block_out_channels=(64,) * (stages + 1),
        num_encoder_blocks=(1,) + (3,) * stages,
        num_decoder_blocks=(3,) * stages + (1,),
    )
    tiny.save_pretrained(folder, safe_serialization=True)
    return folder


ATTENTION_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_ATTENTION_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def build_lora(
    source: Path,
    folder: Path,
    rank: int = 8,
    seed: int = 1,
    unet_targets: list[str] = ATTENTION_TARGETS,
    text_targets: list[str] = TEXT_ATTENTION_TARGETS,
) -> Path:
    """A PEFT LoRA (alpha = rank) for the pipeline at ``source`` on ``unet_targets`` and ``text_targets``, random with
    a realistic spread (0.02), saved with diffusers' ``save_lora_weights`` into ``folder`` unless already there."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from transformers import CLIPTextModel

    target = folder / "pytorch_lora_weights.safetensors"
    if target.is_file():
        return target
    generator = torch.Generator().manual_seed(seed)
    layers = {}
    for name, model, modules in (
        ("unet", UNet2DConditionModel.from_pretrained(source, subfolder="unet"), unet_targets),
        ("text_encoder", CLIPTextModel.from_pretrained(source, subfolder="text_encoder"), text_targets),
    ):
        model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=modules))
        with torch.no_grad():
            for key, parameter in model.named_parameters():
                if ".lora_" in key:
                    parameter.copy_(0.02 * torch.randn(parameter.shape, generator=generator))
        layers[name] = get_peft_model_state_dict(model)
        del model
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=layers["unet"], text_encoder_lora_layers=layers["text_encoder"]
    )
    return target


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: {sys.argv[0]} OUT_FOLDER")
    print(f"wrote {build_source(Path(sys.argv[1]))}")

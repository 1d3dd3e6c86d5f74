"""The tiny fixtures are real diffusers folders: safetensors weights, loadable and runnable by diffusers itself."""

import json

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline


@pytest.mark.parametrize(
    "name, pipeline_class, unet_in_channels",
    [
        ("sd1", "StableDiffusionPipeline", 4),
        ("sd2", "StableDiffusionPipeline", 4),
        ("inpaint", "StableDiffusionInpaintPipeline", 9),
        ("ddpm", "DDPMPipeline", 3),
    ],
)
def test_fixture_is_a_diffusers_folder_with_safetensors(tiny_models, name, pipeline_class, unet_in_channels):
    folder = tiny_models[name]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == pipeline_class
    weights = sorted(p.name for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin", ".ckpt", ".pt"))
    assert weights and all(w.endswith(".safetensors") for w in weights), weights
    assert json.loads((folder / "unet" / "config.json").read_text())["in_channels"] == unet_in_channels


@pytest.mark.parametrize("name", ["sd1", "sd2"])
def test_text_to_image_fixture_generates_in_diffusers(tiny_models, name):
    pipe = DiffusionPipeline.from_pretrained(tiny_models[name])
    out = pipe(
        "a photograph of an astronaut riding a horse",
        num_inference_steps=2,
        height=32,
        width=32,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()
    assert pipe.tokenizer.pad_token == ("!" if name == "sd2" else "<|endoftext|>")
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer) == 49408


def test_ddpm_fixture_generates_in_diffusers(tiny_models):
    pipe = DiffusionPipeline.from_pretrained(tiny_models["ddpm"])
    out = pipe(num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 16, 16, 3) and np.isfinite(out).all()

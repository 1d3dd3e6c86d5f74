"""LoRA fused at export into SD3 / Flux packages equals diffusers' ``load_lora_weights`` + ``set_adapters`` on the
same files: a PEFT file per family (transformer and CLIP encoders, LoraConfig alphas) and a kohya / sd-scripts
Flux file (BFL module names, fused q/k/v split, per-module alphas)."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.torch
import torch
from fixtures.mmdit_loras import build_flux_kohya, build_flux_peft, build_sd3_peft
from pipeline_parity import assert_images_close, load_diffusers, run_diffrt, run_diffusers

from diffrt.export.package import ExportOptions, export_package
from diffrt.export.source import load_source
from diffrt.runtime import FluxPipeline, StableDiffusion3Pipeline
from diffrt.runtime.errors import CheckpointError

CALL = dict(prompt="a photograph of an astronaut", height=32, width=32, num_inference_steps=3, max_sequence_length=16)
WEIGHT = 0.7


@pytest.mark.parametrize(
    "kind, build, pipeline",
    [
        ("sd3", lambda folder, tmp: build_sd3_peft(folder, tmp / "sd3_peft"), StableDiffusion3Pipeline),
        ("flux_dev", lambda folder, tmp: build_flux_peft(folder, tmp / "flux_peft"), FluxPipeline),
        ("flux_dev", lambda folder, tmp: build_flux_kohya(folder, tmp / "flux_kohya.safetensors"), FluxPipeline),
    ],
    ids=["sd3-peft", "flux-peft", "flux-kohya"],
)
def test_fused_lora_equals_diffusers(mmdit_models, mmdit_packages, tmp_path, kind, build, pipeline):
    folder = mmdit_models[kind]
    lora = build(folder, tmp_path)
    source = load_source(folder)
    package = export_package(source, tmp_path / "package", ExportOptions(loras=(f"{lora}:{WEIGHT}",))).path

    theirs_pipe = load_diffusers(pipeline.__name__, folder)
    theirs_pipe.load_lora_weights(str(lora), adapter_name="style")
    theirs_pipe.set_adapters(["style"], adapter_weights=[WEIGHT])
    theirs = run_diffusers(theirs_pipe, 4, **CALL, guidance_scale=4.0)
    ours = run_diffrt(pipeline.from_pretrained(package), 4, **CALL, guidance_scale=4.0)
    assert_images_close(ours, theirs)
    plain = run_diffrt(pipeline.from_pretrained(mmdit_packages[kind]), 4, **CALL, guidance_scale=4.0)
    assert np.abs(ours - plain).max() > 1e-2  # the adapter changed the image


def test_kohya_files_for_sd3_and_unknown_flux_modules_are_refused(mmdit_models, tmp_path):
    kohya = build_flux_kohya(mmdit_models["flux_dev"], tmp_path / "flux_kohya.safetensors")
    with pytest.raises(CheckpointError, match="kohya files for Flux only"):
        export_package(load_source(mmdit_models["sd3"]), tmp_path / "a", ExportOptions(loras=(str(kohya),)))
    state = safetensors.torch.load_file(str(kohya))
    state["lora_unet_double_blocks_0_img_attn_norm.lora_down.weight"] = torch.zeros(4, 32)
    state["lora_unet_double_blocks_0_img_attn_norm.lora_up.weight"] = torch.zeros(32, 4)
    odd = tmp_path / "odd.safetensors"
    safetensors.torch.save_file(state, str(odd))
    with pytest.raises(CheckpointError, match="img_attn_norm"):
        export_package(load_source(mmdit_models["flux_dev"]), tmp_path / "b", ExportOptions(loras=(str(odd),)))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_flux_kohya_top_level_modules_map_to_diffusers_layers():
    """img_in / txt_in / final_layer modules: diffusers 0.42's converter leaves them without the transformer.
    prefix, so its load_lora_weights drops them; diffrt applies them (as sd-scripts does), final_layer at scale 1
    with the modulation's (shift, scale) halves swapped into diffusers' (scale, shift) order."""
    from diffrt.runtime.lora import LoraModule
    from diffrt.runtime.mmdit_lora import _bfl_to_diffusers

    up = np.arange(8, dtype=np.float32).reshape(8, 1)
    modules = {
        "txt_in": LoraModule(np.ones((1, 3), np.float32), np.ones((4, 1), np.float32), 2.0, "lora_unet_txt_in"),
        "final_layer_adaLN_modulation_1": LoraModule(np.ones((1, 4), np.float32), up, 0.5, "final"),
        "double_blocks_0_img_attn_qkv": LoraModule(np.ones((1, 4), np.float32), np.vstack([up] * 3)[:12], 1.0),
    }
    mapped = _bfl_to_diffusers(modules, {"num_attention_heads": 1, "attention_head_dim": 4}, "test")
    assert mapped["context_embedder"].alpha == 2.0
    final = mapped["norm_out_linear"]
    assert final.alpha is None and final.up[:, 0].tolist() == [4, 5, 6, 7, 0, 1, 2, 3]
    assert [mapped[f"transformer_blocks_0_attn_to_{p}"].up[:, 0].tolist() for p in "qkv"] == [
        [0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3]
    ]  # fmt: skip

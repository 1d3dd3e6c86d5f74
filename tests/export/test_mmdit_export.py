"""SD3 and Flux export: diffrt's own transformer classes against diffusers', and the packages the tiny fixtures
export (every graph checked against its torch module, SD3 without T5, refusals named)."""

from __future__ import annotations

import json

import pytest
import torch

from diffrt.export.models import FluxTransformer2DModel, SD3Transformer2DModel
from diffrt.export.package import ExportOptions, export_package
from diffrt.export.source import load_source
from diffrt.runtime.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _perturbed(model, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model.eval()


SD3 = dict(sample_size=8, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=8, num_attention_heads=2,
           joint_attention_dim=24, caption_projection_dim=16, pooled_projection_dim=12, out_channels=4,
           pos_embed_max_size=12)  # fmt: skip


@pytest.mark.parametrize("variant", [{}, {"dual_attention_layers": (0, 1), "qk_norm": "rms_norm"}])
@pytest.mark.parametrize("size", [(8, 6), (12, 12)])
def test_own_sd3_transformer_equals_diffusers(variant, size):
    from diffusers import SD3Transformer2DModel as Reference

    torch.manual_seed(0)
    theirs = _perturbed(Reference(**SD3, **variant), 1)
    ours = SD3Transformer2DModel.from_config(dict(theirs.config))
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x, text = torch.randn(2, 4, *size), torch.randn(2, 7, 24)
    pooled, t = torch.randn(2, 12), torch.tensor([500.0, 20.0])
    with torch.no_grad():
        expected = theirs(x, text, pooled, t, return_dict=False)[0]
        skipped = theirs(x, text, pooled, t, return_dict=False, skip_layers=[1])[0]
        torch.testing.assert_close(ours(x, text, pooled, t), expected, rtol=1e-5, atol=1e-5)
        mask = torch.tensor([False, True, False])
        torch.testing.assert_close(ours(x, text, pooled, t, mask), skipped, rtol=1e-5, atol=1e-5)
    assert (skipped - expected).abs().max() > 1e-2  # skipping a layer changes the output


@pytest.mark.parametrize("guidance_embeds", [False, True])
@pytest.mark.parametrize("grid", [(3, 4), (2, 2)])
def test_own_flux_transformer_equals_diffusers(guidance_embeds, grid):
    from diffusers import FluxTransformer2DModel as Reference

    from diffrt.runtime.pipelines.flux import image_ids, rotary_tables

    torch.manual_seed(0)
    config = dict(in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
                  joint_attention_dim=24, pooled_projection_dim=12, guidance_embeds=guidance_embeds,
                  axes_dims_rope=(4, 6, 6))  # fmt: skip
    theirs = _perturbed(Reference(**config), 2)
    ours = FluxTransformer2DModel.from_config(dict(theirs.config))
    ours.load_state_dict(theirs.state_dict(), strict=True)
    tokens = grid[0] * grid[1]
    x, text, pooled = torch.randn(2, tokens, 16), torch.randn(2, 5, 24), torch.randn(2, 12)
    t = torch.tensor([0.5, 0.2])
    guidance = torch.tensor([3.5, 3.5]) if guidance_embeds else None
    txt_ids, img_ids = torch.zeros(5, 3), torch.from_numpy(image_ids(*grid))
    cos, sin = (torch.from_numpy(a) for a in rotary_tables(torch.cat([txt_ids, img_ids]).numpy(), [4, 6, 6]))
    reference_cos, _ = theirs.pos_embed(torch.cat([txt_ids, img_ids]))
    torch.testing.assert_close(cos, reference_cos, rtol=0, atol=1e-7)  # the NumPy tables are diffusers'
    with torch.no_grad():
        expected = theirs(x, text, pooled, t, img_ids=img_ids, txt_ids=txt_ids, guidance=guidance, return_dict=False)
        torch.testing.assert_close(ours(x, text, pooled, t, cos, sin, guidance), expected[0], rtol=1e-5, atol=1e-5)


def test_config_values_the_models_cannot_build_are_named():
    with pytest.raises(ConfigError, match="caption_projection_dim"):
        SD3Transformer2DModel(**{**SD3, "caption_projection_dim": 20})
    with pytest.raises(ConfigError, match="qk_norm"):
        SD3Transformer2DModel(**SD3, qk_norm="layer_norm_across_heads")
    with pytest.raises(ConfigError, match="patch_size"):
        FluxTransformer2DModel(patch_size=2, num_layers=1, num_single_layers=1)
    with pytest.raises(ConfigError, match="axes_dims_rope"):
        FluxTransformer2DModel(attention_head_dim=16, axes_dims_rope=(4, 4, 4), num_layers=1, num_single_layers=1)


@pytest.mark.parametrize("kind", ["sd3", "sd35", "flux_dev", "flux_schnell"])
def test_packages_record_each_graph_checked(mmdit_packages, kind):
    package = mmdit_packages[kind]
    provenance = json.loads((package / "diffrt.json").read_text())
    index = json.loads((package / "model_index.json").read_text())
    flux = kind.startswith("flux")
    expected = {"text_encoder", "text_encoder_2", "transformer", "vae_encoder", "vae_decoder"}
    if kind == "sd3":
        expected.add("text_encoder_3")
    assert set(provenance["networks"]) == expected
    for name, network in provenance["networks"].items():
        assert network["check"]["max_rel_error"] < 1e-4, name
        assert len(network["check"]["sizes"]) == 2, name  # two batches and sizes: the graphs are dynamic
    assert index["_class_name"] == ("FluxPipeline" if flux else "StableDiffusion3Pipeline")
    if kind == "sd35":
        assert index["text_encoder_3"] == [None, None] and not (package / "text_encoder_3").exists()
    assert json.loads((package / "vae_decoder" / "config.json").read_text())["shift_factor"] > 0
    tokenizer = "tokenizer_2" if flux else "tokenizer_3"
    if kind != "sd35":
        assert index[tokenizer] == ["transformers", "T5TokenizerFast"]


def test_export_refusals_are_named(mmdit_models, tmp_path):
    source = load_source(mmdit_models["flux_schnell"])
    with pytest.raises(ConfigError, match="--deepcache"):
        export_package(source, tmp_path / "a", ExportOptions(deepcache=True))
    with pytest.raises(ConfigError, match="multiples of 4"):
        export_package(source, tmp_path / "c", ExportOptions(static=(30, 32)))
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_precision_auto_keeps_t5_and_the_flux_transformer_in_fp32(mmdit_packages):
    """On GPUs precision="auto" converts graphs to fp16; T5 and Flux's transformer overflow it, so they stay fp32."""
    from diffrt.runtime.engines import SessionSettings
    from diffrt.runtime.package import EnginePackage

    def precisions(kind):
        package = EnginePackage(mmdit_packages[kind], session_settings=SessionSettings(precision="auto"))
        names = ("text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae_decoder")
        return {n: package.settings_for(n).precision for n in names if package.has(n)}

    assert precisions("flux_dev") == {"text_encoder": "auto", "text_encoder_2": "fp32", "transformer": "fp32",
                                      "vae_decoder": "auto"}  # fmt: skip
    assert precisions("sd3") == {"text_encoder": "auto", "text_encoder_2": "auto", "text_encoder_3": "fp32",
                                 "transformer": "auto", "vae_decoder": "auto"}  # fmt: skip

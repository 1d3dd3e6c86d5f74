"""diffusers' AutoencoderTiny (TAESD) in packages: diffrt's own class against diffusers', a pipeline folder whose VAE
is tiny, ``diffrt export --vae`` and ``--preview-vae``, and the errors for VAE folders that do not fit."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures import tiny_models as tm
from fixtures.tiny_vae import TINY_VAE, build_sd1_tiny_vae, save_tiny_vae, tiny_vae

from diffrt.cli import main
from diffrt.export.models import AutoencoderTiny
from diffrt.runtime.errors import ConfigError
from diffrt.runtime.networks import ShapeRange

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIGS = {
    "two-stage-relu": TINY_VAE,
    "taesd-layout-silu-3x": dict(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(12, 12, 12, 12),
        num_encoder_blocks=(1, 3, 3, 3),
        num_decoder_blocks=(3, 3, 3, 1),
        act_fn="silu",
        latent_channels=8,
        upsampling_scaling_factor=3,
        latent_magnitude=4,
        latent_shift=0.25,
        scaling_factor=0.5,
    ),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_own_class_loads_diffusers_weights_strictly_and_encodes_and_decodes_identically(name):
    theirs = tiny_vae(0, **CONFIGS[name])
    mine = AutoencoderTiny.from_config(dict(theirs.config)).eval()
    mine.load_state_dict(theirs.state_dict(), strict=True)
    assert mine.state_dict().keys() == theirs.state_dict().keys()
    images = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        latents = theirs.encode(images).latents
        assert torch.equal(mine.encode(images), latents)
        assert torch.equal(mine.decode(latents), theirs.decode(latents).sample)
        assert torch.equal(mine(images), theirs(images).sample)  # through latents stored as bytes


def test_stages_of_unequal_width_are_refused_with_the_reason():
    with pytest.raises(ConfigError, match="one width repeated"):
        AutoencoderTiny(encoder_block_out_channels=(8, 16), num_encoder_blocks=(1, 1))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_vae_export")
    return {
        "sd1": tm.build_sd1(root),
        "sd1_tiny_vae": build_sd1_tiny_vae(root),
        "taesd": save_tiny_vae(root / "taesd", seed=60),
        "taesd_8ch": save_tiny_vae(root / "taesd_8ch", seed=61, latent_channels=8),
        "taesd_4x": save_tiny_vae(
            root / "taesd_4x", seed=62, **{k: (8, 8, 8) if "channels" in k else (1, 1, 1) for k in TINY_VAE}
        ),
        "root": root,
    }


def export(*argv) -> int:
    return main(["export", *map(str, argv)])


def test_a_pipeline_folder_with_a_tiny_vae_exports_it_with_a_latents_output(folders):
    import onnx

    out = folders["root"] / "pkg_tiny"
    assert export(folders["sd1_tiny_vae"], out) == 0
    encoder = onnx.load(out / "vae_encoder" / "model.onnx", load_external_data=False)
    decoder = onnx.load(out / "vae_decoder" / "model.onnx", load_external_data=False)
    assert [o.name for o in encoder.graph.output] == ["latents"]
    assert [o.name for o in decoder.graph.output] == ["sample"]
    assert encoder.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 4  # latents, not mean + log-variance
    config = json.loads((out / "vae_decoder" / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderTiny" and config["block_out_channels"] == [16, 16]
    provenance = json.loads((out / "diffrt.json").read_text())
    assert provenance["vae"] == {"class": "AutoencoderTiny", "folder": None}
    assert "preview_vae" not in provenance
    from diffrt.runtime.engines.trt_plans import network_for

    assert network_for(out, "vae_encoder").output_names == ["latents"]
    for name in ("vae_encoder", "vae_decoder"):
        check = provenance["networks"][name]["check"]
        print(f"{name}: ONNX vs torch max abs error {check['max_abs_error']:.1e}")
        assert check["max_abs_error"] < 1e-5


def test_vae_flag_replaces_the_sources_vae_and_records_the_folder(folders):
    out = folders["root"] / "pkg_swap"
    assert export(folders["sd1"], out, "--vae", folders["taesd"], "--no-check") == 0
    assert json.loads((out / "vae_encoder" / "config.json").read_text())["_class_name"] == "AutoencoderTiny"
    provenance = json.loads((out / "diffrt.json").read_text())
    assert provenance["vae"] == {"class": "AutoencoderTiny", "folder": str(folders["taesd"])}
    hashed = provenance["source"]["sha256"]
    assert not any(key.startswith("vae/") for key in hashed)  # the source's own VAE was not read
    assert str(folders["taesd"] / "diffusion_pytorch_model.safetensors") in hashed
    assert any("replaces the source's" in note for note in provenance["notes"])


def test_vae_flag_takes_an_autoencoder_kl_folder_too(folders):
    out = folders["root"] / "pkg_kl_swap"
    assert export(folders["sd1_tiny_vae"], out, "--vae", folders["sd1"] / "vae", "--no-check") == 0
    assert json.loads((out / "vae_encoder" / "config.json").read_text())["_class_name"] == "AutoencoderKL"
    assert json.loads((out / "diffrt.json").read_text())["vae"]["class"] == "AutoencoderKL"


def test_preview_vae_flag_adds_a_preview_decoder_beside_the_packages_own_vae(folders):
    import onnx

    out = folders["root"] / "pkg_preview"
    assert export(folders["sd1"], out, "--preview-vae", folders["taesd"]) == 0
    graph = onnx.load(out / "vae_decoder_preview" / "model.onnx", load_external_data=False)
    assert [i.name for i in graph.graph.input] == ["latent_sample"] and [o.name for o in graph.graph.output] == [
        "sample"
    ]
    assert json.loads((out / "vae_decoder_preview" / "config.json").read_text())["_class_name"] == "AutoencoderTiny"
    assert json.loads((out / "vae_decoder" / "config.json").read_text())["_class_name"] == "AutoencoderKL"
    assert "vae_decoder_preview" not in json.loads((out / "model_index.json").read_text())  # no diffusers component
    provenance = json.loads((out / "diffrt.json").read_text())
    assert provenance["preview_vae"] == {"class": "AutoencoderTiny", "folder": str(folders["taesd"])}
    assert provenance["vae"] == {"class": "AutoencoderKL", "folder": None}
    assert provenance["networks"]["vae_decoder_preview"]["check"]["max_abs_error"] < 1e-5
    from diffrt.runtime.engines.trt_plans import network_for, package_networks

    assert "vae_decoder_preview" in package_networks(out)  # `diffrt engines build` builds its plan too
    profile = network_for(out, "vae_decoder_preview").profile(ShapeRange.around(32, 32))
    assert profile == {"latent_sample": ((1, 4, 8, 8), (1, 4, 16, 16), (4, 4, 32, 32))}


def test_a_vae_of_other_latent_channels_is_refused_naming_both_counts(folders, capsys):
    for flag in ("--vae", "--preview-vae"):
        assert export(folders["sd1"], folders["root"] / "never", flag, folders["taesd_8ch"]) == 1
        error = capsys.readouterr().err
        assert f"{flag} {folders['taesd_8ch']}: this AutoencoderTiny has 8 latent channels" in error
        assert "denoises 4" in error
    assert not (folders["root"] / "never").exists()


def test_folders_that_are_no_vae_are_refused_in_one_sentence(folders, capsys):
    cases = [
        (folders["sd1"] / "unet", "describes 'UNet2DConditionModel', not a VAE"),
        (folders["root"] / "missing", "does not exist, so it is not a diffusers VAE folder"),
        (folders["sd1"], "has no config.json, so it is not a diffusers VAE folder"),
    ]
    for folder, message in cases:
        assert export(folders["sd1"], folders["root"] / "never", "--vae", folder) == 1
        error = capsys.readouterr().err
        assert message in error and "its vae/" in error, error
    assert export(folders["sd1"], folders["root"] / "never", "--preview-vae", folders["sd1"] / "vae") == 1
    assert "accepted: an AutoencoderTiny folder" in capsys.readouterr().err
    assert export(folders["sd1"], folders["root"] / "never", "--preview-vae", folders["taesd_4x"]) == 1
    assert "decodes 4 pixels per latent but the package's VAE 2" in capsys.readouterr().err


def test_a_tiny_vae_whose_encoder_and_decoder_scale_differently_is_refused(tmp_path):
    from diffrt.export.models.autoencoder_tiny import tiny_config

    with pytest.raises(ConfigError, match="encodes 2x and decodes 3x smaller"):
        tiny_config({**TINY_VAE, "upsampling_scaling_factor": 3}, "vae")

"""SD3 and Flux single-file checkpoints: the fixture files are what diffusers' ``from_single_file`` reads, and
diffrt's conversion gives the folder's weights bit for bit (so the exported graphs are the folder export's)."""

from __future__ import annotations

import json

import pytest
import torch
from mmdit_layout import write_flux_single_file, write_sd3_single_file
from safetensors.torch import load_file

from diffrt.export.package import export_package
from diffrt.export.source import load_source
from diffrt.runtime.errors import CheckpointError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def folder_weights(folder, component):
    return load_file(str(next((folder / component).glob("*.safetensors"))))


def assert_same(ours: dict, theirs: dict, what: str) -> None:
    assert set(ours) == set(theirs), f"{what}: keys differ: {sorted(set(ours) ^ set(theirs))[:5]}"
    for key, value in theirs.items():
        assert torch.equal(torch.as_tensor(ours[key]), value), f"{what}: {key} differs"


@pytest.mark.parametrize("kind", ["sd3", "sd35"])
def test_diffusers_reads_the_fixture_files_as_the_folders(mmdit_models, tmp_path, kind):
    """The fixture writer is checked by diffusers' own converter, so the files are real single-file layouts.

    Flux is not checked this way: diffusers' Flux converter hard-codes FLUX.1's widths (3072 / 12288 rows in
    ``single_blocks.*.linear1``), so it cannot read a tiny Flux file; the Flux writer rests on being written
    independently of diffrt's converter."""
    import diffusers

    folder = mmdit_models[kind]
    flux = kind.startswith("flux")
    path = tmp_path / "model.safetensors"
    if flux:
        write_flux_single_file(folder, path, prefix="model.diffusion_model." if kind == "flux_dev" else "")
    else:
        write_sd3_single_file(folder, path)
    model_class = diffusers.FluxTransformer2DModel if flux else diffusers.SD3Transformer2DModel
    theirs = model_class.from_single_file(
        str(path), config=str(folder), subfolder="transformer", local_files_only=True, torch_dtype=torch.float32
    )
    assert_same(theirs.state_dict(), folder_weights(folder, "transformer"), "diffusers' from_single_file")


@pytest.mark.parametrize("kind", ["flux_dev", "flux_schnell", "sd3", "sd35"])
def test_single_file_weights_equal_the_folder_bit_for_bit(mmdit_models, tmp_path, kind):
    folder = mmdit_models[kind]
    path = tmp_path / "model.safetensors"
    flux = kind.startswith("flux")
    if flux:
        write_flux_single_file(folder, path, prefix="model.diffusion_model." if kind == "flux_schnell" else "")
    else:
        write_sd3_single_file(folder, path)
    source = load_source(path, config_dir=folder)
    assert (
        source.kind == "single_file"
        and source.pipeline_class == json.loads((folder / "model_index.json").read_text())["_class_name"]
    )
    assert_same(source.components["transformer"].load_weights(), folder_weights(folder, "transformer"), kind)
    if not flux:  # the text encoders and the VAE came from the file too
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            if (folder / name).is_dir():
                assert f"{name}: from the checkpoint" in source.notes
                assert_same(source.components[name].load_weights(), folder_weights(folder, name), name)
        assert_same(source.components["vae"].load_weights(), folder_weights(folder, "vae"), "vae")


@pytest.mark.parametrize("kind", ["flux_dev", "sd3"])
def test_single_file_exports_the_folder_export_graphs(mmdit_models, mmdit_packages, tmp_path, kind):
    folder = mmdit_models[kind]
    path = tmp_path / "model.safetensors"
    (write_flux_single_file if kind.startswith("flux") else write_sd3_single_file)(folder, path)
    package = export_package(load_source(path, config_dir=folder), tmp_path / "package").path
    for network in ("transformer", "text_encoder", "vae_decoder"):
        ours = (package / network / "model.onnx").read_bytes()
        assert ours == (mmdit_packages[kind] / network / "model.onnx").read_bytes(), network


def test_single_file_refusals_are_named(mmdit_models, tmp_path):
    path = write_flux_single_file(mmdit_models["flux_dev"], tmp_path / "flux1-dev.safetensors")
    with pytest.raises(CheckpointError, match="--config FOLDER"):
        load_source(path)
    with pytest.raises(CheckpointError, match="StableDiffusion3Pipeline folder"):
        load_source(path, config_dir=mmdit_models["sd3"])
    with pytest.raises(CheckpointError, match="missing"):  # a dev file against a schnell config (no guidance_in)
        state = load_file(str(path))
        from safetensors.torch import save_file

        save_file({k: v for k, v in state.items() if not k.startswith("vector_in")}, str(tmp_path / "cut.safetensors"))
        load_source(tmp_path / "cut.safetensors", config_dir=mmdit_models["flux_dev"])

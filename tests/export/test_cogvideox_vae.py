"""CogVideoX's causal 3D VAE as step graphs that carry the conv cache, against diffusers (the oracle).

diffrt's ``AutoencoderKLCogVideoX`` loads a diffusers state dict strictly; its ``decode_step`` / ``encode_step``, run
over a video with diffusers' frame batching (in torch, then as ONNX graphs driven by the NumPy ``VideoVae``), give
diffusers' ``vae.decode(z).sample`` and ``vae.encode(x).latent_dist.parameters``, with slicing and tiling too. One
graph serves every frame batch (1, 2 or 3 latent frames; 1, 8 or 9 frames) and every size.
"""

from __future__ import annotations

import ast
import json
import warnings
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch

from diffrt.export.models import AutoencoderKLCogVideoX
from diffrt.export.models.autoencoder_cogvideox import export_step, step_graph_io
from diffrt.runtime.pipelines import cogvideox_vae
from diffrt.runtime.pipelines.cogvideox_vae import (
    VideoVae,
    decoder_cache_layout,
    decoder_cache_shapes,
    decoder_cache_specs,
    encoder_cache_layout,
    encoder_cache_shapes,
    frame_batches,
    ort_step,
)

TOLERANCE = 1e-5  # relative, torch against torch
ONNX_TOLERANCE = 2e-3  # absolute, ONNX Runtime against diffusers

# (8, 16, 16, 16): resnets whose channels change (1x1x1 shortcut), four levels, time compressed twice.
CONFIG = dict(
    block_out_channels=(8, 16, 16, 16),
    latent_channels=4,
    norm_num_groups=4,
    layers_per_block=1,
    temporal_compression_ratio=4,
    sample_height=32,
    sample_width=32,
    down_block_types=("CogVideoXDownBlock3D",) * 4,
    up_block_types=("CogVideoXUpBlock3D",) * 4,
)
# quant_conv / post_quant_conv (diffusers sizes them by out_channels, so out_channels = latent_channels here),
# equal channels everywhere, two resnets per down block, another group count and eps.
QUANT_CONFIG = dict(
    CONFIG,
    block_out_channels=(8, 8, 8, 8),
    out_channels=4,
    norm_num_groups=2,
    layers_per_block=2,
    norm_eps=1e-5,
    use_quant_conv=True,
    use_post_quant_conv=True,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def relative_error(ours, reference) -> float:
    ours, reference = torch.as_tensor(ours).double(), torch.as_tensor(reference).double()
    return float((ours - reference).abs().max() / reference.abs().max())


def pair(config: dict, seed: int = 0):
    """A seeded diffusers VAE with perturbed weights (norm affines too) and diffrt's holding the same weights."""
    torch.manual_seed(seed)
    reference = diffusers.AutoencoderKLCogVideoX(**config).eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.mul_(1 + 0.2 * torch.randn_like(parameter)).add_(0.02 * torch.randn_like(parameter))
    saved = json.loads(reference.to_json_string())  # as config.json holds it: lists, _class_name, _diffusers_version
    own = AutoencoderKLCogVideoX(**saved).eval()
    result = own.load_state_dict(reference.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return reference, own, saved


@pytest.fixture(scope="module")
def models():
    return pair(CONFIG)


@pytest.fixture(scope="module")
def sessions(models, tmp_path_factory):
    """ONNX Runtime sessions of the two step graphs, traced once (decoder at 2 latent frames, encoder at 8)."""
    import onnxruntime as ort

    _, own, _ = models
    folder = tmp_path_factory.mktemp("cogvideox_vae")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_step(own, "decode", folder / "decoder.onnx", (1, 2, 4, 4))
        export_step(own, "encode", folder / "encoder.onnx", (1, 8, 32, 32))
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return {
        which: ort.InferenceSession(str(folder / f"{which}.onnx"), options, providers=["CPUExecutionProvider"])
        for which in ("decoder", "encoder")
    }


def video_vae(models, sessions, **options) -> VideoVae:
    return VideoVae(models[2], ort_step(sessions["decoder"]), ort_step(sessions["encoder"]), **options)


def latents(batch: int, frames: int, height: int, width: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 4, frames, height, width, generator=torch.Generator().manual_seed(seed))


def video(batch: int, frames: int, height: int, width: int, seed: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, frames, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---------------------------------------------------------------- the cache layout


@pytest.mark.parametrize("config", [CONFIG, QUANT_CONFIG], ids=["shortcuts", "quant"])
def test_the_runtime_states_the_cache_layout_of_the_torch_module(config):
    own = AutoencoderKLCogVideoX(**config)
    assert own.decoder_cache_layout() == decoder_cache_layout(config)
    assert own.encoder_cache_layout() == encoder_cache_layout(config)
    assert own.decoder_cache_shapes(2, 5, 3) == decoder_cache_shapes(config, 2, 5, 3)
    assert own.encoder_cache_shapes(2, 40, 24) == encoder_cache_shapes(config, 2, 40, 24)
    # one entry per causal conv with a time kernel of 3: conv_in, 2 per resnet, conv_out
    layers = config["layers_per_block"]
    assert len(decoder_cache_specs(config)) == 2 + 2 * (2 + 4 * (layers + 1))
    assert len(encoder_cache_layout(config)) == 2 + 2 * (2 + 4 * layers)
    names = {name for name, _ in own.named_modules()}
    assert all(name in names for name, _, _ in decoder_cache_layout(config) + encoder_cache_layout(config))


def test_frame_batches_are_diffusers():
    def spans(n, size):
        return [(s.start, min(s.stop, n)) for s in frame_batches(n, size)]

    assert spans(1, 2) == [(0, 1)]
    assert spans(7, 2) == [(0, 3), (3, 5), (5, 7)]
    assert spans(4, 2) == [(0, 2), (2, 4)]
    assert spans(17, 8) == [(0, 9), (9, 17)]
    assert spans(5, 8) == [(0, 5)]


def test_the_runtime_driver_never_imports_torch():
    tree = ast.parse(Path(cogvideox_vae.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(name.split(".")[0] in ("torch", "diffusers", "onnxruntime") for name in imported)


# ---------------------------------------------------------------- torch steps against diffusers


@pytest.mark.parametrize("frames", [1, 2, 3, 4, 7])
def test_decode_through_steps_equals_diffusers(models, frames):
    reference, own, _ = models
    z = latents(2, frames, 4, 3)
    with torch.no_grad():
        expected = reference.decode(z).sample
        ours = own.decode(z)
    assert ours.shape == expected.shape == (2, 3, 4 * frames - 3 * (frames % 2), 32, 24)
    assert relative_error(ours, expected) <= TOLERANCE


@pytest.mark.parametrize("frames", [1, 9, 17])
def test_encode_through_steps_equals_diffusers(models, frames):
    reference, own, _ = models
    x = video(2, frames, 32, 24)
    with torch.no_grad():
        expected = reference.encode(x).latent_dist.parameters
        ours = own.encode(x)
    assert ours.shape == expected.shape
    assert relative_error(ours, expected) <= TOLERANCE


def test_quant_convs_and_equal_channels():
    reference, own, _ = pair(QUANT_CONFIG, seed=3)
    assert own.quant_conv is not None and own.post_quant_conv is not None
    z, x = latents(1, 3, 3, 4), video(1, 9, 24, 32)
    with torch.no_grad():
        assert relative_error(own.decode(z), reference.decode(z).sample) <= TOLERANCE
        assert relative_error(own.encode(x), reference.encode(x).latent_dist.parameters) <= TOLERANCE


def test_first_batch_ignores_the_cache_and_later_batches_use_it(models):
    _, own, _ = models
    z = latents(1, 2, 4, 4)
    shapes = own.decoder_cache_shapes(1, 4, 4)
    zeros = [torch.zeros(shape) for shape in shapes]
    noise = [torch.randn(shape) for shape in shapes]
    with torch.no_grad():
        first, *_ = own.decode_step(z, torch.tensor([False]), *zeros)
        assert torch.equal(own.decode_step(z, torch.tensor([False]), *noise)[0], first)
        assert not torch.allclose(own.decode_step(z, torch.tensor([True]), *noise)[0], first)


# ---------------------------------------------------------------- ONNX Runtime + the NumPy driver against diffusers


def test_graph_io_contract(models, sessions):
    _, own, config = models
    count = len(decoder_cache_specs(config))
    inputs, outputs, _ = step_graph_io(own, "decode")
    assert [i.name for i in sessions["decoder"].get_inputs()] == inputs
    assert inputs == ["latent_sample", "has_cache", *(f"cache_in.{i}" for i in range(count))]
    assert (
        [o.name for o in sessions["decoder"].get_outputs()]
        == outputs
        == ["sample"] + [f"cache_out.{i}" for i in range(count)]
    )
    count = len(encoder_cache_layout(config))
    assert [i.name for i in sessions["encoder"].get_inputs()] == [
        "sample",
        "has_cache",
        *(f"cache_in.{i}" for i in range(count)),
    ]
    assert [o.name for o in sessions["encoder"].get_outputs()] == ["latent_parameters"] + [
        f"cache_out.{i}" for i in range(count)
    ]
    assert sessions["decoder"].get_inputs()[1].type == "tensor(bool)"


# latent frames 1 (T=1), 3 (T=3), 4 (2+2), 7 (3+2+2); two sizes
@pytest.mark.parametrize(("frames", "size"), [(1, (4, 3)), (3, (4, 3)), (4, (5, 6)), (7, (5, 6))])
def test_onnx_decode_equals_diffusers(models, sessions, frames, size):
    reference, _, _ = models
    z = latents(2, frames, *size)
    with torch.no_grad():
        expected = reference.decode(z).sample.numpy()
    ours = video_vae(models, sessions).decode(z.numpy())
    assert ours.shape == expected.shape
    error = float(np.abs(ours - expected).max())
    print(f"onnx decode T={frames} {size}: max abs error {error:.2e}")
    assert error <= ONNX_TOLERANCE


# frames 1, 9 (first batch of 9), 17 (9 + 8); two sizes, one not a multiple of 8
@pytest.mark.parametrize(("frames", "size"), [(1, (32, 24)), (9, (32, 24)), (17, (20, 36))])
def test_onnx_encode_equals_diffusers(models, sessions, frames, size):
    reference, _, _ = models
    x = video(2, frames, *size)
    with torch.no_grad():
        expected = reference.encode(x).latent_dist.parameters.numpy()
    ours = video_vae(models, sessions).encode(x.numpy())
    assert ours.shape == expected.shape
    error = float(np.abs(ours - expected).max())
    print(f"onnx encode F={frames} {size}: max abs error {error:.2e}")
    assert error <= ONNX_TOLERANCE


TILES = dict(
    tile_sample_min_height=32, tile_sample_min_width=24, tile_overlap_factor_height=0.25, tile_overlap_factor_width=0.2
)
ENCODE_TILES = dict(TILES, tile_sample_min_width=32, tile_overlap_factor_width=0.25)  # encoder tiles >= 16 pixels


@pytest.fixture
def tiled_reference(models):
    reference = models[0]
    reference.enable_tiling(**TILES)
    reference.enable_slicing()
    yield reference
    reference.disable_tiling()
    reference.disable_slicing()


def test_onnx_tiled_sliced_decode_equals_diffusers(models, sessions, tiled_reference):
    z = latents(2, 3, 6, 7)  # 48 x 56 pixels in tiles of 32 x 24
    with torch.no_grad():
        expected = tiled_reference.decode(z).sample.numpy()
    vae = video_vae(models, sessions, tiling=True, slicing=True, **TILES)
    steps = []
    step = vae.decode_step
    vae.decode_step = lambda feeds: steps.append(feeds["latent_sample"].shape) or step(feeds)
    ours = vae.decode(z.numpy())
    assert {shape[0] for shape in steps} == {1} and len({shape[3:] for shape in steps}) > 1  # sliced and tiled
    assert ours.shape == expected.shape
    error = float(np.abs(ours - expected).max())
    print(f"onnx tiled+sliced decode: max abs error {error:.2e}")
    assert error <= ONNX_TOLERANCE


def test_onnx_tiled_encode_and_sliced_decode_equal_diffusers(models, sessions, tiled_reference):
    x = video(2, 9, 48, 40)  # tiles of 32 x 32 pixels at steps of 24
    tiled_reference.enable_tiling(**ENCODE_TILES)
    with torch.no_grad():
        expected = tiled_reference.encode(x).latent_dist.parameters.numpy()
    vae = video_vae(models, sessions, tiling=True, slicing=True, **ENCODE_TILES)
    ours = vae.encode(x.numpy())
    assert ours.shape == expected.shape
    error = float(np.abs(ours - expected).max())
    print(f"onnx tiled+sliced encode: max abs error {error:.2e}")
    assert error <= ONNX_TOLERANCE

    # slicing alone (below the tile size, so diffusers does not tile either)
    z = latents(2, 4, 3, 3)
    with torch.no_grad():
        expected = tiled_reference.decode(z).sample.numpy()
    vae.disable_tiling()
    assert np.abs(vae.decode(z.numpy()) - expected).max() <= ONNX_TOLERANCE


def test_iter_decode_yields_frame_batches(models, sessions):
    z = latents(1, 5, 3, 3)
    chunks = list(video_vae(models, sessions).iter_decode(z.numpy()))
    assert [c.shape[2] for c in chunks] == [9, 8]

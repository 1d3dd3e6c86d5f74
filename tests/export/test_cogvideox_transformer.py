"""diffrt's CogVideoXTransformer3DModel and the NumPy positions against diffusers, and its ONNX graph.

Tiny configs of each CogVideoX layout: 2b (sin-cos positions), 5b (rotary), 5b-I2V (rotary plus a learned table,
latents and image latents concatenated: 2x channels) and 1.5 (patches across 2 frames, the ofs embedding, rotary
"slice" grid). diffusers' model gets the positions its pipeline computes, diffrt's the NumPy functions' outputs.
"""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffusers.models.embeddings import CogVideoXPatchEmbed, get_3d_rotary_pos_embed  # noqa: E402
from diffusers.pipelines.cogvideo.pipeline_cogvideox import (  # noqa: E402
    CogVideoXPipeline,
    get_resize_crop_region_for_grid,
)
from diffusers.pipelines.cogvideo.pipeline_cogvideox_image2video import CogVideoXImageToVideoPipeline  # noqa: E402

from diffrt.export.models import CogVideoXTransformer3DModel  # noqa: E402
from diffrt.export.models.config import NotSupportedError  # noqa: E402
from diffrt.runtime.errors import ConfigError  # noqa: E402
from diffrt.runtime.pipelines.cogvideox_positions import (  # noqa: E402
    rotary_embeddings,
    sincos_pos_embedding,
    uses_learned_table,
)

TEXT = 8  # max_text_seq_length of the tiny configs
BASE = dict(
    num_attention_heads=2,
    attention_head_dim=16,  # rotary needs a multiple of 16 (head_dim/4 and 3*head_dim/8 channels, each even)
    in_channels=4,
    out_channels=4,
    text_embed_dim=32,
    num_layers=2,
    sample_width=8,
    sample_height=8,
    sample_frames=9,  # 3 latent frames
    time_embed_dim=32,
    max_text_seq_length=TEXT,
)
CONFIGS = {
    "2b": dict(BASE),
    "5b": dict(BASE, use_rotary_positional_embeddings=True),
    "5b-i2v": dict(BASE, in_channels=8, use_rotary_positional_embeddings=True, use_learned_positional_embeddings=True),
    "1.5-i2v": dict(
        BASE,
        in_channels=8,
        sample_width=12,
        sample_height=12,
        patch_size_t=2,
        ofs_embed_dim=32,
        use_rotary_positional_embeddings=True,
    ),
}
# (latent frames, latent height, latent width): the sample size first, then other sizes diffusers accepts
SIZES = {
    "2b": [(3, 8, 8), (2, 6, 10)],
    "5b": [(3, 8, 8), (2, 6, 10)],
    "5b-i2v": [(3, 8, 8), (2, 8, 8)],  # a learned table allows the sample height/width only; 2 frames: sin-cos
    "1.5-i2v": [(2, 12, 12), (4, 8, 10)],
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def relative_error(ours, reference) -> float:
    ours, reference = torch.as_tensor(ours).double(), torch.as_tensor(reference).double()
    return float((ours - reference).abs().max() / reference.abs().max())


_PAIRS: dict[str, tuple] = {}


def pair(name: str):
    """diffusers' model with perturbed weights (a learned table: its image rows perturbed too) and diffrt's model
    built from its config.json, loaded strictly; cached per config (the models are only read)."""
    if name not in _PAIRS:
        torch.manual_seed(0)
        reference = diffusers.CogVideoXTransformer3DModel(**CONFIGS[name]).eval()
        with torch.no_grad():
            for parameter in reference.parameters():
                parameter.mul_(1 + 0.2 * torch.randn_like(parameter)).add_(0.02 * torch.randn_like(parameter))
            if CONFIGS[name].get("use_learned_positional_embeddings"):
                table = reference.patch_embed.pos_embedding  # text rows stay zero (see the note in feeds)
                table[:, TEXT:] += 0.3 * torch.randn_like(table[:, TEXT:])
        config = json.loads(reference.to_json_string())
        assert "_class_name" in config and "_diffusers_version" in config
        own = CogVideoXTransformer3DModel(**config).eval()
        result = own.load_state_dict(reference.state_dict(), strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        _PAIRS[name] = reference, own, config
    return _PAIRS[name]


def pipeline_rotary(transformer_config, frames: int, height: int, width: int, scale: int = 8, pipeline=None):
    """diffusers' pipeline method on a stand-in pipeline: only ``transformer.config`` and the scale are read."""
    stand_in = SimpleNamespace(
        transformer=SimpleNamespace(config=SimpleNamespace(**transformer_config)), vae_scale_factor_spatial=scale
    )
    method = (pipeline or CogVideoXPipeline)._prepare_rotary_positional_embeddings
    cos, sin = method(stand_in, height * scale, width * scale, frames, torch.device("cpu"))
    return cos, sin


def inputs(config: dict, frames: int, height: int, width: int, seed: int = 1, batch: int = 2, text: int = TEXT):
    generator = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch, frames, config["in_channels"], height, width, generator=generator),
        "encoder_hidden_states": torch.randn(batch, text, config["text_embed_dim"], generator=generator),
        "timestep": torch.tensor([999.0, 371.5][:batch]),
    }


def feeds(name: str, frames: int, height: int, width: int, batch: int = 2, text: int = TEXT) -> tuple[dict, dict]:
    """(diffrt's inputs from the NumPy position functions, diffusers' keyword arguments from its pipeline code)."""
    reference, _, config = pair(name)
    ours = inputs(config, frames, height, width, batch=batch, text=text)
    theirs = dict(ours)
    if config["use_rotary_positional_embeddings"]:
        cos, sin = rotary_embeddings(config, frames, height, width)
        ours["rotary_cos"], ours["rotary_sin"] = torch.from_numpy(cos), torch.from_numpy(sin)
        theirs["image_rotary_emb"] = pipeline_rotary(reference.config, frames, height, width)
    if not config["use_rotary_positional_embeddings"] or config["use_learned_positional_embeddings"]:
        if uses_learned_table(config, frames, height, width):
            # what the exporter writes beside the graph: the image rows of the learned table. (diffusers also adds
            # the table's text rows to the text tokens; they are zeros here, as the sin-cos table's always are.)
            table = reference.patch_embed.pos_embedding[:, TEXT:].float()
        else:
            table = torch.from_numpy(sincos_pos_embedding(config, frames, height, width))
        ours["pos_embedding"] = table
    if config.get("ofs_embed_dim"):
        ours["ofs"] = torch.full((batch,), 2.0)
        theirs["ofs"] = torch.full((1,), 2.0)  # diffusers' image-to-video pipeline passes a (1,) tensor
    return ours, theirs


# ----- the model against diffusers ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, size", [(name, size) for name, sizes in SIZES.items() for size in sizes], ids=lambda v: str(v)
)
def test_matches_diffusers(name, size):
    reference, own, _ = pair(name)
    ours, theirs = feeds(name, *size)
    with torch.no_grad():
        expected = reference(**theirs, return_dict=False)[0]
        result = own(**ours)
    assert result.shape == expected.shape == ours["hidden_states"].shape[:2] + (4,) + size[1:]
    assert relative_error(result, expected) < 1e-5


def test_learned_table_is_the_buffer_and_is_used():
    """The I2V model keeps diffusers' persistent table; at the sample size diffusers adds it (not the sin-cos one)."""
    reference, own, config = pair("5b-i2v")
    assert "patch_embed.pos_embedding" in own.state_dict()
    assert torch.equal(own.patch_embed.pos_embedding, reference.patch_embed.pos_embedding.float())
    assert uses_learned_table(config, 3, 8, 8) and not uses_learned_table(config, 2, 8, 8)
    ours, theirs = feeds("5b-i2v", 3, 8, 8)
    ours["pos_embedding"] = torch.from_numpy(sincos_pos_embedding(config, 3, 8, 8))
    with torch.no_grad():
        assert relative_error(own(**ours), reference(**theirs, return_dict=False)[0]) > 1e-3
    with pytest.raises(ConfigError, match=r"height x width 8x10.*accepted: only its sample size, latent 8x8"):
        uses_learned_table(config, 3, 8, 10)
    wrong_size = inputs(config, 3, 8, 10)
    wrong_size["image_rotary_emb"] = pipeline_rotary(reference.config, 3, 8, 10)
    with pytest.raises(ValueError, match="different resolution"):  # diffusers refuses it too
        reference(**wrong_size, return_dict=False)


def test_missing_position_inputs_and_unsupported_configs_raise():
    _, own, _ = pair("5b")
    with pytest.raises(ConfigError, match="rotary_cos"):
        own(**inputs(CONFIGS["5b"], 3, 8, 8))
    _, own, _ = pair("2b")
    with pytest.raises(ConfigError, match="pos_embedding"):
        own(**inputs(CONFIGS["2b"], 3, 8, 8))
    with pytest.raises(ConfigError, match="use_learned_positional_embeddings"):
        CogVideoXTransformer3DModel(**dict(BASE, use_learned_positional_embeddings=True))
    with pytest.raises(NotSupportedError, match="patch_size_t"):
        CogVideoXTransformer3DModel(**dict(BASE, patch_size_t=2))
    with pytest.raises(NotSupportedError, match="activation_fn"):
        CogVideoXTransformer3DModel(**dict(BASE, activation_fn="geglu"))


# ----- the NumPy positions against diffusers --------------------------------------------------------------------
ROTARY_CASES = [
    # (sample_height, sample_width, head_dim, patch_size_t, (frames, latent height, latent width)): the real 5b
    # (60x90 latents, head_dim 64) at its own size, taller, wider, smaller; CogVideoX 1.5 (300x300 base); tiny ones
    (60, 90, 64, None, (13, 60, 90)),
    (60, 90, 64, None, (13, 96, 96)),
    (60, 90, 64, None, (7, 48, 106)),
    (60, 90, 64, None, (1, 34, 50)),
    (300, 300, 64, 2, (22, 96, 170)),
    (300, 300, 64, 2, (14, 100, 100)),
    (8, 12, 16, None, (3, 10, 6)),
    (8, 8, 16, 2, (4, 8, 6)),
]


@pytest.mark.parametrize("case", ROTARY_CASES, ids=str)
def test_rotary_embeddings_match_the_pipeline(case):
    sample_height, sample_width, head_dim, patch_t, size = case
    config = dict(
        attention_head_dim=head_dim,
        sample_height=sample_height,
        sample_width=sample_width,
        patch_size=2,
        patch_size_t=patch_t,
    )
    cos, sin = rotary_embeddings(config, *size)
    for pipeline in (CogVideoXPipeline, CogVideoXImageToVideoPipeline):
        expected_cos, expected_sin = pipeline_rotary(config, *size, pipeline=pipeline)
        assert cos.dtype == sin.dtype == np.float32 and cos.shape == tuple(expected_cos.shape)
        assert np.abs(cos - expected_cos.numpy()).max() <= 1e-6
        assert np.abs(sin - expected_sin.numpy()).max() <= 1e-6
    # the scale factor only enters as pixels // (scale * patch): any gives the same tables
    assert np.array_equal(rotary_embeddings(config, *size, vae_scale_factor_spatial=16)[0], cos)


def test_rotary_embeddings_match_get_3d_rotary_pos_embed_directly():
    grid = (23, 37)
    crops = get_resize_crop_region_for_grid(grid, 45, 30)
    expected = get_3d_rotary_pos_embed(64, crops, grid, 11)
    ours = rotary_embeddings(dict(attention_head_dim=64), 11, 46, 74)  # default sample size 60x90
    for a, b in zip(ours, expected):
        assert np.abs(a - b.numpy()).max() <= 1e-6


def test_rotary_refusals():
    with pytest.raises(ConfigError, match="attention_head_dim=24"):
        rotary_embeddings(dict(attention_head_dim=24), 1, 8, 8)
    with pytest.raises(ConfigError, match="at most 8 and width at most 8"):
        rotary_embeddings(dict(CONFIGS["1.5-i2v"], sample_height=8, sample_width=8), 2, 10, 8)


@pytest.mark.parametrize(
    "heads, head_dim, sample, size",
    [
        (6, 64, (60, 90, 49), (13, 60, 90)),  # 2b's sample size: diffusers reads its buffer
        (30, 64, (8, 8, 9), (7, 48, 82)),  # 2b's width (1920) at another size: diffusers recomputes
        (2, 16, (8, 8, 9), (5, 6, 12)),
        (3, 16, (16, 12, 13), (4, 16, 12)),
    ],
    ids=str,
)
def test_sincos_pos_embedding_matches_patch_embed(heads, head_dim, sample, size):
    height, width, sample_frames = sample
    frames, latent_height, latent_width = size
    config = dict(
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        sample_height=height,
        sample_width=width,
        sample_frames=sample_frames,
    )
    embed = CogVideoXPatchEmbed(
        in_channels=4,
        embed_dim=heads * head_dim,
        text_embed_dim=8,
        sample_height=height,
        sample_width=width,
        sample_frames=sample_frames,
        max_text_seq_length=TEXT,
        use_positional_embeddings=True,
        use_learned_positional_embeddings=False,
    )
    joint = embed._get_positional_embeddings(latent_height, latent_width, (frames - 1) * 4 + 1)
    ours = sincos_pos_embedding(config, frames, latent_height, latent_width)
    assert ours.dtype == np.float32 and ours.shape == (1, joint.shape[1] - TEXT, heads * head_dim)
    assert not joint[:, :TEXT].any()  # the text rows diffrt leaves out are zeros
    assert np.abs(ours - joint[:, TEXT:].float().numpy()).max() <= 1e-6
    if size == (13, 60, 90):
        assert np.abs(ours - embed.pos_embedding[:, TEXT:].float().numpy()).max() <= 1e-6


# ----- ONNX -----------------------------------------------------------------------------------------------------
class Graph(torch.nn.Module):
    """The model called with its inputs by name, as the exporter's wrapper calls it."""

    def __init__(self, model, names):
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *args):
        return self.model(**dict(zip(self.names, args)))


AXES = {
    "hidden_states": {0: "batch", 1: "frames", 3: "height", 4: "width"},
    "encoder_hidden_states": {0: "batch", 1: "sequence"},
    "timestep": {0: "batch"},
    "ofs": {0: "batch"},
    "rotary_cos": {0: "tokens"},
    "rotary_sin": {0: "tokens"},
    "pos_embedding": {1: "tokens"},
    "noise_pred": {0: "batch", 1: "frames", 3: "height", 4: "width"},
}


@pytest.mark.parametrize("name", ["2b", "1.5-i2v", "5b-i2v"])
def test_onnx_graph_matches_torch_at_other_sizes(name):
    import onnxruntime as ort

    _, own, _ = pair(name)
    traced, *others = SIZES[name]
    ours, _ = feeds(name, *traced, batch=1)
    names = list(ours)
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            Graph(own, names),
            tuple(ours.values()),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=names,
            output_names=["noise_pred"],
            dynamic_axes={key: AXES[key] for key in names + ["noise_pred"]},
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    for size, text in [(traced, TEXT), *((other, TEXT - 3) for other in others)]:  # any text length works too
        ours, _ = feeds(name, *size, batch=2, text=text)
        with torch.no_grad():
            expected = own(**ours)
        (result,) = session.run(None, {key: value.numpy() for key, value in ours.items()})
        assert result.shape == tuple(expected.shape)
        assert relative_error(result, expected) < 1e-4, size

"""The tiny CogVideoX folders (tests/fixtures/tiny_cogvideox.py) reload with diffusers and generate finite video."""

import json

import numpy as np
import pytest
import torch
from fixtures import tiny_cogvideox as tc
from PIL import Image

BUILDERS = {
    "2b": (tc.build_cogvideox_2b, "CogVideoXPipeline"),
    "5b": (tc.build_cogvideox_5b, "CogVideoXPipeline"),
    "i2v": (tc.build_cogvideox_i2v, "CogVideoXImageToVideoPipeline"),
    "15": (tc.build_cogvideox15, "CogVideoXImageToVideoPipeline"),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cogvideox")
    return {kind: builder(root) for kind, (builder, _) in BUILDERS.items()}


def load(folder, class_name):
    import diffusers

    pipe = getattr(diffusers, class_name).from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image(seed=0, size=tc.HEIGHT):
    return Image.fromarray((np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8))


def generate(pipe, seed=0, **kwargs):
    args = dict(
        prompt="a cat on a red sofa",
        num_frames=tc.NUM_FRAMES,
        height=tc.HEIGHT,
        width=tc.WIDTH,
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(seed),
    )
    if "ImageToVideo" in type(pipe).__name__:
        args["image"] = image()
    return pipe(**{**args, **kwargs}).frames


@pytest.mark.parametrize("kind", BUILDERS)
def test_reloads_and_generates_finite_frames(folders, kind):
    folder = folders[kind]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == BUILDERS[kind][1]
    assert index["tokenizer"] == ["transformers", "T5Tokenizer"]
    assert index["text_encoder"] == ["transformers", "T5EncoderModel"]
    assert (folder / "tokenizer" / "tokenizer.json").is_file()
    assert (folder / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    pipe = load(folder, BUILDERS[kind][1])
    frames = generate(pipe)
    assert frames.shape == (1, tc.NUM_FRAMES, tc.HEIGHT, tc.WIDTH, 3)
    assert np.isfinite(frames).all() and frames.std() > 1e-3
    np.testing.assert_array_equal(frames, generate(pipe))  # seeded: deterministic


def test_configs_are_the_intended_variants(folders):
    def config(kind, part):
        return json.loads(
            (folders[kind] / part / f"{'scheduler_' if part == 'scheduler' else ''}config.json").read_text()
        )

    t2b, t5b, ti2v, t15 = (config(k, "transformer") for k in ("2b", "5b", "i2v", "15"))
    assert not t2b["use_rotary_positional_embeddings"] and t2b["in_channels"] == 4
    assert t5b["use_rotary_positional_embeddings"] and not t5b["use_learned_positional_embeddings"]
    assert ti2v["in_channels"] == 8 and ti2v["use_learned_positional_embeddings"]
    assert t15["patch_size_t"] == 2 and t15["ofs_embed_dim"] == 32 and t15["in_channels"] == 8
    assert all(c["max_text_seq_length"] == 226 for c in (t2b, t5b, ti2v, t15))
    assert config("2b", "scheduler")["_class_name"] == "CogVideoXDDIMScheduler"
    assert {config(k, "scheduler")["_class_name"] for k in ("5b", "i2v", "15")} == {"CogVideoXDPMScheduler"}
    assert config("15", "vae")["invert_scale_latents"] and not config("i2v", "vae")["invert_scale_latents"]


def test_builders_are_deterministic(folders, tmp_path):
    from safetensors.torch import load_file

    again = tc.build_cogvideox_5b(tmp_path)
    for part, name in (("transformer", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model")):
        a, b = load_file(folders["5b"] / part / f"{name}.safetensors"), load_file(again / part / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a, b = (
        load_file(folders["5b"] / "text_encoder" / "model.safetensors"),
        load_file(again / "text_encoder" / "model.safetensors"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (again / "tokenizer" / "tokenizer.json").read_text() == (
        folders["5b"] / "tokenizer" / "tokenizer.json"
    ).read_text()


def test_weights_are_off_their_initial_values(folders):
    from safetensors.torch import load_file

    transformer = load_file(folders["i2v"] / "transformer" / "diffusion_pytorch_model.safetensors")
    norm = transformer["transformer_blocks.0.attn1.norm_q.weight"]
    assert not torch.allclose(norm, torch.ones_like(norm))
    encoder = load_file(folders["i2v"] / "text_encoder" / "model.safetensors")
    assert not torch.allclose(encoder["encoder.final_layer_norm.weight"], torch.ones(32))
    # the learned table differs from the sincos table diffusers computes at other frame counts
    pipe = load(folders["i2v"], "CogVideoXImageToVideoPipeline")
    embed = pipe.transformer.patch_embed
    sincos = embed._get_positional_embeddings(embed.sample_height, embed.sample_width, embed.sample_frames)
    assert embed.pos_embedding.shape == sincos.shape and not torch.allclose(embed.pos_embedding, sincos)


def test_max_sequence_length(folders):
    """Rotary models take any text length; the 2B model's sincos table fixes it at max_text_seq_length (226)."""
    frames = generate(load(folders["5b"], "CogVideoXPipeline"), max_sequence_length=32)
    assert np.isfinite(frames).all()
    with pytest.raises(RuntimeError, match="size of tensor"):
        generate(load(folders["2b"], "CogVideoXPipeline"), max_sequence_length=32)


def test_video_to_video_pipeline_runs_on_the_2b_folder(folders):
    pipe = load(folders["2b"], "CogVideoXVideoToVideoPipeline")
    video = [image(seed) for seed in range(tc.NUM_FRAMES)]
    frames = pipe(
        video=video,
        prompt="a cat on a red sofa",
        height=tc.HEIGHT,
        width=tc.WIDTH,
        num_inference_steps=4,
        strength=0.5,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).frames
    assert frames.shape == (1, tc.NUM_FRAMES, tc.HEIGHT, tc.WIDTH, 3) and np.isfinite(frames).all()

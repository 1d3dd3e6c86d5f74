"""Shape contracts: one description per network gives export axes, TensorRT profiles and runtime shapes."""

import numpy as np
import pytest

from diffrt.runtime import networks
from diffrt.runtime.errors import ConfigError
from diffrt.runtime.networks import ShapeRange

SD15_UNET = {"in_channels": 4, "out_channels": 4, "cross_attention_dim": 768, "block_out_channels": [320, 640]}
SD15_TEXT = {"hidden_size": 768, "num_hidden_layers": 12, "vocab_size": 49408, "projection_dim": 768}


def test_unet_contract_names_shapes_and_axes():
    unet = networks.unet_network(SD15_UNET, scale_factor=8)
    assert unet.input_names == ["sample", "timestep", "encoder_hidden_states"]
    assert unet.output_names == ["out_sample"]
    shapes = unet.shapes(2, 512, 768)
    assert shapes == {
        "sample": (2, 4, 64, 96),
        "timestep": (2,),  # one per sample
        "encoder_hidden_states": (2, 77, 768),
        "out_sample": (2, 4, 64, 96),
    }
    assert unet.dynamic_axes() == {
        "sample": {0: "batch", 2: "latent_height", 3: "latent_width"},
        "timestep": {0: "batch"},
        "encoder_hidden_states": {0: "batch", 1: "sequence"},
        "out_sample": {0: "batch", 2: "latent_height", 3: "latent_width"},
    }
    assert unet.dynamic_axes(static_size=True)["sample"] == {0: "batch"}
    with pytest.raises(ConfigError, match="multiples of 8"):
        unet.shapes(1, 500, 512)


def test_unet_optional_inputs_follow_the_config():
    lcm = networks.unet_network({**SD15_UNET, "time_cond_proj_dim": 256}, 8)
    assert lcm.input_names[-1] == "timestep_cond" and lcm.shapes(1, 64, 64)["timestep_cond"] == (1, 256)
    labelled = networks.unet_network({**SD15_UNET, "num_class_embeds": 10}, 8)
    assert labelled.inputs[-1].dtype == "int64" and labelled.shapes(3, 64, 64)["class_labels"] == (3,)
    projected = networks.unet_network(
        {**SD15_UNET, "class_embed_type": "projection", "projection_class_embeddings_input_dim": 12}, 8
    )
    assert projected.shapes(2, 64, 64)["class_labels"] == (2, 12)


def test_profile_doubles_the_unet_batch_for_guidance():
    unet = networks.unet_network(SD15_UNET, scale_factor=8)
    profile = unet.profile(ShapeRange(batch=(1, 1, 4), height=(256, 512, 1024), width=(256, 512, 768)))
    assert profile["sample"] == ((2, 4, 32, 32), (2, 4, 64, 64), (8, 4, 128, 96))
    assert profile["timestep"] == ((2,), (2,), (8,))  # one per sample, as the sample's batch
    decoder = networks.vae_decoder_network({"latent_channels": 4}, 8)
    assert decoder.profile(ShapeRange.around(512, 512, batch=2))["latent_sample"] == (
        (1, 4, 32, 32),
        (1, 4, 64, 64),
        (2, 4, 128, 128),
    )


def test_text_encoder_contract_has_clip_skip_and_hidden_state_outputs():
    text = networks.text_encoder_network(SD15_TEXT)
    assert text.output_names[:2] == ["last_hidden_state", "pooler_output"]
    assert text.output_names[2:13] == [f"clip_skip.{k}" for k in range(1, 12)]
    assert text.output_names[13:] == [f"hidden_states.{i}" for i in range(13)]  # embeddings + 12 layers
    assert text.shapes(2, 512, 512)["input_ids"] == (2, 77)
    feeds = text.sample_feeds(3, 512, 512)
    assert feeds["input_ids"].dtype == np.int64 and feeds["input_ids"].max() < 49408
    projected = networks.text_encoder_network(SD15_TEXT, name="text_encoder_2", projection=True)
    assert projected.output_names[1] == "text_embeds" and projected.name == "text_encoder_2"


def test_vae_and_depth_contracts():
    encoder = networks.vae_encoder_network({"latent_channels": 4}, 8)
    assert encoder.shapes(1, 512, 256) == {"sample": (1, 3, 512, 256), "latent_parameters": (1, 8, 64, 32)}
    depth = networks.depth_estimator_network((384, 384))
    assert depth.shapes(2, 512, 768) == {"pixel_values": (2, 3, 384, 384), "predicted_depth": (2, 384, 384)}
    assert depth.dynamic_axes() == {"pixel_values": {0: "batch"}, "predicted_depth": {0: "batch"}}
    ddpm = networks.unconditional_unet_network({"in_channels": 3, "out_channels": 3})
    assert ddpm.shapes(4, 32, 32)["sample"] == (4, 3, 32, 32)
    assert networks.vae_scale_factor({"block_out_channels": [128, 256, 512, 512]}) == 8


def test_sample_feeds_match_shapes_and_are_seeded():
    unet = networks.unet_network(SD15_UNET, scale_factor=8)
    a, b = unet.sample_feeds(1, 64, 64, seed=3), unet.sample_feeds(1, 64, 64, seed=3)
    for name, value in a.items():
        assert value.shape == unet.shapes(1, 64, 64)[name] and value.dtype == np.float32
        np.testing.assert_array_equal(value, b[name])
    assert a["timestep"].shape == (1,) and 0 <= float(a["timestep"][0]) < 1000


def test_shape_range_validation_and_json_round_trip():
    r = ShapeRange.around(512, 768, batch=2)
    assert r.height == (256, 512, 1024) and r.width == (384, 768, 1536) and r.batch == (1, 1, 2)
    assert ShapeRange.from_json(r.to_json()) == r and not r.static_size
    static = ShapeRange.around(512, 512, batch=3, static=True)
    assert static.static_size and static.batch == (1, 3, 3)
    with pytest.raises(ConfigError, match="batch range"):
        ShapeRange(batch=(2, 1, 4))

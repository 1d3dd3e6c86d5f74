"""diffrt's own UNets and VAE against diffusers (the oracle): same names, same outputs, clean ONNX export.

Each parity test builds a tiny diffusers model with seeded random weights (norm affines perturbed too, so a mixed-up
scale or shift shows), saves its config as ``config.json`` would hold it, builds diffrt's model from that config,
loads the state dict with ``strict=True`` and compares outputs: ``max|ours - diffusers| / max|diffusers| <= 1e-5``.
"""

from __future__ import annotations

import io
import json

import diffusers
import numpy as np
import pytest
import torch

from diffrt.export.models import (
    AutoencoderKL,
    NotSupportedError,
    UNet2DConditionModel,
    UNet2DModel,
    model_class_for,
)

TOLERANCE = 1e-5
ONNX_TOLERANCE = 1e-4


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """These models are tiny: with pytest -n 2 on two cores, more threads per worker only fight over the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours.double() - reference.double()).abs().max() / reference.double().abs().max())


def config_json(model) -> dict:
    """The config as a diffusers folder's config.json holds it (lists, ``_class_name``, ``_diffusers_version``)."""
    return json.loads(model.to_json_string())


def pair(reference_class, own_class, config: dict, seed: int = 0):
    """A seeded diffusers model with perturbed weights and diffrt's model holding the same weights."""
    torch.manual_seed(seed)
    reference = reference_class(**config).eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.mul_(1 + 0.2 * torch.randn_like(parameter)).add_(0.02 * torch.randn_like(parameter))
    own = own_class(**config_json(reference)).eval()
    result = own.load_state_dict(reference.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return reference, own


# ---------------------------------------------------------------- UNet2DConditionModel

SD1 = dict(
    block_out_channels=(32, 64),
    layers_per_block=1,
    sample_size=16,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=8,
)
SD2 = dict(SD1, use_linear_projection=True, upcast_attention=True, attention_head_dim=[2, 4])
THREE_LEVELS = dict(
    SD1,
    block_out_channels=(32, 32, 64),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)

# name -> (config, extra forward inputs as a function of the batch size)
CONDITIONAL_CASES = {
    "sd1": (SD1, None),
    "sd2": (SD2, None),
    "inpaint": (dict(SD1, in_channels=9), None),
    "depth": (dict(SD2, in_channels=5), None),
    "upscaler": (
        dict(
            SD1,
            in_channels=7,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            only_cross_attention=[True, False],
            use_linear_projection=True,
            num_class_embeds=10,
        ),
        lambda b: dict(class_labels=torch.arange(b) + 3),
    ),
    "class-timestep": (dict(SD1, class_embed_type="timestep"), lambda b: dict(class_labels=torch.rand(b) * 100)),
    "class-timestep-concat": (
        dict(SD1, class_embed_type="timestep", class_embeddings_concat=True),
        lambda b: dict(class_labels=torch.rand(b) * 100),
    ),
    "class-projection": (
        dict(SD1, class_embed_type="projection", projection_class_embeddings_input_dim=12),
        lambda b: dict(class_labels=torch.randn(b, 12)),
    ),
    "class-simple-projection": (
        dict(SD1, class_embed_type="simple_projection", projection_class_embeddings_input_dim=12),
        lambda b: dict(class_labels=torch.randn(b, 12)),
    ),
    "class-identity": (dict(SD1, class_embed_type="identity"), lambda b: dict(class_labels=torch.randn(b, 128))),
    "lcm-time-cond": (dict(SD1, time_cond_proj_dim=16), lambda b: dict(timestep_cond=torch.randn(b, 16))),
    "scale-shift": (dict(SD1, resnet_time_scale_shift="scale_shift"), None),
    # diffusers hands these only to block types diffrt does not build; they must change nothing here either
    "ignored-resnet-options": (
        dict(SD1, resnet_skip_time_act=True, resnet_out_scale_factor=2.0, mid_block_only_cross_attention=True),
        None,
    ),
    "two-transformer-layers": (dict(SD2, transformer_layers_per_block=2), None),
    "transformer-layers-list": (dict(SD1, transformer_layers_per_block=[2, 1]), None),
    "only-cross-attention": (dict(SD1, only_cross_attention=True), None),
    "no-mid-block": (dict(SD1, mid_block_type=None), None),
    "resnet-mid-block": (dict(SD1, mid_block_type="UNetMidBlock2D", mid_block_scale_factor=2.0), None),
    "three-levels": (THREE_LEVELS, None),
    "attn-blocks": (
        dict(
            SD1,
            down_block_types=("AttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "AttnUpBlock2D"),
        ),
        None,
    ),
    "time-embedding-options": (
        dict(
            SD1,
            time_embedding_type="fourier",
            time_embedding_dim=48,
            time_embedding_act_fn="silu",
            timestep_post_act="mish",
            flip_sin_to_cos=False,
            freq_shift=1,
            act_fn="mish",
            norm_eps=1e-6,
            center_input_sample=True,
            conv_in_kernel=1,
            conv_out_kernel=5,
            cross_attention_dim=[32, 32],
            layers_per_block=[2, 1],
            downsample_padding=0,
        ),
        None,
    ),
}


def conditional_inputs(config: dict, batch: int, height: int, width: int, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, config["in_channels"], height, width, generator=generator)
    context_dim = config["cross_attention_dim"]
    context_dim = context_dim[0] if isinstance(context_dim, list) else context_dim
    context = torch.randn(batch, 7, context_dim, generator=generator)
    return sample, context


@pytest.mark.parametrize("name", list(CONDITIONAL_CASES))
def test_unet2d_condition_matches_diffusers(name):
    config, extra = CONDITIONAL_CASES[name]
    reference, own = pair(diffusers.UNet2DConditionModel, UNet2DConditionModel, config)
    sample, context = conditional_inputs(config, 2, 16, 16)
    kwargs = extra(2) if extra else {}
    with torch.no_grad():
        expected = reference(sample, torch.tensor([421.0, 17.0]), context, **kwargs).sample
        ours = own(sample, torch.tensor([421.0, 17.0]), context, **kwargs)
    assert ours.shape == expected.shape
    assert relative_error(ours, expected) <= TOLERANCE


@pytest.mark.parametrize("height, width", [(18, 22), (14, 10), (13, 19)])
def test_unet2d_condition_odd_sizes_follow_the_skip_shapes(height, width):
    reference, own = pair(diffusers.UNet2DConditionModel, UNet2DConditionModel, THREE_LEVELS)
    sample, context = conditional_inputs(THREE_LEVELS, 1, height, width)
    with torch.no_grad():
        expected = reference(sample, 999, context).sample
        ours = own(sample, 999, context)
    assert ours.shape == (1, 4, height, width)
    assert relative_error(ours, expected) <= TOLERANCE


@pytest.mark.parametrize(
    "timestep",
    [7, 250.5, torch.tensor(981), torch.tensor(3.25), torch.tensor([500]), torch.tensor([1, 999, 42])],
    ids=["int", "float", "0d-int", "0d-float", "length-1", "per-sample"],
)
def test_unet2d_condition_timestep_forms(timestep):
    reference, own = pair(diffusers.UNet2DConditionModel, UNet2DConditionModel, SD1)
    sample, context = conditional_inputs(SD1, 3, 8, 8)
    with torch.no_grad():
        expected = reference(sample, timestep, context).sample
        ours = own(sample, timestep, context)
    assert relative_error(ours, expected) <= TOLERANCE


def test_num_attention_heads_means_heads():
    """diffusers rejects num_attention_heads; diffrt reads it as the head count, attention_head_dim then unused."""
    torch.manual_seed(0)
    by_heads = UNet2DConditionModel(**dict(SD1, num_attention_heads=[2, 4], attention_head_dim=8)).eval()
    by_quirk = UNet2DConditionModel(**dict(SD1, attention_head_dim=[2, 4])).eval()
    by_quirk.load_state_dict(by_heads.state_dict(), strict=True)
    assert by_heads.down_blocks[0].attentions[0].transformer_blocks[0].attn1.heads == 2
    sample, context = conditional_inputs(SD1, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(by_heads(sample, 10, context), by_quirk(sample, 10, context))


# ---------------------------------------------------------------- UNet2DModel

DDPM = dict(
    sample_size=16,
    in_channels=3,
    out_channels=3,
    layers_per_block=1,
    block_out_channels=(16, 32),
    norm_num_groups=8,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
)
# google/ddpm-cifar10-32 with fewer channels
CIFAR10 = dict(
    sample_size=16,
    in_channels=3,
    out_channels=3,
    block_out_channels=(16, 32, 32, 32),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=2,
    attention_head_dim=None,
    norm_eps=1e-6,
    norm_num_groups=8,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    center_input_sample=False,
    act_fn="silu",
    mid_block_scale_factor=1,
    time_embedding_type="positional",
)
UNCONDITIONAL_CASES = {
    "ddpm": (DDPM, None, None),
    "cifar10": (CIFAR10, None, None),
    "fourier-scale-shift-resnet-resampling": (
        dict(
            DDPM,
            time_embedding_type="fourier",
            resnet_time_scale_shift="scale_shift",
            downsample_type="resnet",
            upsample_type="resnet",
            down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D"),
            attention_head_dim=4,
            mid_block_scale_factor=1.5,
        ),
        torch.tensor([0.3, 12.0]),
        None,
    ),
    "learned-time-class-embeds": (
        dict(
            DDPM, time_embedding_type="learned", num_train_timesteps=1000, num_class_embeds=5, center_input_sample=True
        ),
        None,
        lambda b: dict(class_labels=torch.arange(b)),
    ),
    "class-timestep-no-mid-attention": (
        dict(DDPM, class_embed_type="timestep", add_attention=False, attn_norm_num_groups=4),
        None,
        lambda b: dict(class_labels=torch.tensor([5.0, 600.0])),
    ),
    "attn-norm-groups-no-mid": (dict(DDPM, attn_norm_num_groups=4), None, None),
    "no-mid-block": (dict(DDPM, mid_block_type=None), None, None),
}


@pytest.mark.parametrize("name", list(UNCONDITIONAL_CASES))
def test_unet2d_matches_diffusers(name):
    config, timestep, extra = UNCONDITIONAL_CASES[name]
    reference, own = pair(diffusers.UNet2DModel, UNet2DModel, config)
    sample = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    timestep = torch.tensor([900, 3]) if timestep is None else timestep
    kwargs = extra(2) if extra else {}
    with torch.no_grad():
        expected = reference(sample, timestep, **kwargs).sample
        ours = own(sample, timestep, **kwargs)
    assert relative_error(ours, expected) <= TOLERANCE


@pytest.mark.parametrize("timestep", [12, torch.tensor(640), torch.tensor([640]), torch.tensor([1, 640, 999])], ids=str)
def test_unet2d_timestep_forms(timestep):
    reference, own = pair(diffusers.UNet2DModel, UNet2DModel, CIFAR10)
    sample = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference(sample, timestep).sample
        ours = own(sample, timestep)
    assert relative_error(ours, expected) <= TOLERANCE


# ---------------------------------------------------------------- AutoencoderKL

VAE_TWO = dict(
    block_out_channels=(16, 32),
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    norm_num_groups=8,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    sample_size=32,
)
VAE_THREE = dict(
    VAE_TWO,
    block_out_channels=(16, 32, 32),
    layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
)
VAE_CASES = {
    "two-blocks": VAE_TWO,
    "three-blocks": VAE_THREE,
    "no-quant-convs-no-mid-attention": dict(
        VAE_TWO, use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=False, latent_channels=8
    ),
}


@pytest.mark.parametrize("name", list(VAE_CASES))
def test_autoencoder_kl_matches_diffusers(name):
    config = VAE_CASES[name]
    reference, own = pair(diffusers.AutoencoderKL, AutoencoderKL, config)
    generator = torch.Generator().manual_seed(4)
    image = torch.rand(2, 3, 32, 24, generator=generator) * 2 - 1
    factor = 2 ** (len(config["block_out_channels"]) - 1)
    latent = torch.randn(2, config["latent_channels"], 32 // factor, 24 // factor, generator=generator)
    with torch.no_grad():
        expected_parameters = reference.encode(image).latent_dist.parameters
        expected_image = reference.decode(latent).sample
        parameters = own.encode(image)
        decoded = own.decode(latent)
        reconstructed = own(image)
    assert parameters.shape == (2, 2 * config["latent_channels"], 32 // factor, 24 // factor)
    assert relative_error(parameters, expected_parameters) <= TOLERANCE
    assert relative_error(decoded, expected_image) <= TOLERANCE
    with torch.no_grad():
        expected_reconstruction = reference.decode(expected_parameters[:, : config["latent_channels"]]).sample
    assert relative_error(reconstructed, expected_reconstruction) <= TOLERANCE
    assert own.scaling_factor == reference.config.scaling_factor


# ---------------------------------------------------------------- names, configs, determinism


@pytest.mark.parametrize(
    "reference_class, own_class, config",
    [
        (diffusers.UNet2DConditionModel, UNet2DConditionModel, SD2),
        (diffusers.UNet2DModel, UNet2DModel, DDPM),
        (diffusers.AutoencoderKL, AutoencoderKL, VAE_TWO),
    ],
    ids=["unet-condition", "unet", "vae"],
)
def test_strict_loading_rejects_missing_and_extra_keys(reference_class, own_class, config):
    reference, own = pair(reference_class, own_class, config)
    state = reference.state_dict()
    assert {k: v.shape for k, v in own.state_dict().items()} == {k: v.shape for k, v in state.items()}
    missing = dict(state)
    missing.pop(next(iter(missing)))
    with pytest.raises(RuntimeError, match="Missing key"):
        own.load_state_dict(missing, strict=True)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        own.load_state_dict({**state, "extra.weight": torch.zeros(1)}, strict=True)


@pytest.mark.parametrize(
    "own_class, config", [(UNet2DConditionModel, SD2), (UNet2DModel, DDPM), (AutoencoderKL, VAE_TWO)]
)
def test_init_is_deterministic_under_manual_seed(own_class, config):
    torch.manual_seed(5)
    first = own_class.from_config(config).state_dict()
    torch.manual_seed(5)
    second = own_class(**config).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_private_and_unknown_config_keys_are_ignored():
    config = dict(SD1, _class_name="UNet2DConditionModel", _diffusers_version="0.6.0", some_future_key=1)
    assert isinstance(UNet2DConditionModel.from_config(config), UNet2DConditionModel)
    assert isinstance(UNet2DConditionModel(**config), UNet2DConditionModel)


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(down_block_types=("SimpleCrossAttnDownBlock2D", "DownBlock2D")), "down_block_types"),
        (dict(up_block_types=("UpBlock2D", "KCrossAttnUpBlock2D")), "up_block_types"),
        (dict(mid_block_type="UNetMidBlock2DSimpleCrossAttn"), "mid_block_type"),
        (dict(resnet_time_scale_shift="spatial"), "resnet_time_scale_shift"),
        (dict(class_embed_type="projection"), "projection_class_embeddings_input_dim"),
        (dict(class_embed_type="text"), "class_embed_type"),
        (dict(act_fn="tanh"), "act_fn"),
        (dict(attention_head_dim=[2, 4, 8]), "attention_head_dim"),
        (dict(block_out_channels=(32, 64, 64)), "block_out_channels"),
    ],
)
def test_unsupported_conditional_configs_name_the_key(overrides, field):
    with pytest.raises(ValueError, match=field):
        UNet2DConditionModel(**dict(SD1, **overrides))


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(addition_embed_type="text", addition_embed_type_num_heads=2), "addition_embed_type"),
        (dict(encoder_hid_dim=16), "encoder_hid_dim"),
        (dict(dual_cross_attention=True), "dual_cross_attention"),
        (dict(attention_type="gated"), "attention_type"),
        (dict(norm_num_groups=None), "norm_num_groups"),
    ],
)
def test_not_yet_supported_features_raise_not_implemented(overrides, field):
    with pytest.raises(NotSupportedError, match=field) as caught:
        UNet2DConditionModel(**dict(SD1, **overrides))
    assert isinstance(caught.value, NotImplementedError) and isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    "own_class, config, field",
    [
        (UNet2DModel, dict(DDPM, down_block_types=("SkipDownBlock2D", "AttnDownBlock2D")), "down_block_types"),
        (UNet2DModel, dict(DDPM, upsample_type="fir"), "upsample_type"),
        (UNet2DModel, dict(DDPM, time_embedding_type="learned"), "num_train_timesteps"),
        (AutoencoderKL, dict(VAE_TWO, up_block_types=("AttnUpDecoderBlock2D",) * 2), "up_block_types"),
        (AutoencoderKL, dict(VAE_TWO, block_out_channels=(16,)), "block_out_channels"),
    ],
)
def test_unsupported_unconditional_and_vae_configs_name_the_key(own_class, config, field):
    with pytest.raises(ValueError, match=field):
        own_class(**config)


def test_model_class_for():
    assert model_class_for("UNet2DConditionModel") is UNet2DConditionModel
    assert model_class_for("UNet2DModel") is UNet2DModel
    assert model_class_for("AutoencoderKL") is AutoencoderKL
    assert model_class_for("AutoencoderTiny").__name__ == "AutoencoderTiny"
    with pytest.raises(ValueError, match="AutoencoderKL"):
        model_class_for("VQModel")


def test_missing_class_labels_is_a_clear_error():
    own = UNet2DConditionModel(**dict(SD1, num_class_embeds=4)).eval()
    sample, context = conditional_inputs(SD1, 1, 8, 8)
    with pytest.raises(ValueError, match="class_labels"):
        own(sample, 1, context)


def test_float16_outputs_are_finite_and_close():
    _, own = pair(diffusers.UNet2DConditionModel, UNet2DConditionModel, SD2)
    sample, context = conditional_inputs(SD2, 1, 8, 8)
    with torch.no_grad():
        expected = own(sample, torch.tensor(500), context)
        out = own.half()(sample.half(), torch.tensor(500), context.half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert relative_error(out.float(), expected) <= 2e-2

    torch.manual_seed(0)
    unet = UNet2DModel(**DDPM).eval().half()
    vae = AutoencoderKL(**VAE_TWO).eval().half()
    with torch.no_grad():
        outputs = [
            unet(torch.randn(1, 3, 16, 16).half(), 10),
            vae.encode(torch.rand(1, 3, 16, 16).half()),
            vae.decode(torch.randn(1, 4, 8, 8).half()),
        ]
    assert all(out.dtype == torch.float16 and torch.isfinite(out).all() for out in outputs)


# ---------------------------------------------------------------- ONNX round trips


def onnx_session(module, args, input_names, output_names, dynamic_axes):
    import onnxruntime as ort

    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            module,
            args,
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])


IMAGE_AXES = {0: "batch", 2: "height", 3: "width"}


class ConditionalGraph(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.unet(sample, timestep, encoder_hidden_states)


@pytest.mark.parametrize("config", [dict(THREE_LEVELS, layers_per_block=1), SD2], ids=["sd1-three-levels", "sd2"])
def test_unet2d_condition_onnx_dynamic_shapes(config):
    torch.manual_seed(6)
    unet = UNet2DConditionModel(**config).eval()
    sample, context = conditional_inputs(config, 1, 32, 32)
    session = onnx_session(
        ConditionalGraph(unet),
        (sample, torch.tensor([500.0]), context),
        ["sample", "timestep", "encoder_hidden_states"],
        ["out_sample"],
        {
            "sample": IMAGE_AXES,
            "timestep": {0: "steps"},
            "encoder_hidden_states": {0: "batch", 1: "tokens"},
            "out_sample": IMAGE_AXES,
        },
    )
    for height, width, timestep in [(24, 40, [999.0]), (40, 24, [3.0, 700.0]), (18, 22, [250.0])]:
        sample, context = conditional_inputs(config, 2, height, width, seed=height)
        timestep = torch.tensor(timestep)
        (ours,) = session.run(
            None, {"sample": sample.numpy(), "timestep": timestep.numpy(), "encoder_hidden_states": context.numpy()}
        )
        with torch.no_grad():
            expected = unet(sample, timestep, context)
        assert ours.shape == (2, 4, height, width)
        assert relative_error(torch.from_numpy(ours), expected) <= ONNX_TOLERANCE


def test_unet2d_onnx_dynamic_shapes():
    torch.manual_seed(7)
    unet = UNet2DModel(
        **dict(
            DDPM,
            block_out_channels=(16, 32, 32),
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        )
    ).eval()
    session = onnx_session(
        unet,
        (torch.randn(1, 3, 16, 16), torch.tensor([10])),
        ["sample", "timestep"],
        ["out_sample"],
        {"sample": IMAGE_AXES, "timestep": {0: "steps"}, "out_sample": IMAGE_AXES},
    )
    for height, width, timestep in [(24, 8, [999, 3, 0]), (12, 20, [500]), (14, 10, [7])]:
        sample = torch.randn(3, 3, height, width, generator=torch.Generator().manual_seed(height))
        timestep = torch.tensor(timestep)
        (ours,) = session.run(None, {"sample": sample.numpy(), "timestep": timestep.numpy()})
        with torch.no_grad():
            expected = unet(sample, timestep)
        assert relative_error(torch.from_numpy(ours), expected) <= ONNX_TOLERANCE


class Encode(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, sample):
        return self.vae.encode(sample)


class Decode(Encode):
    def forward(self, latent_sample):
        return self.vae.decode(latent_sample)


def test_autoencoder_kl_onnx_dynamic_shapes():
    torch.manual_seed(8)
    vae = AutoencoderKL(**VAE_THREE).eval()
    encoder = onnx_session(
        Encode(vae),
        (torch.randn(1, 3, 32, 32),),
        ["sample"],
        ["latent_parameters"],
        {"sample": IMAGE_AXES, "latent_parameters": IMAGE_AXES},
    )
    decoder = onnx_session(
        Decode(vae),
        (torch.randn(1, 4, 8, 8),),
        ["latent_sample"],
        ["sample"],
        {"latent_sample": IMAGE_AXES, "sample": IMAGE_AXES},
    )
    generator = torch.Generator().manual_seed(9)
    image = torch.rand(2, 3, 48, 24, generator=generator) * 2 - 1
    latent = torch.randn(3, 4, 6, 10, generator=generator)
    (parameters,) = encoder.run(None, {"sample": image.numpy()})
    (decoded,) = decoder.run(None, {"latent_sample": latent.numpy()})
    with torch.no_grad():
        assert relative_error(torch.from_numpy(parameters), vae.encode(image)) <= ONNX_TOLERANCE
        assert relative_error(torch.from_numpy(decoded), vae.decode(latent)) <= ONNX_TOLERANCE
    assert decoded.shape == (3, 3, 24, 40) and np.isfinite(decoded).all()

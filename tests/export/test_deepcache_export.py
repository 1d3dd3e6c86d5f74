"""DeepCache at export: diffrt's UNet runs DeepCache's shallow path exactly as diffusers' UNet runs under DeepCache's
own ``DeepCacheSDHelper`` (the oracle), and ``diffrt export --deepcache`` writes that path as graphs beside a UNet
that also returns the deep features, recorded in ``diffrt.json``; a plain export stays as it was."""

from __future__ import annotations

import json
import types

import onnx
import pytest
import torch

from diffrt.cli import main
from diffrt.export.models import UNet2DConditionModel
from diffrt.export.package import ExportOptions, export_package
from diffrt.export.source import load_source
from diffrt.runtime import networks
from diffrt.runtime.errors import ConfigError, PackageError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(block_out_channels=(32, 64), sample_size=16, out_channels=4, cross_attention_dim=32, norm_num_groups=8)
OUTER_ATTENTION = ("CrossAttnDownBlock2D", "DownBlock2D"), ("UpBlock2D", "CrossAttnUpBlock2D")
INNER_ATTENTION = ("DownBlock2D", "CrossAttnDownBlock2D"), ("CrossAttnUpBlock2D", "UpBlock2D")
UNETS = {
    "outer-attention-2-layers": dict(
        SMALL, layers_per_block=2, down_block_types=OUTER_ATTENTION[0], up_block_types=OUTER_ATTENTION[1]
    ),
    "1-layer": dict(SMALL, layers_per_block=1, down_block_types=INNER_ATTENTION[0], up_block_types=INNER_ATTENTION[1]),
    "inpaint-3-blocks": dict(
        SMALL,
        in_channels=9,
        layers_per_block=2,
        block_out_channels=(32, 32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    ),
    "sdxl": dict(
        block_out_channels=(8, 16),
        layers_per_block=2,
        sample_size=16,
        down_block_types=INNER_ATTENTION[0],
        up_block_types=INNER_ATTENTION[1],
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=32 + 6 * 8,
        cross_attention_dim=64,
        norm_num_groups=1,
    ),
}
TIMESTEPS = [900, 750, 600, 450, 300, 150, 20]
INTERVAL = 3


def unet_pair(config: dict) -> tuple[torch.nn.Module, UNet2DConditionModel]:
    from diffusers import UNet2DConditionModel as DiffusersUNet

    torch.manual_seed(0)
    theirs = DiffusersUNet(**config).eval()
    ours = UNet2DConditionModel.from_config(dict(theirs.config))
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours.eval()


def step_inputs(config: dict, step: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    g = torch.Generator().manual_seed(step)
    sample = torch.randn(2, config.get("in_channels", 4), 16, 16, generator=g)
    context = torch.randn(2, 7, config["cross_attention_dim"], generator=g)
    added = {}
    if config.get("addition_embed_type") == "text_time":
        added = dict(text_embeds=torch.randn(2, 32, generator=g), time_ids=torch.randn(2, 6, generator=g))
    return sample, context, added


@pytest.mark.parametrize("name", list(UNETS))
def test_shallow_steps_equal_diffusers_under_deepcache_helper(name):
    from DeepCache import DeepCacheSDHelper

    config = UNETS[name]
    theirs, ours = unet_pair(config)
    timesteps = torch.tensor(TIMESTEPS)
    for branch in (0, 1, 2):
        pipe = types.SimpleNamespace(unet=theirs, scheduler=types.SimpleNamespace(timesteps=timesteps))
        helper = DeepCacheSDHelper(pipe=pipe)
        helper.set_params(cache_interval=INTERVAL, cache_branch_id=branch)
        helper.enable()
        try:
            features = None
            for step, t in enumerate(timesteps):
                sample, context, added = step_inputs(config, step)
                with torch.no_grad():
                    expected = theirs(sample, t, context, added_cond_kwargs=added or None).sample
                    if step % INTERVAL == 0:
                        got, (features,) = ours.with_deep_features(sample, t, context, (branch,), **added)
                        assert torch.equal(got, ours(sample, t, context, **added))
                    else:
                        got = ours.shallow(sample, t, context, features, branch, **added)
                        whole = ours(sample, t, context, **added)
                        assert (whole - expected).abs().max() > 1e-3, "the cached step must differ from a full one"
                assert (got - expected).abs().max() < 2e-5, f"branch {branch}, step {step}"
                assert features.shape == (2, networks.deep_features_channels(config, branch), 16, 16)
        finally:
            helper.disable()


def test_branches_follow_the_outer_blocks_depth():
    assert networks.deepcache_branches({"layers_per_block": 2}) == (0, 1, 2)
    assert networks.deepcache_branches({"layers_per_block": 1}) == (0, 1)
    assert networks.deepcache_branches({"layers_per_block": [3, 2]}) == (0, 1, 2)
    config = {"layers_per_block": 2, "block_out_channels": (320, 640, 1280, 1280)}
    assert [networks.deep_features_channels(config, b) for b in (0, 1, 2)] == [320, 320, 640]
    config.update(cross_attention_dim=768)
    unet = networks.unet_network(config, 8, deepcache_branches=(0, 2))
    assert unet.output_names == ["out_sample", "deep_features.0", "deep_features.2"]
    assert unet.shapes(1, 512, 512)["deep_features.2"] == (1, 640, 64, 64)
    assert networks.unet_network(config, 8).output_names == ["out_sample"]
    shallow = networks.unet_shallow_network(config, 8, 1)
    assert shallow.name == "unet_shallow_1" and shallow.batch_multiplier == 2
    assert shallow.input_names == ["sample", "timestep", "encoder_hidden_states", "deep_features"]
    assert shallow.shapes(2, 512, 512)["deep_features"] == (2, 320, 64, 64)
    with pytest.raises(ConfigError, match=r"branch 2 .* accepted: \[0, 1\]"):
        networks.unet_shallow_network({"layers_per_block": 1, "cross_attention_dim": 32}, 8, 2)


@pytest.fixture(scope="module")
def deepcache_model(tmp_path_factory):
    from fixtures import tiny_models as tm

    return tm.build_sd_deepcache(tmp_path_factory.mktemp("deepcache_model"))


@pytest.fixture(scope="module")
def deepcache_package(deepcache_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("deepcache_package") / "package"
    assert main(["export", str(deepcache_model), str(out), "--deepcache"]) == 0
    return out


def test_export_deepcache_writes_shallow_graphs_and_records_the_branches(deepcache_package):
    out = deepcache_package
    provenance = json.loads((out / "diffrt.json").read_text())
    assert provenance["export"]["deepcache"] == {"branches": [0, 1, 2]}
    config = json.loads((out / "unet" / "config.json").read_text())
    unet = onnx.load(str(out / "unet" / "model.onnx"), load_external_data=False)
    assert [o.name for o in unet.graph.output] == [
        "out_sample",
        "deep_features.0",
        "deep_features.1",
        "deep_features.2",
    ]
    for branch in (0, 1, 2):
        name = f"unet_shallow_{branch}"
        contract = networks.unet_shallow_network(config, 2, branch)
        graph = onnx.load(str(out / name / "model.onnx"), load_external_data=False)
        assert [i.name for i in graph.graph.input] == contract.input_names
        assert [o.name for o in graph.graph.output] == ["out_sample"]
        check = provenance["networks"][name]["check"]
        assert check["max_rel_error"] < 1e-4 and len(check["sizes"]) == 2  # the graph against the torch module
    # branch 0 runs only the outermost up layer: far smaller than the UNet
    sizes = {n: provenance["networks"][n]["bytes"] for n in ("unet", "unet_shallow_0", "unet_shallow_2")}
    assert sizes["unet_shallow_0"] < sizes["unet_shallow_2"] < sizes["unet"]


def test_deepcache_refuses_what_it_cannot_serve(tmp_path):
    from fixtures import tiny_models as tm

    with pytest.raises(ConfigError, match="--deepcache cannot be combined with --lora-slots"):
        ExportOptions(deepcache=True, lora_slots=8)
    ddpm = tm.build_ddpm(tmp_path / "models")
    with pytest.raises(ConfigError, match="--deepcache needs a text-conditioned UNet"):
        export_package(load_source(ddpm), tmp_path / "package", ExportOptions(deepcache=True))
    assert not (tmp_path / "package").exists()


def test_lora_apply_refuses_a_deepcache_package(deepcache_package, tmp_path):
    from diffrt.export.lora_package import apply_loras
    from diffrt.runtime.lora import LoraSpec

    with pytest.raises(PackageError, match="exported with --deepcache.*--deepcache --lora"):
        apply_loras(deepcache_package, tmp_path / "out", [LoraSpec.parse(str(tmp_path / "style.safetensors"))])
    assert not (tmp_path / "out").exists()

"""LoRA at run time: packages exported with LoRA slots load adapters with diffusers' API and generate diffusers' images.

Each family (SD 1.x, SD 2.x, SDXL) runs one scenario on one diffrt pipeline and one diffusers pipeline side by side:
two adapters loaded, then one active, both at (0.8, 0.5), other weights, disabled, enabled, and A -> B -> A; every
image is compared with diffusers' (within 2e-3). With no adapter active the slotted package gives the unslotted
package's images (within 1e-5). Calls with their own ``adapters=`` run concurrently on one pipeline and each equals
the same call made alone.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from concurrency import assert_concurrent_calls_match_calls_alone
from pipeline_parity import assert_images_close, load_diffusers, run_diffrt, run_diffusers

from diffrt.runtime import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from diffrt.runtime.errors import CheckpointError, ConfigError
from diffrt.runtime.lora import LoraSpec

PROMPT = "a photograph of an astronaut riding a horse"
FAMILIES = ("sd1", "sd2", "sdxl")
DIFFUSERS_CLASS = {
    "sd1": "StableDiffusionPipeline",
    "sd2": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
}
SIZE = {"sd1": (64, 64), "sd2": (64, 64), "sdxl": (32, 48)}


def export_slotted(folder, out, rank_max: int = 64):
    from diffrt.export.package import ExportOptions, export_package
    from diffrt.export.source import load_source

    return export_package(load_source(folder), out, ExportOptions(lora_slots=rank_max, check=False)).path


def build_sd2_adapters(sd2, folder):
    """Two adapters for the tiny SD2 fixture: PEFT on the UNet's attention and every text-encoder layer, and kohya on
    the UNet's linear layers and the text encoder's attention (as fixtures/loras.py builds SD1's)."""
    from fixtures.loras import TEXT_ALL, UNET_ATTENTION, UNET_LINEAR, _adapted, _kohya, _models, _save, _save_diffusers

    unet, text_encoder = _models(sd2)
    peft_unet = _adapted(unet, 41, r=4, lora_alpha=8, target_modules=UNET_ATTENTION)
    peft_text = _adapted(text_encoder, 42, r=2, lora_alpha=1, target_modules=TEXT_ALL)
    a = _save_diffusers(folder / "peft", unet=peft_unet, text_encoder=peft_text)
    k_unet = _adapted(unet, 43, r=4, lora_alpha=4, target_modules=UNET_LINEAR)
    k_text = _adapted(text_encoder, 44, r=2, lora_alpha=2, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])
    b = _save(_kohya(k_unet[0], k_text[0], alphas=lambda name, rank: 4.0), folder / "kohya.safetensors")
    return a, b


@pytest.fixture(scope="module")
def slotted(tiny_models, sdxl_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("slotted")
    return {
        "sd1": export_slotted(tiny_models["sd1"], root / "sd1"),
        "sd2": export_slotted(tiny_models["sd2"], root / "sd2"),
        "sdxl": export_slotted(sdxl_models["sdxl"], root / "sdxl"),
    }


@pytest.fixture(scope="module")
def adapters(tiny_models, sdxl_models, lora_files, tmp_path_factory):
    """family -> (A, B): A touches the UNet and the text encoder(s); B other layers and formats (kohya, SGM, LoCon)."""
    from fixtures.sdxl_loras import build_sdxl_loras

    sdxl = build_sdxl_loras(sdxl_models["sdxl"], tmp_path_factory.mktemp("sdxl_loras"))
    return {
        "sd1": (lora_files["peft_both"], lora_files["kohya"]),
        "sd2": build_sd2_adapters(tiny_models["sd2"], tmp_path_factory.mktemp("sd2_loras")),
        "sdxl": (sdxl["sgm_a"], sdxl["peft_b"]),
        "sd1_locon": lora_files["peft_locon"],
        "sdxl_all": sdxl,
    }


def pipeline_class(family: str):
    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline


def call_kwargs(family: str) -> dict:
    height, width = SIZE[family]
    return dict(prompt=PROMPT, negative_prompt="blurry", num_inference_steps=3, height=height, width=width)


# ----- parity with diffusers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_no_active_adapter_gives_the_unslotted_package_images(family, slotted, packages, sdxl_packages):
    plain_path = sdxl_packages["sdxl"] if family == "sdxl" else packages[family]
    cls = pipeline_class(family)
    mine, plain = cls.from_pretrained(slotted[family], provider="cpu"), cls.from_pretrained(plain_path, provider="cpu")
    kwargs = call_kwargs(family)
    image = run_diffrt(mine, 5, **kwargs)
    assert np.abs(image - run_diffrt(plain, 5, **kwargs)).max() <= 1e-5
    assert image.std() > 1e-3


# (what diffrt and diffusers are asked, in order; None compares images after it)
SCENARIO = (
    ("one adapter", ("set_adapters", ("a",), {})),
    ("two adapters at (0.8, 0.5)", ("set_adapters", (["a", "b"],), {"adapter_weights": [0.8, 0.5]})),
    ("set_adapters changes the weights", ("set_adapters", (["b", "a"],), {"adapter_weights": [0.3, 1.0]})),
    ("disable_lora", ("disable_lora", (), {})),
    ("enable_lora", ("enable_lora", (), {})),
    ("A -> B", ("set_adapters", ("b",), {"adapter_weights": 0.5})),
    ("B -> A", ("set_adapters", ("a",), {})),
)


@pytest.mark.parametrize("family", FAMILIES)
def test_adapters_set_disabled_and_switched_give_diffusers_images(family, slotted, adapters, tiny_models, sdxl_models):
    folder = sdxl_models["sdxl"] if family == "sdxl" else tiny_models[family]
    theirs = load_diffusers(DIFFUSERS_CLASS[family], folder, clip_skip_shim=False)
    mine = pipeline_class(family).from_pretrained(slotted[family], provider="cpu")
    a, b = adapters[family]
    for pipe in (theirs, mine):
        pipe.load_lora_weights(str(a), adapter_name="a")
        pipe.load_lora_weights(str(b), adapter_name="b")
    kwargs = call_kwargs(family)
    images = {}
    for seed, (label, (method, args, kw)) in enumerate(SCENARIO):
        for pipe in (theirs, mine):
            getattr(pipe, method)(*args, **kw)
        assert mine.get_active_adapters() == theirs.get_active_adapters(), label
        images[label] = ours = run_diffrt(mine, seed, **kwargs)
        try:
            assert_images_close(ours, run_diffusers(theirs, seed, **kwargs))
        except AssertionError as error:
            raise AssertionError(f"{family}, {label}: {error}") from None
    assert np.array_equal(run_diffrt(mine, 0, **kwargs), images["one adapter"])  # A -> B -> A: A's image, exactly
    base = run_diffrt(mine, 0, **kwargs, adapters={})
    assert np.abs(images["one adapter"] - base).max() > 0.02, "adapter A changes nothing: the comparison is empty"
    assert np.abs(run_diffrt(mine, 5, **kwargs, adapters={"b": 0.5}) - images["A -> B"]).max() <= 1e-6


def test_locon_adapter_gives_diffusers_images(slotted, adapters, tiny_models):
    theirs = load_diffusers("StableDiffusionPipeline", tiny_models["sd1"], clip_skip_shim=False)
    mine = StableDiffusionPipeline.from_pretrained(slotted["sd1"], provider="cpu")
    for pipe in (theirs, mine):
        pipe.load_lora_weights(str(adapters["sd1_locon"]), adapter_name="locon")
        pipe.set_adapters("locon", 0.3)
    kwargs = call_kwargs("sd1")
    assert_images_close(run_diffrt(mine, 2, **kwargs), run_diffusers(theirs, 2, **kwargs))


@pytest.mark.parametrize("name", ["kohya_a", "peft_a", "kohya_b", "sgm_b"])
def test_each_sdxl_layout_gives_diffusers_images(name, slotted, adapters, sdxl_models):
    path = adapters["sdxl_all"][name]
    theirs = load_diffusers("StableDiffusionXLPipeline", sdxl_models["sdxl"], clip_skip_shim=False)
    mine = StableDiffusionXLPipeline.from_pretrained(slotted["sdxl"], provider="cpu")
    for pipe in (theirs, mine):
        pipe.load_lora_weights(str(path), adapter_name="x")
        pipe.set_adapters("x", 0.5)
    kwargs = call_kwargs("sdxl")
    assert_images_close(run_diffrt(mine, 1, **kwargs), run_diffusers(theirs, 1, **kwargs))


@pytest.mark.parametrize("name", ["peft_unet", "peft_text_encoder", "attn_procs", "kohya_no_alpha", "peft_fp16"])
def test_each_sd1_format_gives_diffusers_images(name, slotted, lora_files, tiny_models):
    theirs = load_diffusers("StableDiffusionPipeline", tiny_models["sd1"], clip_skip_shim=False)
    mine = StableDiffusionPipeline.from_pretrained(slotted["sd1"], provider="cpu")
    for pipe in (theirs, mine):
        pipe.load_lora_weights(str(lora_files[name]), adapter_name="x")
        pipe.set_adapters("x", 0.7)
    kwargs = call_kwargs("sd1")
    assert_images_close(run_diffrt(mine, 3, **kwargs), run_diffusers(theirs, 3, **kwargs))


# ----- concurrency ----------------------------------------------------------------------------------------------
def test_concurrent_calls_with_their_own_adapters_match_calls_alone(slotted, adapters):
    pipe = StableDiffusionPipeline.from_pretrained(slotted["sd1"], provider="cpu")
    pipe.set_progress_bar_config(disable=True)
    a, b = adapters["sd1"]
    pipe.load_lora_weights(str(a), adapter_name="a")
    pipe.load_lora_weights(str(b), adapter_name="b")
    pipe.load_lora_weights(str(adapters["sd1_locon"]), adapter_name="locon")
    pipe.set_adapters(["a", "b"], [0.5, 0.5])  # what calls without adapters= get
    jobs = [
        dict(prompt=PROMPT, adapters={"a": 1.0}, num_inference_steps=3, generator=1, height=64, width=64),
        dict(
            prompt="a red cube",
            adapters={"b": 0.7, "locon": 0.3},
            num_inference_steps=4,
            generator=2,
            height=64,
            width=48,
            guidance_scale=5.0,
        ),
        dict(prompt=PROMPT, adapters={}, num_inference_steps=2, generator=3, height=48, width=64),
        dict(prompt="a blue ball", num_inference_steps=3, generator=4, height=64, width=64, negative_prompt="dark"),
        dict(prompt=PROMPT, adapters={"a": 0.8, "b": 0.5}, num_inference_steps=3, generator=5, height=64, width=64),
    ]
    images = [np.asarray(pipe(**job, output_type="np").images) for job in jobs]
    for i in range(len(images)):
        for j in range(i):
            assert np.abs(images[i][:, :48, :48] - images[j][:, :48, :48]).max() > 1e-3, (i, j)
    assert_concurrent_calls_match_calls_alone(pipe, jobs)
    assert pipe.get_active_adapters() == ["a", "b"]  # the calls' own sets changed nothing shared


# ----- diffusers' API: names, state, errors ----------------------------------------------------------------------
def test_adapter_names_and_listing_follow_diffusers(slotted, lora_files):
    pipe = StableDiffusionPipeline.from_pretrained(slotted["sd1"], provider="cpu")
    assert pipe.get_active_adapters() == [] and pipe.get_list_adapters() == {}
    pipe.load_lora_weights(str(lora_files["peft_unet"]))
    assert pipe.get_active_adapters() == ["default_0"]
    pipe.load_lora_weights(str(lora_files["peft_text_encoder"]), adapter_name="te")
    assert pipe.get_active_adapters() == ["te"]  # the adapter loaded last is the active one, as in diffusers
    pipe.load_lora_weights(str(lora_files["kohya"]))
    assert pipe.get_list_adapters() == {"unet": ["default_0", "default_2"], "text_encoder": ["te", "default_2"]}
    pipe.delete_adapters("default_0")
    assert pipe.get_list_adapters() == {"unet": ["default_2"], "text_encoder": ["te", "default_2"]}
    pipe.unload_lora_weights()
    assert pipe.get_active_adapters() == [] and pipe.get_list_adapters() == {}


def test_unload_and_delete_return_to_the_base_images(slotted, lora_files):
    pipe = StableDiffusionPipeline.from_pretrained(slotted["sd1"], provider="cpu")
    kwargs = call_kwargs("sd1")
    base = run_diffrt(pipe, 0, **kwargs)
    pipe.load_lora_weights(str(lora_files["kohya"]), adapter_name="k")
    styled = run_diffrt(pipe, 0, **kwargs)
    assert np.abs(styled - base).max() > 0.02
    pipe.delete_adapters("k")
    assert np.array_equal(run_diffrt(pipe, 0, **kwargs), base)
    pipe.load_lora_weights(str(lora_files["kohya"]), adapter_name="k")
    assert np.array_equal(run_diffrt(pipe, 0, **kwargs), styled)  # a clean return: no blend left behind
    pipe.unload_lora_weights()
    assert np.array_equal(run_diffrt(pipe, 0, **kwargs), base)


def test_state_dict_and_folder_load_like_the_file(slotted, lora_files, tmp_path):
    from safetensors.numpy import load_file

    pipe = StableDiffusionPipeline.from_pretrained(slotted["sd1"], provider="cpu")
    kwargs = call_kwargs("sd1")
    pipe.load_lora_weights(str(lora_files["kohya"]), adapter_name="file")
    pipe.load_lora_weights(load_file(str(lora_files["kohya"])), adapter_name="dict")
    import safetensors.torch

    as_torch = {k: v.to(torch.bfloat16) for k, v in safetensors.torch.load_file(str(lora_files["kohya"])).items()}
    pipe.load_lora_weights(as_torch, adapter_name="torch_bf16")  # diffusers users hand over torch state dicts
    safetensors.torch.save_file(as_torch, str(tmp_path / "bf16.safetensors"))
    pipe.load_lora_weights(str(tmp_path / "bf16.safetensors"), adapter_name="file_bf16")
    folder = lora_files["peft_both"].parent
    pipe.load_lora_weights(str(folder), adapter_name="folder")
    pipe.load_lora_weights(str(folder), weight_name=lora_files["peft_both"].name, adapter_name="weight_name")
    images = {name: run_diffrt(pipe, 1, **kwargs, adapters={name: 1.0}) for name in ("file", "dict")}
    assert np.array_equal(images["file"], images["dict"])
    bf16 = [run_diffrt(pipe, 1, **kwargs, adapters={name: 1.0}) for name in ("torch_bf16", "file_bf16")]
    assert np.array_equal(*bf16)
    by_folder = [run_diffrt(pipe, 1, **kwargs, adapters={n: 1.0}) for n in ("folder", "weight_name")]
    assert np.array_equal(*by_folder)


def test_from_pipe_shares_loaded_adapters(slotted, lora_files):
    text2img = StableDiffusionPipeline.from_pretrained(slotted["sd1"], provider="cpu")
    text2img.load_lora_weights(str(lora_files["kohya"]), adapter_name="k")
    img2img = StableDiffusionImg2ImgPipeline.from_pipe(text2img)
    assert img2img.get_active_adapters() == ["k"] and img2img.get_list_adapters() == text2img.get_list_adapters()
    image = np.full((64, 64, 3), 0.5, np.float32)
    kwargs = dict(prompt=PROMPT, image=image, strength=0.8, num_inference_steps=3)
    assert np.abs(run_diffrt(img2img, 0, **kwargs) - run_diffrt(img2img, 0, **kwargs, adapters={})).max() > 0.02


def test_a_package_without_slots_says_how_to_get_them(packages, lora_files):
    pipe = StableDiffusionPipeline.from_pretrained(packages["sd1"], provider="cpu")
    with pytest.raises(ConfigError) as error:
        pipe.load_lora_weights(str(lora_files["kohya"]))
    message = str(error.value)
    assert "--lora-slots" in message and "diffrt lora apply" in message and message.count(". ") == 0
    with pytest.raises(ConfigError, match="--lora-slots"):
        pipe(PROMPT, num_inference_steps=1, adapters={"x": 1.0})
    assert pipe.get_active_adapters() == [] and pipe.get_list_adapters() == {}
    assert pipe(PROMPT, num_inference_steps=1, output_type="np", adapters={}).images.shape[0] == 1


def test_refusals_match_diffrt_export_lora(slotted, tiny_models, sdxl_models, adapters, tmp_path):
    """What export refuses, load_lora_weights refuses with the same message, and nothing is loaded."""
    from safetensors.numpy import save_file

    pipe = StableDiffusionPipeline.from_pretrained(slotted["sd1"], provider="cpu")
    loha = tmp_path / "loha.safetensors"
    save_file({"lora_unet_x.hada_w1_a": np.ones((2, 2), np.float32)}, str(loha))
    sdxl_file = adapters["sdxl_all"]["kohya_a"]
    from diffrt.export.lora_package import fuse_into_source
    from diffrt.export.source import load_source

    for path in (loha, sdxl_file):
        with pytest.raises(CheckpointError) as ours:
            pipe.load_lora_weights(str(path))
        with pytest.raises(CheckpointError) as export_side:
            fuse_into_source(load_source(tiny_models["sd1"]), [LoraSpec(path)])
        assert str(ours.value) == str(export_side.value)
    pickled = tmp_path / "adapter.bin"
    pickled.write_bytes(b"not opened")
    with pytest.raises(CheckpointError, match="torch-free runtime"):
        pipe.load_lora_weights(str(pickled))
    assert pipe.get_list_adapters() == {}


def test_bad_requests_name_what_is_accepted(slotted, lora_files):
    pipe = StableDiffusionPipeline.from_pretrained(slotted["sd1"], provider="cpu")
    pipe.load_lora_weights(str(lora_files["kohya"]), adapter_name="k")
    with pytest.raises(ConfigError, match="already loaded"):
        pipe.load_lora_weights(str(lora_files["peft_unet"]), adapter_name="k")
    with pytest.raises(ConfigError, match="'nope', not loaded; loaded adapters: 'k'"):
        pipe.set_adapters(["nope"])
    with pytest.raises(ConfigError, match="2 weights for 1 adapters"):
        pipe.set_adapters(["k"], [0.5, 0.5])
    with pytest.raises(ConfigError, match=r"adapter_weights\[0\]=nan"):
        pipe.set_adapters("k", float("nan"))
    with pytest.raises(ConfigError, match="not loaded"):
        pipe(PROMPT, num_inference_steps=1, adapters={"other": 1.0})
    with pytest.raises(ConfigError, match="accepted: None or a dict"):
        pipe(PROMPT, num_inference_steps=1, adapters=["k"])
    with pytest.raises(CheckpointError, match="does not exist; accepted: a local LoRA file"):
        pipe.load_lora_weights("someone/some-lora-on-the-hub")
    with pytest.raises(CheckpointError, match="not an array"):
        pipe.load_lora_weights({"unet.x.lora_A.weight": "text"})
    with pytest.raises(ConfigError, match="hotswap"):
        pipe.load_lora_weights(str(lora_files["kohya"]), adapter_name="h", hotswap=True)
    assert pipe.get_active_adapters() == ["k"]


def test_adapters_beyond_the_slot_rank_are_refused(tiny_models, lora_files, tmp_path):
    pipe = StableDiffusionPipeline.from_pretrained(export_slotted(tiny_models["sd1"], tmp_path / "r4", 4))
    pipe.load_lora_weights(str(lora_files["kohya"]), adapter_name="one")  # rank 4: fits
    pipe.load_lora_weights(str(lora_files["kohya_no_alpha"]), adapter_name="two")
    run_diffrt(pipe, 0, prompt=PROMPT, num_inference_steps=1)
    with pytest.raises(ConfigError, match="rank 8, more than the 4"):
        pipe(PROMPT, num_inference_steps=1, adapters={"one": 1.0, "two": 1.0})


def test_slots_are_recorded_and_cover_every_lora_layer(slotted):
    provenance = json.loads((slotted["sdxl"] / "diffrt.json").read_text())
    assert provenance["export"]["lora_slots"] == {"rank_max": 64}
    for network in ("unet", "text_encoder", "text_encoder_2"):
        slots = json.loads((slotted["sdxl"] / network / "lora_slots.json").read_text())
        weights = json.loads((slotted["sdxl"] / network / "weights.json").read_text())["parameters"]
        embeddings = {name for name in weights if "embeddings." in name}
        assert {slot["parameter"] for slot in slots["slots"]} == set(weights) - embeddings, network


def test_generate_cli_takes_lora_files(slotted, lora_files, tmp_path):
    out = tmp_path / "cat.png"
    command = [sys.executable, "-m", "diffrt", "generate", str(slotted["sd1"]), PROMPT, "--steps", "2", "--seed", "3"]
    command += ["--lora", f"{lora_files['kohya']}:0.8", "--lora", str(lora_files["peft_unet"]), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    from PIL import Image

    pipe = StableDiffusionPipeline.from_pretrained(slotted["sd1"], provider="cpu")
    pipe.load_lora_weights(str(lora_files["kohya"]), adapter_name="k")
    pipe.load_lora_weights(str(lora_files["peft_unet"]), adapter_name="p")
    expected = pipe(PROMPT, num_inference_steps=2, generator=3, adapters={"k": 0.8, "p": 1.0}).images[0]
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), np.asarray(expected))


def test_fuse_lora_points_to_lora_apply(slotted):
    pipe = StableDiffusionPipeline.from_pretrained(slotted["sd1"], provider="cpu")
    with pytest.raises(ConfigError, match="diffrt lora apply"):
        pipe.fuse_lora()


def test_slots_in_a_graph_with_external_data_leave_its_weights_in_place(tiny_models, slotted, lora_files, tmp_path):
    from diffrt.export.package import ExportOptions, export_package
    from diffrt.export.source import load_source

    options = ExportOptions(lora_slots=64, external_data_threshold=0, check=False)
    external = export_package(load_source(tiny_models["sd1"]), tmp_path / "external", options).path
    assert (external / "unet" / "model.onnx.data").is_file()
    images = []
    for path in (external, slotted["sd1"]):
        pipe = StableDiffusionPipeline.from_pretrained(path, provider="cpu")
        pipe.load_lora_weights(str(lora_files["kohya"]))
        images.append(run_diffrt(pipe, 0, **call_kwargs("sd1")))
    assert np.array_equal(*images)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_slotted_unet_keeps_its_attention_fused(family, slotted, packages, sdxl_packages):
    """The slots' Adds sit between the projections and the heads; attention must still fuse (speed and memory)."""
    import onnx

    from diffrt.kernels.attention import fuse_attention

    plain = sdxl_packages["sdxl"] if family == "sdxl" else packages[family]
    counts = [fuse_attention(onnx.load(str(p / "unet" / "model.onnx")))[1] for p in (plain, slotted[family])]
    assert counts[0] > 0 and counts[1] == counts[0]


def test_a_call_keeps_the_adapters_it_started_with(slotted, lora_files):
    """set_adapters while a call runs (here from its own callback) changes later calls, not the running one."""
    pipe = StableDiffusionPipeline.from_pretrained(slotted["sd1"], provider="cpu")
    pipe.load_lora_weights(str(lora_files["kohya"]), adapter_name="a")
    pipe.load_lora_weights(str(lora_files["peft_both"]), adapter_name="b")
    pipe.set_adapters("a")
    kwargs = call_kwargs("sd1")
    with_a = run_diffrt(pipe, 0, **kwargs)

    def switch(pipe, step, timestep, tensors):
        pipe.set_adapters("b")
        return {}

    pipe.set_adapters("a")
    assert np.array_equal(run_diffrt(pipe, 0, **kwargs, callback_on_step_end=switch), with_a)
    assert pipe.get_active_adapters() == ["b"]
    assert np.abs(run_diffrt(pipe, 0, **kwargs) - with_a).max() > 0.02


def test_lora_apply_keeps_the_slots_and_fused_and_run_time_adapters_add_up(slotted, lora_files, tmp_path):
    from diffrt.export.lora_package import apply_loras

    fused = apply_loras(slotted["sd1"], tmp_path / "fused", (LoraSpec(lora_files["kohya"], 0.5),)).path
    assert (fused / "unet" / "lora_slots.json").is_file()
    on_fused = StableDiffusionPipeline.from_pretrained(fused, provider="cpu")
    on_slots = StableDiffusionPipeline.from_pretrained(slotted["sd1"], provider="cpu")
    on_fused.load_lora_weights(str(lora_files["peft_unet"]), adapter_name="p")
    on_slots.load_lora_weights(str(lora_files["peft_unet"]), adapter_name="p")
    on_slots.load_lora_weights(str(lora_files["kohya"]), adapter_name="k")
    kwargs = call_kwargs("sd1")
    for fused_set, slot_set in (({}, {"k": 0.5}), ({"p": 0.7}, {"k": 0.5, "p": 0.7})):
        got = run_diffrt(on_fused, 4, **kwargs, adapters=fused_set)
        # fused weights round differently from the unfused product (measured 2.1e-4); adapters move pixels by 0.02+
        assert np.abs(got - run_diffrt(on_slots, 4, **kwargs, adapters=slot_set)).max() <= 1e-3

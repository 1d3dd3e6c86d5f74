"""DeepCache feature caching at run time: a package exported with ``--deepcache`` run with ``cache_interval=N,
cache_branch=b`` makes the images diffusers makes under DeepCache's own ``DeepCacheSDHelper`` (the oracle:
``set_params(cache_interval=N, cache_branch_id=b)``, uniform skipping) from the same weights and noise, within 2e-3;
with the cache off it makes exactly the images of a package exported without it."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
from concurrency import assert_concurrent_calls_match_calls_alone
from pipeline_parity import TOLERANCE, assert_images_close, load_diffusers, run_diffrt, run_diffusers
from test_pipeline_parity import PROMPT, make_image, make_mask

import diffrt.runtime.pipelines as ours
from diffrt.cli import main
from diffrt.runtime.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 7  # with cache_interval=3: full UNet at steps 0, 3 and 6, the shallow path at the other four
INTERVAL = 3


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny diffusers folders: sd (outer blocks of two layers with cross-attention: branches 0, 1, 2), a 9-channel
    inpainting one (one layer: branches 0, 1) and SDXL (outer blocks without attention)."""
    from fixtures import tiny_models as tm

    root = tmp_path_factory.mktemp("deepcache_models")
    return {"sd": tm.build_sd_deepcache(root), "inpaint": tm.build_inpaint(root), "sdxl": tm.build_sdxl(root)}


@pytest.fixture(scope="module")
def deepcache_packages(models, tmp_path_factory):
    """Each model exported with ``--deepcache``, and the sd model also without it ("plain"). The graphs' checks
    against torch run for SDXL here, for sd in tests/export/test_deepcache_export.py."""
    from diffrt.export.package import ExportOptions, export_package
    from diffrt.export.source import load_source

    root = tmp_path_factory.mktemp("deepcache_packages")
    packages = {
        kind: export_package(load_source(folder), root / kind, ExportOptions(deepcache=True, check=kind == "sdxl")).path
        for kind, folder in models.items()
    }
    packages["plain"] = export_package(load_source(models["sd"]), root / "plain", ExportOptions(check=False)).path
    return packages


@pytest.fixture(scope="module")
def pipes(deepcache_packages, models):
    """(diffrt pipeline, diffusers pipeline) per package and class, each loaded once."""
    import diffusers  # noqa: F401  (imported before shared_noise walks sys.modules)

    cache = {}

    def get(kind: str, class_name: str):
        if (kind, class_name) not in cache:
            mine = getattr(ours, class_name).from_pretrained(deepcache_packages[kind], provider="cpu")
            theirs = load_diffusers(class_name, models[kind]) if kind in models else None
            cache[kind, class_name] = (mine, theirs)
        return cache[kind, class_name]

    return get


@contextlib.contextmanager
def deepcache_helper(pipe, interval: int, branch: int):
    """diffusers' ``pipe`` under DeepCache's helper (its state reset per call: it remembers the first timestep)."""
    from DeepCache import DeepCacheSDHelper

    helper = DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=interval, cache_branch_id=branch)
    helper.enable()
    try:
        yield
    finally:
        helper.disable()


def assert_cached_call_matches_deepcache(mine, theirs, branch: int, seed: int, **kwargs) -> float:
    """diffrt with ``cache_interval=3, cache_branch=branch`` against diffusers under the helper; returns the max
    difference. The cache must change diffusers' image well beyond the tolerance, or the comparison shows nothing."""
    with deepcache_helper(theirs, INTERVAL, branch):
        expected = run_diffusers(theirs, seed, **kwargs)
    uncached = run_diffusers(theirs, seed, **kwargs)
    assert np.abs(expected - uncached).max() > 3 * TOLERANCE, "the cache changes too little to be seen"
    got = run_diffrt(mine, seed, cache_interval=INTERVAL, cache_branch=branch, **kwargs)
    assert_images_close(got, expected)
    return float(np.abs(got - expected).max())


class RecordingEngine:
    """Stands in for a UNet graph: records which steps ran it and returns the step's number in every output."""

    def __init__(self, log: list, name: str) -> None:
        self.log, self.name = log, name

    def run(self, feeds, output_names):
        self.log.append((self.name, int(feeds["step"]), feeds.get("deep_features")))
        return {name: np.full(feeds["sample"].shape, feeds["step"], np.float32) for name in output_names}


def test_feature_cache_runs_the_whole_unet_every_interval_and_when_the_batch_changes():
    from diffrt.runtime.pipelines.feature_cache import FeatureCache

    log: list = []
    cache = FeatureCache(interval=3, branch=1, shallow=RecordingEngine(log, "shallow"))
    unet = RecordingEngine(log, "unet")
    for step in range(8):
        batch = 2 if step < 5 else 1  # a callback stops guidance after step 4: the cached batch no longer fits
        cache.run(unet, {"sample": np.zeros((batch, 4, 2, 2), np.float32), "step": np.float32(step)}, step)
    assert [(name, step) for name, step, _ in log] == [
        *[("unet", 0), ("shallow", 1), ("shallow", 2), ("unet", 3), ("shallow", 4)],
        *[("unet", 5), ("unet", 6), ("shallow", 7)],
    ]
    features_seen = {step: float(f.flat[0]) for name, step, f in log if name == "shallow"}
    assert features_seen == {1: 0.0, 2: 0.0, 4: 3.0, 7: 6.0}  # each from the last full step


@pytest.mark.parametrize("branch", [0, 1, 2])
def test_text_to_image_with_cache_matches_diffusers_with_deepcache(pipes, branch):
    mine, theirs = pipes("sd", "StableDiffusionPipeline")
    kwargs = dict(prompt=PROMPT, num_inference_steps=STEPS, guidance_scale=6.0, negative_prompt="grey")
    assert_cached_call_matches_deepcache(mine, theirs, branch, 3, **kwargs)


def test_image_to_image_with_cache_matches_diffusers_with_deepcache(pipes):
    mine, theirs = pipes("sd", "StableDiffusionImg2ImgPipeline")
    kwargs = dict(prompt=PROMPT, image=make_image(5), strength=0.7, num_inference_steps=10)  # 7 steps run
    assert_cached_call_matches_deepcache(mine, theirs, 1, 6, **kwargs)


@pytest.mark.parametrize("branch", [0, 1])
def test_nine_channel_inpainting_with_cache_matches_diffusers_with_deepcache(pipes, branch):
    mine, theirs = pipes("inpaint", "StableDiffusionInpaintPipeline")
    kwargs = dict(prompt=PROMPT, image=make_image(6), mask_image=make_mask(), height=32, width=40)
    assert_cached_call_matches_deepcache(mine, theirs, branch, 8, num_inference_steps=STEPS, **kwargs)


def test_sdxl_text_to_image_with_cache_matches_diffusers_with_deepcache(pipes):
    mine, theirs = pipes("sdxl", "StableDiffusionXLPipeline")
    assert_cached_call_matches_deepcache(mine, theirs, 2, 11, prompt=PROMPT, num_inference_steps=STEPS)


def test_sdxl_shallow_graphs_take_the_text_they_never_read(deepcache_packages):
    """SDXL's outer blocks have no cross-attention, so its shallow graphs never read the text; they still take it, as
    their contract says, and match their torch modules."""
    import onnx

    package = deepcache_packages["sdxl"]
    provenance = json.loads((package / "diffrt.json").read_text())
    for branch in provenance["export"]["deepcache"]["branches"]:
        graph = onnx.load(str(package / f"unet_shallow_{branch}" / "model.onnx"))
        names = ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids", "deep_features"]
        assert [i.name for i in graph.graph.input] == names
        assert provenance["networks"][f"unet_shallow_{branch}"]["check"]["max_rel_error"] < 1e-4


def test_without_cache_interval_a_deepcache_package_runs_exactly_as_a_plain_one(pipes):
    plain, _ = pipes("plain", "StableDiffusionPipeline")
    deep, _ = pipes("sd", "StableDiffusionPipeline")
    kwargs = dict(prompt=PROMPT, num_inference_steps=4, guidance_scale=6.0)
    expected = run_diffrt(plain, 2, **kwargs)
    assert np.array_equal(run_diffrt(deep, 2, **kwargs), expected)
    assert np.array_equal(run_diffrt(deep, 2, cache_interval=1, cache_branch=2, **kwargs), expected)
    assert np.array_equal(run_diffrt(plain, 2, cache_interval=1, **kwargs), expected)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(cache_interval=0), "cache_interval=0 is not supported; accepted: an integer >= 1"),
        (dict(cache_interval=2.5), "cache_interval=2.5 is not supported"),
        (dict(cache_interval=True), "cache_interval=True is not supported"),
        (dict(cache_interval=3, cache_branch=-1), "cache_branch=-1 is not supported; accepted: an integer >= 0"),
        (dict(cache_interval=3, cache_branch=3), "cache_branch=3 has no shallow UNet in this package; accepted: 0"),
    ],
)
def test_bad_cache_settings_are_refused_in_one_sentence(pipes, kwargs, message):
    mine, _ = pipes("sd", "StableDiffusionPipeline")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        mine(PROMPT, num_inference_steps=2, **kwargs)


def test_inpainting_package_offers_only_the_branches_its_unet_tells_apart(pipes):
    mine, _ = pipes("inpaint", "StableDiffusionInpaintPipeline")
    assert mine.package.deepcache_branches == (0, 1)
    with pytest.raises(ConfigError, match="cache_branch=2 has no shallow UNet in this package; accepted: 0, 1."):
        mine(PROMPT, image=make_image(1), mask_image=make_mask(), cache_interval=2, cache_branch=2)


def test_a_package_without_deepcache_refuses_a_cache_interval_and_says_how_to_export(pipes):
    plain, _ = pipes("plain", "StableDiffusionPipeline")
    assert plain.package.deepcache_branches == ()
    with pytest.raises(ConfigError, match=r"cache_interval=2 needs .*`diffrt export SOURCE OUT --deepcache`"):
        plain(PROMPT, num_inference_steps=2, cache_interval=2)


def test_concurrent_calls_with_different_caches_match_the_calls_made_alone(pipes):
    mine, _ = pipes("sd", "StableDiffusionPipeline")
    mine.set_progress_bar_config(disable=True)
    jobs = [
        dict(prompt="a cat", num_inference_steps=5, cache_interval=2, cache_branch=0, generator=1),
        dict(prompt="a dog", num_inference_steps=6, cache_interval=3, cache_branch=2, height=48, generator=2),
        dict(prompt="a red cube", num_inference_steps=5, width=48, guidance_scale=3.0, generator=3),
        dict(prompt="a tree", num_inference_steps=4, cache_interval=2, cache_branch=1, guidance_scale=1.0, generator=4),
    ]
    assert_concurrent_calls_match_calls_alone(mine, jobs)


def test_generate_cli_takes_cache_interval_and_branch(deepcache_packages, pipes, tmp_path, capsys):
    import PIL.Image

    out = tmp_path / "cube.png"
    argv = ["generate", str(deepcache_packages["sd"]), "a red cube", "--steps", "4", "--seed", "5"]
    assert main([*argv, "--cache-interval", "2", "--cache-branch", "1", "--out", str(out)]) == 0
    mine, _ = pipes("sd", "StableDiffusionPipeline")
    expected = mine("a red cube", num_inference_steps=4, generator=5, cache_interval=2, cache_branch=1).images[0]
    assert np.array_equal(np.asarray(PIL.Image.open(out)), np.asarray(expected))
    plain = ["generate", str(deepcache_packages["plain"]), "a red cube", "--steps", "1", "--cache-interval", "2"]
    assert main([*plain, "--out", str(tmp_path / "no.png")]) == 1
    assert "--deepcache" in capsys.readouterr().err

"""CogVideoX end to end: tiny diffusers folders (2B-, 5B-, image-to-video and 1.5-style) exported by diffrt, run by
the torch-free runtime and by diffusers with the same noise (see pipeline_parity). Frames as floats in [0, 1]
within 2e-3: text-, image- and video-to-video, both CogVideoX schedulers, dynamic guidance, tiled and sliced
decoding, per-stage sessions, LoRA fused at export, and videos written to files."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from pipeline_parity import TOLERANCE, load_diffusers, shared_noise

import diffrt.runtime.pipelines as ours
from diffrt.runtime.errors import ConfigError

PROMPTS = ["a red ball rolls to the left", "waves on a beach at dusk"]
NEGATIVE = "blurry, low quality"
STEPS = 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def video_models(tmp_path_factory):
    from fixtures import tiny_cogvideox as tc

    root = tmp_path_factory.mktemp("cogvideox")
    return {
        "2b": tc.build_cogvideox_2b(root / "2b"),
        "5b": tc.build_cogvideox_5b(root / "5b"),
        "i2v": tc.build_cogvideox_i2v(root / "i2v"),
        "15": tc.build_cogvideox15(root / "15"),
    }


@pytest.fixture(scope="module")
def video_packages(video_models, tmp_path_factory):
    from diffrt.export.package import ExportOptions, export_package
    from diffrt.export.source import load_source

    root = tmp_path_factory.mktemp("cogvideox-packages")
    options = ExportOptions(batch=2)
    return {k: export_package(load_source(folder), root / k, options).path for k, folder in video_models.items()}


def frames_of(n: int, size: tuple[int, int], seed: int) -> list[PIL.Image.Image]:
    """A short moving pattern: a bright square sliding right over a gradient."""
    rng = np.random.default_rng(seed)
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    out = []
    for i in range(n):
        base = np.stack([x / w, y / h, 0.5 + 0.4 * np.sin((x + 2 * i) / 3.0)], axis=-1)
        base[h // 4 : h // 2, (i * 2) % w : (i * 2) % w + w // 4] = 1.0
        base += rng.uniform(-0.05, 0.05, size=base.shape)
        out.append(PIL.Image.fromarray((np.clip(base, 0, 1) * 255).astype(np.uint8)))
    return out


def diffusers_pipe(class_name: str, folder, scheduler: str | None = None):
    pipe = load_diffusers(class_name, folder, clip_skip_shim=False)
    if scheduler is not None:
        import diffusers

        pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    return pipe


def diffrt_pipe(class_name: str, package, scheduler: str | None = None, **kwargs):
    from diffrt.runtime.schedulers import SCHEDULERS

    pipe = getattr(ours, class_name).from_pretrained(package, provider="cpu", **kwargs)
    if scheduler is not None:
        pipe.scheduler = SCHEDULERS[scheduler].from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_both(mine, theirs, seed: int, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    with shared_noise(seed), torch.no_grad():
        reference = np.asarray(theirs(**kwargs, output_type="np").frames, dtype=np.float32)
    ours_frames = np.asarray(mine(**kwargs, generator=seed, output_type="np").frames, dtype=np.float32)
    return ours_frames, reference


def assert_frames_close(mine: np.ndarray, theirs: np.ndarray, tolerance: float = TOLERANCE) -> None:
    assert mine.shape == theirs.shape, f"shapes differ: diffrt {mine.shape}, diffusers {theirs.shape}"
    assert theirs.std() > 1e-3, "the reference frames are flat; the comparison would prove nothing"
    err = float(np.abs(mine - theirs).max())
    print(f"max abs difference {err:.1e}")  # shown with -s: the measured agreement
    assert err <= tolerance, f"max abs difference {err:.2e} > {tolerance:.0e}"


# ----- text-to-video ------------------------------------------------------------------------------------------
T2V_CASES = [
    ("2b", "CogVideoXDDIMScheduler", False, 9),
    ("2b", "CogVideoXDPMScheduler", True, 17),
    ("5b", "CogVideoXDPMScheduler", False, 9),
    ("5b", "CogVideoXDDIMScheduler", True, 5),
]


@pytest.mark.parametrize(("kind", "scheduler", "dynamic", "frames"), T2V_CASES, ids=lambda v: str(v))
def test_text_to_video_equals_diffusers(video_models, video_packages, kind, scheduler, dynamic, frames):
    mine = diffrt_pipe("CogVideoXPipeline", video_packages[kind], scheduler)
    theirs = diffusers_pipe("CogVideoXPipeline", video_models[kind], scheduler)
    got, want = run_both(
        mine,
        theirs,
        seed=5,
        prompt=PROMPTS,
        negative_prompt=NEGATIVE,
        num_frames=frames,
        num_inference_steps=STEPS,
        guidance_scale=5.0,
        use_dynamic_cfg=dynamic,
    )
    latent_frames = (frames - 1) // 4 + 1  # decoded 4 per latent frame, the first of an odd count alone
    assert got.shape[:2] == (2, 4 * latent_frames - 3 * (latent_frames % 2))
    assert_frames_close(got, want)


def test_text_to_video_at_another_size_and_unguided(video_models, video_packages):
    mine = diffrt_pipe("CogVideoXPipeline", video_packages["2b"])
    theirs = diffusers_pipe("CogVideoXPipeline", video_models["2b"])
    h, w = mine.transformer_config["sample_height"] * 8, mine.transformer_config["sample_width"] * 8
    got, want = run_both(
        mine, theirs, seed=9, prompt=PROMPTS[0], height=h + 16, width=w + 32,
        num_frames=9, num_inference_steps=STEPS, guidance_scale=1.0,
    )  # fmt: skip
    assert_frames_close(got, want)


# ----- image-to-video -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "scheduler"), [("i2v", "CogVideoXDDIMScheduler"), ("15", "CogVideoXDPMScheduler")], ids=str
)
def test_image_to_video_equals_diffusers(video_models, video_packages, kind, scheduler):
    mine = diffrt_pipe("CogVideoXImageToVideoPipeline", video_packages[kind], scheduler)
    theirs = diffusers_pipe("CogVideoXImageToVideoPipeline", video_models[kind], scheduler)
    h, w = mine.transformer_config["sample_height"] * 8, mine.transformer_config["sample_width"] * 8
    image = frames_of(1, (h + 8, w), seed=3)[0]
    got, want = run_both(
        mine,
        theirs,
        seed=11,
        image=image,
        prompt=PROMPTS[1],
        negative_prompt=NEGATIVE,
        height=h,
        width=w,
        num_frames=9,
        num_inference_steps=STEPS,
        guidance_scale=4.0,
        use_dynamic_cfg=kind == "15",
    )
    assert_frames_close(got, want)


# ----- video-to-video -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheduler", ["CogVideoXDDIMScheduler", "CogVideoXDPMScheduler"])
def test_video_to_video_equals_diffusers(video_models, video_packages, scheduler):
    mine = diffrt_pipe("CogVideoXVideoToVideoPipeline", video_packages["2b"], scheduler)
    theirs = diffusers_pipe("CogVideoXVideoToVideoPipeline", video_models["2b"], scheduler)
    h, w = mine.transformer_config["sample_height"] * 8, mine.transformer_config["sample_width"] * 8
    video = frames_of(9, (h, w), seed=4)
    got, want = run_both(
        mine,
        theirs,
        seed=13,
        video=video,
        prompt=PROMPTS[0],
        height=h,
        width=w,
        num_inference_steps=5,
        strength=0.6,
        guidance_scale=3.0,
    )
    assert_frames_close(got, want)


# ----- memory options -----------------------------------------------------------------------------------------
def test_tiled_and_sliced_decoding_equal_diffusers(video_models, video_packages):
    """Tiles small enough to cut the tiny frames into overlapping pieces, blended as diffusers blends them. The tile
    sizes keep diffusers' overlaps whole latent cells (48 x 5/6, 40 x 4/5 pixels), as its defaults do at 480x720;
    other tiny tiles make diffusers' output a few pixels larger than the frame, which diffrt reproduces too."""
    mine = diffrt_pipe("CogVideoXPipeline", video_packages["5b"])
    theirs = diffusers_pipe("CogVideoXPipeline", video_models["5b"])
    h, w = 64, 64
    tiles = dict(tile_sample_min_height=48, tile_sample_min_width=40)
    mine.vae.enable_tiling(**tiles)
    mine.vae.enable_slicing()
    theirs.vae.enable_tiling(**tiles)
    theirs.vae.enable_slicing()
    got, want = run_both(mine, theirs, seed=21, prompt=PROMPTS, height=h, width=w, num_frames=9, num_inference_steps=2)
    assert_frames_close(got, want)
    mine.vae.disable_tiling()
    untiled = np.asarray(mine(prompt=PROMPTS, height=h, width=w, num_frames=9, num_inference_steps=2,
                              generator=21, output_type="np").frames)  # fmt: skip
    assert np.abs(untiled - got).max() > 1e-4, "tiling changed nothing: the tiles did not cut the frames"


def test_low_stage_memory_gives_the_same_frames(video_packages):
    kwargs = dict(prompt=PROMPTS[0], num_frames=9, num_inference_steps=2, generator=3, output_type="np")
    high = diffrt_pipe("CogVideoXPipeline", video_packages["2b"])
    low = diffrt_pipe("CogVideoXPipeline", video_packages["2b"], stage_memory="low")
    np.testing.assert_array_equal(low(**kwargs).frames, high(**kwargs).frames)
    assert not low.package._engines, "low stage memory kept sessions alive after the call"


def test_outputs_latent_and_pil(video_packages):
    pipe = diffrt_pipe("CogVideoXPipeline", video_packages["2b"])
    latents = pipe(PROMPTS[0], num_frames=9, num_inference_steps=1, generator=1, output_type="latent").frames
    c = pipe.transformer_config["in_channels"]
    assert latents.shape[:3] == (1, 3, c)
    videos = pipe(PROMPTS[0], num_frames=9, num_inference_steps=1, generator=1).frames
    assert len(videos) == 1 and len(videos[0]) == 9 and isinstance(videos[0][0], PIL.Image.Image)


def test_callback_can_stop_the_call(video_packages):
    pipe = diffrt_pipe("CogVideoXPipeline", video_packages["2b"])
    seen = []

    def stop_after_one(p, step, t, tensors):
        seen.append((step, tensors["latents"].shape))
        p._interrupt = True
        return {}

    pipe(PROMPTS[0], num_frames=5, num_inference_steps=4, generator=1, callback_on_step_end=stop_after_one)
    assert [s for s, _ in seen] == [0]


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        (dict(height=20), "height"),
        (dict(height=40), "patch"),
        (dict(use_dynamic_cfg="yes"), "use_dynamic_cfg"),
        (dict(callback_on_step_end_tensor_inputs=["noise"]), "callback_on_step_end_tensor_inputs"),
        (dict(num_frames=0), "num_frames"),
    ],
    ids=["height", "patch", "dynamic_cfg", "callback_inputs", "frames"],
)
def test_bad_arguments_are_named(video_packages, kwargs, names):
    pipe = diffrt_pipe("CogVideoXPipeline", video_packages["2b"])
    with pytest.raises(ConfigError, match=names):
        pipe(PROMPTS[0], num_inference_steps=1, **kwargs)


def test_a_pipeline_refuses_a_transformer_of_the_other_task(video_packages):
    with pytest.raises(ConfigError, match="CogVideoXImageToVideoPipeline"):
        ours.CogVideoXPipeline.from_pretrained(video_packages["i2v"], provider="cpu")
    with pytest.raises(ConfigError, match="CogVideoXPipeline or CogVideoXVideoToVideoPipeline"):
        ours.CogVideoXImageToVideoPipeline.from_pretrained(video_packages["2b"], provider="cpu")

"""Packages whose VAE is an AutoencoderTiny (TAESD), against diffusers pipelines with the same tiny VAE and the same
noise; and the tiny preview decoder (``--preview-vae``) as ``pipe.decode_preview`` and in the server's previews."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures import tiny_models as tm
from fixtures.tiny_vae import build_sd1_tiny_vae, save_tiny_vae
from pipeline_parity import assert_images_close, load_diffusers, run_diffrt, run_diffusers, shared_noise
from test_pipeline_parity import make_image, make_mask

import diffrt.runtime.pipelines as ours

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PROMPT = "a photograph of an astronaut riding a horse"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Source folders and the packages exported from them: the tiny-VAE pipeline as saved by diffusers ("tiny"),
    tiny_models' sd1 with the TAESD folder as its VAE ("swap", --vae) and beside its own VAE ("preview")."""
    from diffrt.export.package import ExportOptions, export_package
    from diffrt.export.source import load_source
    from diffrt.export.vae_swap import add_preview_vae, replace_vae

    root = tmp_path_factory.mktemp("tiny_vae_runtime")
    folders = {"tiny": build_sd1_tiny_vae(root), "sd1": tm.build_sd1(root), "taesd": save_tiny_vae(root / "taesd", 60)}
    sources = {
        "tiny": load_source(folders["tiny"]),
        "swap": replace_vae(load_source(folders["sd1"]), folders["taesd"]),
        "preview": add_preview_vae(load_source(folders["sd1"]), folders["taesd"]),
    }
    options = ExportOptions(check=False)
    packages = {name: export_package(source, root / f"pkg_{name}", options).path for name, source in sources.items()}
    return folders, packages


def diffusers_with_tiny_vae(class_name: str, folders, kind: str):
    """The diffusers pipeline a package was exported from; for "swap", sd1 with ``pipe.vae`` replaced."""
    from diffusers import AutoencoderTiny

    if kind == "tiny":
        return load_diffusers(class_name, folders["tiny"])
    pipe = load_diffusers(class_name, folders["sd1"])
    pipe.vae = AutoencoderTiny.from_pretrained(folders["taesd"], torch_dtype=torch.float32).eval()
    return pipe


CASES = {
    "text2img": ("StableDiffusionPipeline", "tiny", dict(prompt=PROMPT, num_inference_steps=4, guidance_scale=6.0)),
    # The tiny encoder gives latents with no posterior draw: the add_noise noise is the first draw, as in diffusers.
    "img2img": (
        "StableDiffusionImg2ImgPipeline",
        "tiny",
        dict(prompt=PROMPT, image=make_image(5), strength=0.6, num_inference_steps=5),
    ),
    "inpaint-vae-swap": (
        "StableDiffusionInpaintPipeline",
        "swap",
        dict(prompt=PROMPT, image=make_image(7), mask_image=make_mask(), strength=0.8, num_inference_steps=5),
    ),
    "text2img-vae-swap": ("StableDiffusionPipeline", "swap", dict(prompt=PROMPT, num_inference_steps=4)),
}


@pytest.mark.parametrize("case", CASES)
def test_a_tiny_vae_package_matches_diffusers_with_the_same_tiny_vae(made, case):
    import diffusers  # noqa: F401  (imported before shared_noise walks sys.modules)

    folders, packages = made
    class_name, kind, kwargs = CASES[case]
    mine = getattr(ours, class_name).from_pretrained(packages[kind], provider="cpu")
    theirs = diffusers_with_tiny_vae(class_name, folders, kind)
    assert mine.package.vae_config.is_tiny and mine.package.vae_config.scaling_factor == 1.0
    got, want = run_diffrt(mine, 3, **kwargs), run_diffusers(theirs, 3, **kwargs)
    print(f"{case}: max abs difference {np.abs(got - want).max():.2e} (images in [0, 1])")
    assert_images_close(got, want)


def test_the_preview_decoder_draws_latents_as_diffusers_tiny_vae_decodes_them(made):
    from diffusers import AutoencoderTiny

    folders, packages = made
    pipe = ours.StableDiffusionPipeline.from_pretrained(packages["preview"], provider="cpu")
    assert pipe.preview_decoder is not None and not pipe.package.vae_config.is_tiny
    latents = np.random.default_rng(0).standard_normal((2, 4, 16, 16)).astype(np.float32)
    got = pipe.decode_preview(latents, output_type="np")
    taesd = AutoencoderTiny.from_pretrained(folders["taesd"], torch_dtype=torch.float32).eval()
    with torch.no_grad():
        sample = taesd.decode(torch.from_numpy(latents) / taesd.config.scaling_factor).sample
    want = (sample / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    print(f"preview decoder vs diffusers' AutoencoderTiny.decode: max abs difference {np.abs(got - want).max():.2e}")
    assert got.shape == (2, 32, 32, 3) and np.abs(got - want).max() <= 1e-5
    assert len(pipe.decode_preview(latents)) == 2  # PIL images by default


def test_which_decoder_draws_previews(made):
    _, packages = made
    tiny = ours.StableDiffusionPipeline.from_pretrained(packages["tiny"], provider="cpu")
    assert tiny.preview_decoder is tiny.vae_decoder  # the package's VAE is tiny itself
    latents = np.random.default_rng(1).standard_normal((1, 4, 16, 16)).astype(np.float32)
    via_preview = tiny.decode_preview(latents, output_type="np")
    assert np.array_equal(via_preview, tiny.decode_latents(latents, "np").images)
    beside = ours.StableDiffusionPipeline.from_pretrained(packages["preview"], provider="cpu")
    assert beside.preview_decoder is beside.package.engine("vae_decoder_preview")  # the KL decoder stays for images


def test_server_previews_come_from_the_tiny_decoder(made):
    from diffrt.runtime.serve.jobs import Job, JobSpec, ModelQueue
    from diffrt.runtime.serve.models import ServedModel

    _, packages = made
    model = ServedModel("tiny", packages["preview"], provider="cpu")
    queue = ModelQueue(model, workers=1, max_queue=2)
    try:
        spec = JobSpec(
            model="tiny", task="txt2img", prompt=PROMPT, steps=3, seed=4, preview_every=1, height=32, width=32
        )
        job = queue.submit(Job(spec))
        assert job.wait(120) and job.state == "done", job.error
        pipe = model.pipeline("txt2img")
        final = pipe(PROMPT, num_inference_steps=3, generator=4, height=32, width=32, output_type="latent").images
        want = np.asarray(pipe.decode_preview(final)[0], np.int16)
        got = np.asarray(job.preview, np.int16)
        print(f"server preview: {job.preview.size}; max difference from decode_preview {np.abs(got - want).max()}")
        assert job.preview.size == (32, 32)  # the full image; the linear map's preview is latent-sized (16x16)
        assert np.abs(got - want).max() <= 1
    finally:
        queue.shutdown(10)
        model.close()


def test_shared_noise_draws_nothing_for_a_tiny_encoder(made):
    """diffusers' retrieve_latents takes a tiny VAE's ``latents``: no draw through randn_tensor."""
    import diffusers  # noqa: F401

    folders, _ = made
    pipe = diffusers_with_tiny_vae("StableDiffusionImg2ImgPipeline", folders, "tiny")
    draws = []
    with shared_noise(0):
        import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img as module

        original = module.randn_tensor
        module.randn_tensor = lambda shape, **kw: draws.append(tuple(shape)) or original(shape, **kw)
        try:
            with torch.no_grad():
                pipe(PROMPT, image=make_image(5), strength=0.6, num_inference_steps=5, output_type="np")
        finally:
            module.randn_tensor = original
    assert draws == [(1, 4, 16, 20)]  # the add_noise noise alone (a 40x32 image)

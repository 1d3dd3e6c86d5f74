"""Run-time LoRA on SD3 / Flux packages exported with ``--lora-slots``: ``load_lora_weights`` + ``set_adapters``
equal diffusers' on the same file, ``adapters={}`` equals the plain package, and concurrent calls that ask for
different adapters (and sizes) each equal the same call made alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fixtures.mmdit_loras import build_flux_kohya, build_sd3_peft
from pipeline_parity import assert_images_close, load_diffusers, run_diffrt, run_diffusers

from diffrt.export.package import ExportOptions, export_package
from diffrt.export.source import load_source
from diffrt.runtime import FluxPipeline, StableDiffusion3Pipeline

CALL = dict(prompt="a photograph of an astronaut", height=32, width=32, num_inference_steps=3, max_sequence_length=16)
WEIGHT = 0.7
FAMILIES = {
    "sd3": (StableDiffusion3Pipeline, lambda folder, tmp: build_sd3_peft(folder, tmp / "sd3_peft")),
    "flux_dev": (FluxPipeline, lambda folder, tmp: build_flux_kohya(folder, tmp / "flux_kohya.safetensors")),
}


@pytest.fixture(scope="module")
def slotted(mmdit_models, tmp_path_factory):
    """{kind: (slotted package, LoRA file)} for SD3 (a PEFT file) and Flux dev (a kohya file)."""
    out = {}
    for kind, (_, build) in FAMILIES.items():
        root = tmp_path_factory.mktemp(f"slotted_{kind}")
        package = export_package(load_source(mmdit_models[kind]), root / "package", ExportOptions(lora_slots=16))
        out[kind] = (package.path, build(mmdit_models[kind], root))
    return out


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_run_time_adapters_equal_diffusers_and_none_equals_the_plain_package(
    mmdit_models, mmdit_packages, slotted, kind
):
    pipeline, _ = FAMILIES[kind]
    package, lora = slotted[kind]
    pipe = pipeline.from_pretrained(package)
    pipe.load_lora_weights(str(lora), adapter_name="style")
    pipe.set_adapters(["style"], adapter_weights=[WEIGHT])
    ours = run_diffrt(pipe, 4, **CALL, guidance_scale=4.0)
    theirs_pipe = load_diffusers(pipeline.__name__, mmdit_models[kind])
    theirs_pipe.load_lora_weights(str(lora), adapter_name="style")
    theirs_pipe.set_adapters(["style"], adapter_weights=[WEIGHT])
    assert_images_close(ours, run_diffusers(theirs_pipe, 4, **CALL, guidance_scale=4.0))
    none = run_diffrt(pipe, 4, **CALL, guidance_scale=4.0, adapters={})
    plain = run_diffrt(pipeline.from_pretrained(mmdit_packages[kind]), 4, **CALL, guidance_scale=4.0)
    np.testing.assert_allclose(none, plain, atol=1e-5)
    assert np.abs(ours - none).max() > 1e-2


def test_concurrent_calls_with_different_adapters_equal_each_call_alone(slotted):
    package, lora = slotted["flux_dev"]
    pipe = FluxPipeline.from_pretrained(package)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(lora), adapter_name="style")
    asks = [
        dict(adapters={"style": 1.0}, height=32, width=32, generator=1),
        dict(adapters={}, height=48, width=32, generator=2),
        dict(adapters={"style": 0.3}, height=32, width=48, generator=3, guidance_scale=6.0),
        dict(adapters={"style": 1.0}, height=32, width=32, generator=4, num_images_per_prompt=2),
    ]
    base = dict(prompt="a red sports car", num_inference_steps=2, max_sequence_length=16, output_type="np")

    def call(ask):
        return np.asarray(pipe(**base, **ask).images)

    alone = [call(ask) for ask in asks]
    with ThreadPoolExecutor(len(asks)) as pool:
        together = list(pool.map(call, asks * 2))
    for i, images in enumerate(together):
        np.testing.assert_array_equal(images, alone[i % len(asks)])

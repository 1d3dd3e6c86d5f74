"""Step-level batching: concurrent calls of one model share each UNet run, and each gets the image it would get
alone (to 1e-5), whatever its prompt, steps, guidance, seed, size, scheduler, task or adapters."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest

from diffrt.runtime.errors import ConfigError
from diffrt.runtime.pipelines import (
    AutoPipelineForImage2Image,
    StableDiffusionPipeline,
)
from diffrt.runtime.schedulers import DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler
from diffrt.serve import StepBatcher

# Each call differs: prompt, steps, guidance (1.0: no guidance, so single rows), seed, size, scheduler, n.
CALLS = [
    dict(prompt="a red square", num_inference_steps=6, guidance_scale=7.5, generator=1, height=32, width=32),
    dict(prompt="a blue circle", num_inference_steps=4, guidance_scale=1.0, generator=2, height=32, width=32),
    dict(
        prompt="green",
        negative_prompt="blurry",
        num_inference_steps=5,
        guidance_scale=3.0,
        generator=3,
        height=32,
        width=32,
        num_images_per_prompt=2,
    ),
    dict(prompt="a tall one", num_inference_steps=3, guidance_scale=5.0, generator=4, height=48, width=32),
    dict(
        prompt="ancestral",
        num_inference_steps=5,
        guidance_scale=6.0,
        generator=5,
        height=32,
        width=32,
        scheduler="euler_a",
    ),
    dict(
        prompt="multistep", num_inference_steps=7, guidance_scale=4.0, generator=6, height=32, width=32, scheduler="dpm"
    ),
]


def pipelines(package, batcher=None):
    """{scheduler key: pipeline}, all over one package; with ``batcher`` their UNet is that batcher."""
    base = StableDiffusionPipeline.from_pretrained(package, provider="cpu")
    config = dict(base.scheduler.config)
    pipes = {
        None: base,
        "euler_a": StableDiffusionPipeline.from_pipe(base, EulerAncestralDiscreteScheduler.from_config(config)),
        "dpm": StableDiffusionPipeline.from_pipe(base, DPMSolverMultistepScheduler.from_config(config)),
        "img2img": AutoPipelineForImage2Image.from_pipe(base),
    }
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
        if batcher is not None:
            pipe.unet = batcher
    return pipes


def run(pipes, call, batcher=None):
    call = dict(call)
    pipe = pipes[call.pop("scheduler", None)]

    def leave(p, i, t, tensors):
        if i == p.num_timesteps - 1 and batcher is not None:
            batcher.leave()
        return {}

    try:
        return pipe(**call, output_type="np", callback_on_step_end=leave).images
    finally:
        if batcher is not None:
            batcher.leave()


class Recorder:
    def __init__(self) -> None:
        self.runs: list[tuple[int, int]] = []
        self.lock = threading.Lock()

    def __call__(self, calls: int, rows: int, seconds: float) -> None:
        with self.lock:
            self.runs.append((calls, rows))


def concurrent(pipes, calls, batcher):
    start = threading.Barrier(len(calls))

    def one(call):
        start.wait()
        return run(pipes, call, batcher)

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(one, calls))


@pytest.mark.parametrize("per_sample", [True, False], ids=["per-sample-timestep", "scalar-timestep"])
def test_concurrent_calls_share_unet_runs_and_get_their_own_images(packages, tmp_path, per_sample):
    package = packages["sd1"]
    if not per_sample:
        package = scalar_timestep_copy(package, tmp_path)
    alone = [run(pipelines(package), call) for call in CALLS]
    unet = StableDiffusionPipeline.from_pretrained(package, provider="cpu").unet
    batcher = StepBatcher(unet, max_wait_s=0.5)
    assert batcher.per_sample_timestep is per_sample
    recorder = Recorder()
    batcher.hooks.append(recorder)
    pipes = pipelines(package, batcher)
    try:
        for _ in range(2):
            together = concurrent(pipes, CALLS, batcher)
            for call, want, got in zip(CALLS, alone, together):
                assert got.shape == want.shape
                np.testing.assert_allclose(got, want, atol=1e-5, rtol=0, err_msg=str(call))
    finally:
        batcher.close()
    shared = [run for run in recorder.runs if run[0] > 1]
    print(f"UNet runs: {len(recorder.runs)}, shared: {len(shared)}, largest: {max(recorder.runs)}")
    assert shared, "no UNet run was shared"
    if per_sample:
        # Calls at different steps (different schedules) stacked: the 32x32 calls ran together to the end of the
        # shortest, so there are far fewer runs than steps.
        steps_32 = sum(c["num_inference_steps"] for c in CALLS if c["height"] == 32)
        assert sum(1 for calls, _ in recorder.runs) < steps_32 + 3 * 2
        assert any(calls >= 4 for calls, _ in shared)
    assert all(rows <= 64 for _, rows in recorder.runs)


def test_calls_with_different_adapters_run_apart_and_match_calls_alone(tmp_path, tiny_models, lora_files):
    from test_lora_runtime import export_slotted

    package = export_slotted(tiny_models["sd1"], tmp_path / "slotted")
    base = StableDiffusionPipeline.from_pretrained(package, provider="cpu")
    base.load_lora_weights(str(lora_files["peft_unet"]), adapter_name="a")
    base.load_lora_weights(str(lora_files["peft_locon"]), adapter_name="b")
    calls = [
        dict(prompt="one", adapters={"a": 1.0}, num_inference_steps=4, generator=1, height=32, width=32),
        dict(prompt="two", adapters={"b": 0.7}, num_inference_steps=4, generator=2, height=32, width=32),
        dict(prompt="three", adapters={}, num_inference_steps=4, generator=3, height=32, width=32),
        dict(prompt="four", adapters={"a": 1.0}, num_inference_steps=4, generator=4, height=32, width=32),
    ]
    pipes = {None: base}
    base.set_progress_bar_config(disable=True)
    alone = [run(pipes, call) for call in calls]
    batcher = StepBatcher(base.unet, max_wait_s=0.5)
    recorder = Recorder()
    batcher.hooks.append(recorder)
    base.unet = batcher
    try:
        together = concurrent(pipes, calls, batcher)
    finally:
        batcher.close()
    for call, want, got in zip(calls, alone, together):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0, err_msg=str(call))
    assert max(calls for calls, _ in recorder.runs) == 2  # only the two calls with adapter "a" can share


def test_a_failing_run_fails_its_calls_and_the_batcher_goes_on(packages):
    unet = StableDiffusionPipeline.from_pretrained(packages["sd1"], provider="cpu").unet
    batcher = StepBatcher(unet, max_wait_s=0.01)
    try:
        bad = {
            "sample": np.zeros((1, 4, 4, 4), np.float32),
            "timestep": np.zeros((1,), np.float32),
            "encoder_hidden_states": np.zeros((1, 77, 3), np.float32),
        }
        with pytest.raises(ConfigError, match="encoder_hidden_states"):
            batcher.run(bad, ["out_sample"])
        batcher.leave()
        pipes = pipelines(packages["sd1"], batcher)
        want = run(pipelines(packages["sd1"]), CALLS[0])
        np.testing.assert_allclose(run(pipes, CALLS[0], batcher), want, atol=1e-5, rtol=0)
    finally:
        batcher.close()


def scalar_timestep_copy(package, tmp_path):
    """The package with its UNet taking a scalar timestep, as older diffrt exports and other exporters declare it."""
    import shutil

    copy = tmp_path / "scalar"
    shutil.copytree(package, copy)
    path = copy / "unet" / "model.onnx"
    model = onnx.load(str(path), load_external_data=False)
    (timestep,) = [i for i in model.graph.input if i.name == "timestep"]
    del timestep.type.tensor_type.shape.dim[:]
    onnx.save(model, str(path))
    return copy

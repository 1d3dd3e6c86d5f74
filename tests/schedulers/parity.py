"""Side-by-side runs of a diffrt scheduler and the diffusers scheduler of the same name.

Both are driven by one deterministic stand-in model (NumPy, so both sides see identical model outputs) and, for
stochastic schedulers, by one noise stream: diffusers' ``randn_tensor`` is replaced, inside the scheduler's module,
by draws from a NumPy Generator seeded like the one diffrt receives. Equal results then mean equal draw order and
shapes, not just equal math.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from types import SimpleNamespace

import diffusers
import numpy as np
import pytest
import torch

from diffrt.runtime.errors import ConfigError
from diffrt.runtime.schedulers import SCHEDULERS

RTOL = 2e-4
SHAPE = (2, 4, 8, 8)
STEP_COUNTS = (1, 4, 25, 50)
SD_BASE = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1}
# The schedulers on diffusers' shared beta tables, Stable Diffusion's own (the newer ones test their tables in
# their parity files).
SD_SCHEDULERS = (
    "DDIMScheduler",
    "DDPMScheduler",
    "DEISMultistepScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "LCMScheduler",
    "LMSDiscreteScheduler",
    "PNDMScheduler",
    "TCDScheduler",
    "UniPCMultistepScheduler",
)


def stand_in_model(x: np.ndarray, t: float) -> np.ndarray:
    """A smooth deterministic 'denoiser' whose output depends on both the input and the timestep."""
    phase = float(t) / 97.0
    return (0.8 * np.tanh(x) * np.cos(phase) + 0.2 * np.sin(1.7 * x + phase)).astype(np.float32)


@contextlib.contextmanager
def shared_noise(diffusers_scheduler, seed: int):
    """Make the diffusers scheduler draw its noise from np.random.default_rng(seed), in order."""
    module = importlib.import_module(type(diffusers_scheduler).__module__)
    rng = np.random.default_rng(seed)

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        noise = rng.standard_normal(size=tuple(shape), dtype=np.float32)
        return torch.from_numpy(noise).to(dtype or torch.float32)

    original = getattr(module, "randn_tensor", None)
    module.randn_tensor = randn_tensor
    try:
        yield
    finally:
        if original is not None:
            module.randn_tensor = original


def build_pair(name: str, config: dict):
    """(diffrt scheduler, diffusers scheduler) from one config; the diffrt one is None where diffusers refused."""
    reference = getattr(diffusers, name).from_config(dict(config))
    ours = SCHEDULERS[name].from_config(dict(config))
    return ours, reference


def _reference_step_kwargs(reference, step_kwargs: dict) -> dict:
    accepted = inspect.signature(reference.step).parameters
    return {k: v for k, v in step_kwargs.items() if k in accepted}


def assert_timesteps_equal(ours, ref: np.ndarray) -> None:
    """Integer schedules must be identical. Fractional ones (sigma-to-timestep interpolation of float32 tables)
    are compared to 1e-5: torch's float32 linspace is not correctly rounded (it accumulates in
    float32 per SIMD lane, differently for AVX2 and AVX-512), so its beta tables differ from exact ones in the last
    bit, and interpolation near t=0, where log-sigma is steep, magnifies that to a few 1e-6."""
    ours = np.asarray(ours)
    assert ours.shape == ref.shape, f"timesteps {ours} != {ref}"
    if (
        np.issubdtype(ref.dtype, np.integer)
        or np.array_equal(ref, np.round(ref))
        and np.array_equal(ours, np.round(ours))
    ):
        np.testing.assert_array_equal(ours.astype(np.float64), ref.astype(np.float64))
    else:
        np.testing.assert_allclose(ours.astype(np.float64), ref.astype(np.float64), rtol=1e-5, atol=1e-5)


def _close(ours: np.ndarray, ref: np.ndarray, what: str, rtol: float = RTOL) -> None:
    scale = max(float(np.max(np.abs(ref))), 1.0)
    err = float(np.max(np.abs(ours.astype(np.float64) - ref.astype(np.float64))))
    assert np.isfinite(ours).all(), f"{what}: non-finite values"
    assert err <= rtol * scale, f"{what}: max abs error {err:.3g} > {rtol} x {scale:.3g}"


def run_both(ours, reference, timesteps_ref, timesteps_ours, x_init: np.ndarray, seed: int, step_kwargs: dict):
    """Denoise from ``x_init`` over the given timesteps on both sides; yields (i, ours, reference) per step."""
    rng = np.random.default_rng(seed)
    x_ours = x_init.copy()
    x_ref = torch.from_numpy(x_init.copy())
    ref_kwargs = _reference_step_kwargs(reference, step_kwargs)
    with shared_noise(reference, seed):
        for i, (t_ours, t_ref) in enumerate(zip(timesteps_ours, timesteps_ref, strict=True)):
            eps_ours = stand_in_model(ours.scale_model_input(x_ours, t_ours), t_ours)
            x_ours = ours.step(eps_ours, t_ours, x_ours, generator=rng, **step_kwargs).prev_sample
            inp = reference.scale_model_input(x_ref, t_ref)
            eps_ref = torch.from_numpy(stand_in_model(inp.numpy(), float(t_ref)))
            x_ref = reference.step(eps_ref, t_ref, x_ref, **ref_kwargs).prev_sample
            yield i, x_ours, x_ref.numpy()


def assert_sampling_parity(name: str, config: dict, steps: int, seed: int = 0, step_kwargs: dict | None = None):
    """The whole text-to-image sampling loop matches diffusers: timesteps equal, every sample within RTOL.
    Where diffusers refuses the config, diffrt must refuse it too."""
    step_kwargs = step_kwargs or {}
    try:
        reference = getattr(diffusers, name).from_config(dict(config))
        reference.set_timesteps(steps)
    except (ValueError, NotImplementedError) as refused:
        with pytest.raises(ConfigError):
            ours = SCHEDULERS[name].from_config(dict(config))
            ours.set_timesteps(steps)
        return f"refused like diffusers: {refused}"
    ours = SCHEDULERS[name].from_config(dict(config))
    ours.set_timesteps(steps)
    ref_t = reference.timesteps.numpy()
    assert_timesteps_equal(ours.timesteps, ref_t)
    assert ours.order == reference.order
    ref_sigma = float(reference.init_noise_sigma)
    assert abs(float(ours.init_noise_sigma) - ref_sigma) <= RTOL * max(1.0, ref_sigma)
    x = np.random.default_rng(seed + 1).standard_normal(SHAPE, dtype=np.float32) * np.float32(ref_sigma)
    for i, x_ours, x_ref in run_both(ours, reference, reference.timesteps, ours.timesteps, x, seed, step_kwargs):
        _close(x_ours, x_ref, f"{name} step {i}/{len(ref_t)} {config}")
    assert x_ours.dtype == np.float32


def img2img_timesteps_reference(reference, steps: int, strength: float):
    """diffusers' own image-to-image schedule choice, taken from its pipeline class."""
    from diffusers import StableDiffusionImg2ImgPipeline

    holder = SimpleNamespace(scheduler=reference)
    return StableDiffusionImg2ImgPipeline.get_timesteps(holder, steps, strength, "cpu")


def assert_img2img_parity(
    name: str, config: dict, steps: int, strength: float, seed: int = 0, step_kwargs: dict | None = None
):
    """Image-to-image: same start index and timesteps for ``strength``, same ``add_noise`` result, same loop."""
    step_kwargs = step_kwargs or {}
    reference = getattr(diffusers, name).from_config(dict(config))
    reference.set_timesteps(steps)
    ref_timesteps, ref_n = img2img_timesteps_reference(reference, steps, strength)
    ours = SCHEDULERS[name].from_config(dict(config))
    our_timesteps = ours.set_timesteps_for_strength(steps, strength)
    assert_timesteps_equal(our_timesteps, ref_timesteps.numpy())
    if hasattr(reference, "set_begin_index"):  # diffusers' DDPM, DDIM, PNDM look steps up by timestep instead
        assert ours.begin_index == reference.begin_index
    if len(ref_timesteps) == 0:
        return
    rng = np.random.default_rng(seed + 2)
    image_latents = rng.standard_normal(SHAPE, dtype=np.float32)
    noise = rng.standard_normal(SHAPE, dtype=np.float32)
    first_ref = ref_timesteps[:1].repeat(SHAPE[0])
    noisy_ref = reference.add_noise(torch.from_numpy(image_latents), torch.from_numpy(noise), first_ref).numpy()
    noisy_ours = ours.add_noise(image_latents, noise, np.repeat(our_timesteps[:1], SHAPE[0]))
    _close(noisy_ours, noisy_ref, f"{name} add_noise strength={strength}")
    for i, x_ours, x_ref in run_both(ours, reference, ref_timesteps, our_timesteps, noisy_ref, seed, step_kwargs):
        _close(x_ours, x_ref, f"{name} img2img step {i} strength={strength} {config}")


def assert_set_timesteps_parity(name, config, steps, set_kwargs, seed=0, step_kwargs=None):
    """Like assert_sampling_parity, but passes extra set_timesteps arguments (LCM/TCD's original_inference_steps,
    timesteps, strength) to both sides and, as diffusers' LCM img2img pipeline does, noises an image at the first
    timestep (begin_index stays unset)."""
    step_kwargs = step_kwargs or {}
    reference = getattr(diffusers, name).from_config(dict(config))
    ours = SCHEDULERS[name].from_config(dict(config))
    try:
        reference.set_timesteps(steps, **set_kwargs)
    except ValueError:
        with pytest.raises(ConfigError):
            ours.set_timesteps(steps, **set_kwargs)
        return
    ours.set_timesteps(steps, **set_kwargs)
    assert_timesteps_equal(ours.timesteps, reference.timesteps.numpy())
    assert ours.timesteps.dtype == np.int64
    rng = np.random.default_rng(seed + 2)
    image, noise = rng.standard_normal(SHAPE, dtype=np.float32), rng.standard_normal(SHAPE, dtype=np.float32)
    first = reference.timesteps[:1].repeat(SHAPE[0])
    x = reference.add_noise(torch.from_numpy(image), torch.from_numpy(noise), first).numpy()
    _close(ours.add_noise(image, noise, np.repeat(ours.timesteps[:1], SHAPE[0])), x, f"{name} add_noise")
    for i, x_ours, x_ref in run_both(ours, reference, reference.timesteps, ours.timesteps, x, seed, step_kwargs):
        _close(x_ours, x_ref, f"{name} step {i} {set_kwargs} {config}")


def assert_parity_or_same_overrun(name: str, config: dict, steps: int, **kwargs) -> None:
    """assert_sampling_parity, except where the first timestep repeats (truncated beta / exponential sigmas,
    squaredcos karras): diffusers then starts at the second copy and fails on its last step (an IndexError or
    AssertionError). There every earlier step must match and diffrt must refuse the last one with ConfigError."""
    try:
        assert_sampling_parity(name, config, steps, **kwargs)
    except ConfigError as error:
        if "past the end" not in str(error):
            raise
        reference = getattr(diffusers, name).from_config(config)
        reference.set_timesteps(steps)
        assert reference.timesteps[0] == reference.timesteps[1]
        x = torch.zeros(SHAPE)
        with pytest.raises((IndexError, AssertionError)):
            for t in reference.timesteps:
                x = reference.step(torch.ones(SHAPE), t, x).prev_sample


def config_id(extra: dict) -> str:
    """Short test id for a config dict (lists such as trained_betas by length only)."""
    return ",".join(f"{k}={f'<{len(v)} values>' if isinstance(v, list) else v}" for k, v in extra.items())

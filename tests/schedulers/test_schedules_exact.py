"""Schedules equal diffusers' bit for bit: betas, cumulative alphas, timesteps, sigmas and the solver tables.

diffusers builds its tables from torch float32 primitives. Two of them, the linear ramp and the square root,
decide the last bit:
- ``torch.linspace(dtype=float32)`` rounds each point of start + step * i (first half) or end - step * (n-1-i)
  (second half) once with a fused multiply-add on AVX2/AVX-512 hosts, twice on baseline x86-64. diffrt reproduces
  it (``noise_schedule.torch_linspace``), so betas and cumulative alphas are compared as they are.
- torch's float32 ``sqrt`` is not correctly rounded (one ulp low for ~0.6% of inputs); diffrt's is. The schedule
  tests therefore give diffrt torch's sqrt, log and exp (the ``noise_schedule.torch_*32`` hooks) and then require
  every table built from them to be identical; ``test_sqrt_is_the_only_gap`` measures what the hook changes.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import warnings

import diffusers
import numpy as np
import pytest
import torch
from parity import SD_SCHEDULERS
from ulps import max_ulps

import diffrt.runtime.schedulers as schedulers
from diffrt.runtime.schedulers import noise_schedule as ns

BETAS = (
    {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"beta_schedule": "squaredcos_cap_v2"},
    {"beta_schedule": "exp"},
    {"beta_schedule": "laplace"},
)
SIGMA_SCHEDULES = ({}, {"use_karras_sigmas": True}, {"use_exponential_sigmas": True}, {"use_beta_sigmas": True})
SPACINGS = ("leading", "trailing", "linspace")
STEP_COUNTS = (1, 4, 25, 50)
TABLES = ("betas", "alphas_cumprod", "timesteps", "sigmas", "sigmas_interpol", "alpha_t", "sigma_t", "lambda_t")


def _torch_op(op):
    def run(x):
        return op(torch.from_numpy(np.atleast_1d(np.asarray(x, dtype=np.float32)).copy())).numpy().reshape(np.shape(x))

    return run


@pytest.fixture
def torch_primitives(monkeypatch):
    """diffrt with torch's float32 sqrt / log / exp / expm1 in place of its correctly rounded ones."""
    for name, op in (
        ("torch_sqrt32", torch.sqrt),
        ("torch_log32", torch.log),
        ("torch_exp32", torch.exp),
        ("torch_expm1_32", torch.expm1),
    ):
        monkeypatch.setattr(ns, name, _torch_op(op))


def _array(x) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _assert_tables_identical(ours, reference, what: str, beta_quantiles: bool = False) -> int:
    """Every table both sides have is identical (same shape, same values). With ``beta_quantiles`` (beta sigmas:
    diffusers takes Beta quantiles from SciPy in float64, diffrt from its own betainc, equal to ~1e-13), float64
    tables agree to 1e-12 and float32 tables built from them to one ulp. Returns how many tables were compared."""
    compared = 0
    for table in TABLES:
        if not (hasattr(reference, table) and hasattr(ours, table)):
            continue
        ref, got = _array(getattr(reference, table)), _array(getattr(ours, table))
        assert got.shape == ref.shape, f"{what}: {table} shape {got.shape} != {ref.shape}"
        if np.isnan(ref).any() and isinstance(ours, schedulers.KDPM2AncestralDiscreteScheduler):
            # KDPM2 ancestral, squaredcos: diffusers' sigma_down cancels below zero, its midpoint entries are NaN;
            # diffrt takes the exact sigma_next^2 / sigma there (test_kdpm2_ancestral_parity covers it)
            got, ref = got[np.isfinite(ref)], ref[np.isfinite(ref)]
        if beta_quantiles and ref.dtype == np.float64:
            np.testing.assert_allclose(got, ref, rtol=1e-12, err_msg=f"{what}: {table}")
        elif beta_quantiles:
            assert max_ulps(got[np.isfinite(ref)], ref[np.isfinite(ref)]) <= 1, f"{what}: {table}"
        else:
            assert np.array_equal(got, ref, equal_nan=True), (
                f"{what}: {table} differs at {np.flatnonzero(got != ref)[:5]} ({got[got != ref][:3]} vs "
                f"{ref[got != ref][:3]})"
            )
        compared += 1
    assert float(ours.init_noise_sigma) == float(reference.init_noise_sigma), f"{what}: init_noise_sigma"
    return compared


def test_torch_linspace_matches_torch_bit_for_bit():
    rng = np.random.default_rng(0)
    cases = [(0.0001, 0.02, 1000), (0.00085**0.5, 0.012**0.5, 1000), (-6, 6, 1000), (0, 999, 50), (5, 5, 3)]
    cases += [(0.5, -0.5, 1), (1.0, 0.001, 2), (0, 1, 7)]
    for _ in range(200):
        start, end = rng.normal(size=2) * 10.0 ** int(rng.integers(-4, 4))
        cases.append((float(start), float(end), int(rng.integers(1, 3000))))
    for start, end, n in cases:
        expected = torch.linspace(start, end, n, dtype=torch.float32).numpy()
        got = ns.torch_linspace(start, end, n)
        assert got.dtype == np.float32
        assert np.array_equal(got.view(np.int32), expected.view(np.int32)), (start, end, n)


def test_torch_linspace_follows_torch_to_its_baseline_kernel():
    # Under ATEN_CPU_CAPABILITY=default torch rounds the product and the sum separately; diffrt reads the same
    # variable and must still agree (a fresh interpreter: torch reads the variable once).
    script = (
        "import numpy as np, torch\n"
        "from diffrt.runtime.schedulers.noise_schedule import torch_linspace, torch_fuses_multiply_add\n"
        "assert not torch_fuses_multiply_add()\n"
        "for a, b, n in [(0.0001, 0.02, 1000), (0.00085**0.5, 0.012**0.5, 1000), (-6, 6, 1000), (0, 999, 50)]:\n"
        "    t = torch.linspace(a, b, n, dtype=torch.float32).numpy()\n"
        "    assert np.array_equal(torch_linspace(a, b, n), t), (a, b, n)\n"
        "    assert not np.array_equal(torch_linspace(a, b, n, fused=True), t) or n < 100\n"
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("name", SD_SCHEDULERS)
def test_betas_and_cumulative_alphas_are_identical(name):
    compared = 0
    for betas in BETAS:
        try:
            reference = getattr(diffusers, name).from_config(betas)
        except (ValueError, NotImplementedError):
            continue
        ours = schedulers.SCHEDULERS[name].from_config(betas)
        for table in ("betas", "alphas_cumprod"):
            if hasattr(reference, table):
                assert np.array_equal(_array(getattr(ours, table)), _array(getattr(reference, table))), (betas, table)
                compared += 1
    assert compared >= 4


def test_sigmoid_betas_within_a_few_ulps():
    # GeoDiff's sigmoid schedule (DDPM only): torch's AVX2/AVX-512 sigmoid kernel uses its own exp, so ~4% of the
    # 1000 sigmoids land one ulp away from the correctly rounded 1 / (1 + exp(-x)) diffrt computes; scaling to
    # [beta_start, beta_end] makes that at most two ulps of a beta here (4 allowed: torch's AVX2 exp is another).
    reference = diffusers.DDPMScheduler.from_config({"beta_schedule": "sigmoid"})
    ours = schedulers.DDPMScheduler.from_config({"beta_schedule": "sigmoid"})
    assert max_ulps(ours.betas, reference.betas.numpy()) <= 4


@pytest.mark.parametrize("name", SD_SCHEDULERS)
def test_schedules_identical_given_torch_primitives(name, torch_primitives):
    fields = schedulers.SCHEDULERS[name].config_fields()
    compared = 0
    for betas, spacing, sigmas in itertools.product(BETAS[:3], SPACINGS, SIGMA_SCHEDULES):
        if sigmas and next(iter(sigmas)) not in fields:
            continue
        config = {**betas, "timestep_spacing": spacing, "steps_offset": 1, **sigmas}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = getattr(diffusers, name).from_config(config)
        ours = schedulers.SCHEDULERS[name].from_config(config)
        for steps in STEP_COUNTS:
            try:
                reference.set_timesteps(steps)
            except (ValueError, NotImplementedError):
                continue
            ours.set_timesteps(steps)
            beta_quantiles = "use_beta_sigmas" in sigmas
            compared += _assert_tables_identical(ours, reference, f"{config} steps={steps}", beta_quantiles)
    assert compared > 0


def test_sqrt_is_the_only_gap():
    """What the hooks change, measured: diffrt's own sqrt is correctly rounded; torch's differs by at most one ulp
    in under 2% of entries of SD's tables, and log/exp/expm1 agree with torch for nearly all entries."""
    reference = diffusers.DPMSolverMultistepScheduler.from_config(BETAS[1])
    alphas = reference.alphas_cumprod.numpy()
    exact = np.sqrt(alphas.astype(np.float64)).astype(np.float32)
    assert np.array_equal(ns.torch_sqrt32(alphas), exact)
    torch_sqrt = torch.sqrt(reference.alphas_cumprod).numpy()
    assert max_ulps(exact, torch_sqrt) <= 1
    assert np.mean(exact != torch_sqrt) < 0.02
    for ours, theirs in ((ns.torch_log32, torch.log), (ns.torch_exp32, torch.exp), (ns.torch_expm1_32, torch.expm1)):
        x = -alphas if theirs is not torch.log else alphas
        got, expected = ours(x), theirs(torch.from_numpy(x)).numpy()
        assert max_ulps(got, expected) <= 1
        assert np.mean(got != expected) < 0.02


def test_dynamic_thresholding_quantile_matches_torch_bit_for_bit():
    # diffusers' _threshold_sample takes torch.quantile of |x0| per sample: rank q (N - 1) in float32, then lerp
    rng = np.random.default_rng(0)
    for _ in range(300):
        batch, size = int(rng.integers(1, 20)), int(rng.integers(2, 600))
        values = np.abs(rng.standard_normal((batch, size), dtype=np.float32)) * np.float32(10.0 ** rng.integers(-2, 3))
        for q in (0.995, 0.9, 0.5, float(rng.random())):
            expected = torch.quantile(torch.from_numpy(values), q, dim=1).numpy()
            assert np.array_equal(ns.torch_quantile32(values, q), expected), (batch, size, q)

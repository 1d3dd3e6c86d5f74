"""Run a diffrt pipeline and the diffusers pipeline of the same name on the same weights and the same noise.

diffusers draws every random tensor through ``randn_tensor`` (initial latents, ``add_noise`` noise, the VAE
posterior sample, ancestral scheduler steps). Inside :func:`shared_noise` every diffusers module's
``randn_tensor`` draws instead from ``numpy.random.default_rng(seed)``, whole tensor at a time; diffrt gets the
same seed. Equal images then mean equal draw order and shapes as well as equal math.
"""

from __future__ import annotations

import contextlib
import sys
from types import SimpleNamespace

import numpy as np
import torch

TOLERANCE = 2e-3  # images as floats in [0, 1]


@contextlib.contextmanager
def shared_noise(seed: int):
    rng = np.random.default_rng(seed)

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        noise = rng.standard_normal(size=tuple(shape), dtype=np.float32)
        return torch.from_numpy(noise).to(dtype or torch.float32)

    patched = []
    for name, module in list(sys.modules.items()):
        if name.startswith("diffusers") and getattr(module, "randn_tensor", None) is not None:
            patched.append((module, module.randn_tensor))
            module.randn_tensor = randn_tensor
    try:
        yield
    finally:
        for module, original in patched:
            module.randn_tensor = original


def load_diffusers(class_name: str, folder, scheduler=None, clip_skip_shim: bool = True, **components):
    """A diffusers pipeline from a tiny fixture folder, in float32 on the CPU, quiet. ``clip_skip_shim`` gives
    the text encoder the ``text_model`` attribute diffusers' clip_skip reads (LoRA loading must not see it);
    ``components`` are passed to ``from_pretrained`` (``text_encoder_3=None`` for an SD3 folder saved without T5)."""
    import diffusers

    pipe = getattr(diffusers, class_name).from_pretrained(folder, torch_dtype=torch.float32, **components)
    if scheduler is not None:
        pipe.scheduler = scheduler
    pipe.set_progress_bar_config(disable=True)
    text_encoder = getattr(pipe, "text_encoder", None)
    if clip_skip_shim and text_encoder is not None and not hasattr(text_encoder, "text_model"):
        # transformers 5's CLIPTextModel dropped `.text_model`, which diffusers' clip_skip path still reads.
        text_encoder.text_model = SimpleNamespace(final_layer_norm=text_encoder.final_layer_norm)
    return pipe


def run_diffusers(pipe, seed: int, **kwargs) -> np.ndarray:
    with shared_noise(seed), torch.no_grad():
        images = pipe(**kwargs, output_type="np").images
    return np.asarray(images, dtype=np.float32)


def run_diffrt(pipe, seed: int, **kwargs) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return np.asarray(pipe(**kwargs, generator=seed, output_type="np").images, dtype=np.float32)


def assert_images_close(ours: np.ndarray, theirs: np.ndarray, tolerance: float = TOLERANCE) -> None:
    assert ours.shape == theirs.shape, f"shapes differ: diffrt {ours.shape}, diffusers {theirs.shape}"
    err = float(np.abs(ours - theirs).max())
    spread = float(theirs.std())
    assert spread > 1e-3, "the reference images are flat; the comparison would prove nothing"
    assert err <= tolerance, f"max abs difference {err:.2e} > {tolerance:.0e}"

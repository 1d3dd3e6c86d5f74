"""Distil a tiny VAE for the bundled digits model: diffusers' ``AutoencoderTiny`` (TAESD's architecture) that decodes
the digits model's latents about as its KL VAE does, for the fast decode and progress previews.

The teacher is ``models/digits/vae`` (an AutoencoderKL, 32x32x3 <-> 8x8x4). The data are the demo's training
digits, plain and bold (:func:`~diffrt.export.train_demo.digit_images`), and their KL posteriors:

1. the decoder learns ``decode(z * scaling_factor) ~ KL.decode(z)`` for one posterior draw ``z`` per image (what
   the UNet was trained on), its input jittered a little so that generated latents, which lie near but not on
   those, decode as smoothly;
2. the encoder learns ``encode(x) ~ scaling_factor * mean`` (the KL posterior mean).

The tiny VAE works on the UNet's latents as they are, as TAESD does: its ``scaling_factor`` is 1. It is written as a
diffusers AutoencoderTiny folder in float16 (about 100 kB)::

    python -m diffrt.export.train_tiny_vae models/digits/vae_tiny [--teacher models/digits] [--seed 0]

One torch thread, fixed seeds and sample order: the same arguments give the same file on the same torch build and
kind of CPU; about 3 to 5 minutes on a busy 2-core machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .train_demo import cosine_lr, digit_images, log, rounded_fp16, shuffled_batches

# Three stages of one width: 4x, the digits KL VAE's factor (block_out_channels (32, 64, 64)).
TINY = {
    "encoder_block_out_channels": [16, 16, 16],
    "decoder_block_out_channels": [16, 16, 16],
    "num_encoder_blocks": [1, 1, 1],
    "num_decoder_blocks": [2, 2, 1],
    "latent_channels": 4,
    "scaling_factor": 1.0,
}
STEPS = {"decoder": 800, "encoder": 500}
BATCH = 64
PEAK_LR = 2e-3
JITTER = 0.05  # std of the noise added to the decoder's input latents (scaled units: latents have std ~1)


def teacher(model: Path):
    """The digits model's AutoencoderKL (float32) and its scaling factor."""
    from .components import own_model
    from .models import AutoencoderKL
    from .source import load_source

    vae = load_source(model).components["vae"]
    kl = own_model(AutoencoderKL, vae.config, vae.load_weights(), f"{model}/vae").requires_grad_(False)
    return kl, float(vae.config["scaling_factor"])


def teacher_pairs(kl, images, scaling: float, gen):
    """(scaled posterior draws (N, 4, 8, 8), KL decodings of them (N, 3, 32, 32), scaled posterior means)."""
    import torch

    draws, targets, means = [], [], []
    with torch.no_grad():
        for i in range(0, len(images), 256):
            mean, logvar = kl.encode(images[i : i + 256]).chunk(2, dim=1)
            z = mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * torch.randn(mean.shape, generator=gen)
            draws.append(z * scaling)
            targets.append(kl.decode(z))
            means.append(mean * scaling)
    return torch.cat(draws), torch.cat(targets), torch.cat(means)


def fit(module, loss_of, count: int, steps: int, gen, name: str) -> None:
    """Adam on ``loss_of(batch indices)`` over ``steps`` batches of the ``count`` samples, cosine learning rate."""
    import torch

    opt = torch.optim.Adam(module.parameters(), lr=PEAK_LR)
    start = time.perf_counter()
    for step, idx in zip(range(steps), shuffled_batches(count, BATCH, gen)):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, PEAK_LR)
        loss = loss_of(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"  {name} step {step:4d}  loss {loss.item():.4f}  {time.perf_counter() - start:5.0f} s")


def train_tiny_vae(out: str | Path, teacher_model: str | Path, seed: int = 0) -> Path:
    """Distil, round to float16, write the diffusers AutoencoderTiny folder ``out``; return ``out``."""
    import torch

    from .diffusers_folder import save_model
    from .models import AutoencoderTiny
    from .models.autoencoder_tiny import tiny_config

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    begin = time.perf_counter()
    kl, scaling = teacher(Path(teacher_model))
    images = torch.cat([digit_images()[0], digit_images(bold=True)[0]])
    gen = torch.Generator().manual_seed(seed)
    latents, targets, means = teacher_pairs(kl, images, scaling, gen)
    log(f"teacher: {len(images)} digits encoded and decoded by the KL VAE in {time.perf_counter() - begin:.0f} s")

    config = tiny_config(TINY, "the tiny VAE")
    tiny = AutoencoderTiny(**config)
    log(f"tiny vae: {sum(p.numel() for p in tiny.parameters()):,} parameters; steps {STEPS} of {BATCH}")

    def decoder_loss(idx):
        z = latents[idx] + JITTER * torch.randn(latents[idx].shape, generator=gen)
        error = tiny.decode(z) - targets[idx]
        return error.abs().mean() + error.pow(2).mean()

    fit(tiny.decoder, decoder_loss, len(images), STEPS["decoder"], gen, "decoder")
    fit(
        tiny.encoder,
        lambda idx: (tiny.encode(images[idx]) - means[idx]).pow(2).mean(),
        len(images),
        STEPS["encoder"],
        gen,
        "encoder",
    )

    tiny.eval().requires_grad_(False)
    rounded_fp16(tiny)
    with torch.no_grad():
        decoded = tiny.decode(means[:512])
        exact = kl.decode(means[:512] / scaling)
        encoded = tiny.encode(images[:512])
    log(
        f"tiny vae: decode vs KL decode of posterior means, mean abs {(decoded - exact).abs().mean():.4f} (pixels "
        f"in [-1, 1]); encode vs scaled means, mean abs {(encoded - means[:512]).abs().mean():.4f}"
    )
    out = Path(out)
    save_model(tiny, config, out, half=True)
    log(f"wrote {out} in {time.perf_counter() - begin:.0f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffrt.export.train_tiny_vae", description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder to write the AutoencoderTiny to (config.json + safetensors)")
    parser.add_argument("--teacher", default="models/digits", help="the diffusers pipeline whose VAE is distilled")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    train_tiny_vae(args.out, args.teacher, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

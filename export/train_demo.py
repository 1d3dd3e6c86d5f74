"""Train the bundled demo model: a tiny latent diffusion model of handwritten digits that draws what it is asked for.

No model hub is reachable where diffrt is built and tested, and random weights draw noise, so the demo model is
trained here on CPU from scikit-learn's bundled digits (1,797 images of 8x8, values 0-16), upscaled to 32x32 RGB as
dark ink on light paper, with captions "a handwritten digit 7" / "a handwritten seven" (and an empty caption 10% of
the time, for classifier-free guidance). It is written as a standard diffusers folder with diffrt's own model classes
(export side) and a transformers CLIP text encoder over the real CLIP vocabulary:

1. the VAE (AutoencoderKL, 32x32x3 -> 8x8x4) learns reconstruction with a small KL term; its weights are rounded
   to float16 (as stored) and ``scaling_factor`` is fixed from the standard deviation of the training latents;
2. the text encoder and the UNet learn epsilon prediction jointly on those latents (EMA weights are saved);
3. a kohya-format LoRA ("bold strokes") learns the same captions on dilated, thicker digits against the stored
   float16 UNet: ``bold_lora.safetensors`` beside the pipeline.

    python -m diffrt.export.train_demo OUT_FOLDER [--seed 0] [--minutes 25]

``--minutes`` is a budget, turned into step counts by fixed rates measured on a 2-core CPU (never by reading the
clock). The run is deterministic (two torch threads, fixed seeds and sample order, deterministic algorithms), so one
seed and one budget give the same files run after run with the same torch build on the same kind of CPU (other CPU
kernels round differently). It takes about that long on 2 cores.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

from .clip_vocab import CLIP_TEXT_TOKENS

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
IMAGE_SIZE = 32
CAPTION_DROPOUT = 0.1
LORA_FILE = "bold_lora.safetensors"

UNET = {
    "_class_name": "UNet2DConditionModel",
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [64, 96],
    "layers_per_block": 1,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "norm_num_groups": 16,
}
VAE = {
    "_class_name": "AutoencoderKL",
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": [32, 64, 64],
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "layers_per_block": 1,
    "norm_num_groups": 16,
    "sample_size": IMAGE_SIZE,
    "scaling_factor": 1.0,  # replaced by 1 / std of the training latents
}
TEXT_ENCODER = {
    **CLIP_TEXT_TOKENS,
    "hidden_size": 32,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "projection_dim": 32,
    "hidden_act": "quick_gelu",
}
SCHEDULER = {
    "_class_name": "DPMSolverMultistepScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "algorithm_type": "dpmsolver++",
    "solver_order": 2,
    "solver_type": "midpoint",
    "lower_order_final": True,
    "timestep_spacing": "linspace",
    "steps_offset": 1,
}

# Steps per minute of each phase on a 2-core CPU (measured once; fixed so that step counts never depend on the clock)
# and the share of the budget each phase gets.
RATES = {"vae": 180, "unet": 140, "lora": 110}
SHARES = {"vae": 0.12, "unet": 0.76, "lora": 0.12}
BATCH = {"vae": 64, "unet": 128, "lora": 128}
LORA_RANK = 8
LORA_ALPHA = 8.0
LORA_LR = 2e-3


def log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------


def digit_images(bold: bool = False):
    """sklearn's digits as (N, 3, 32, 32) float32 in [-1, 1], dark ink (-1) on light paper (+1), and labels (N,).

    ``bold`` thickens the strokes: a 3x3 grey dilation of the 32x32 ink map (the LoRA's style)."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    ink = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8), 1 = ink
    ink = F.interpolate(ink, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False).clamp(0, 1)
    if bold:
        ink = F.max_pool2d(ink, kernel_size=3, stride=1, padding=1)
    paper = 1.0 - 2.0 * ink
    return paper.repeat(1, 3, 1, 1).contiguous(), torch.tensor(digits.target, dtype=torch.int64)


def captions() -> list[str]:
    """The empty caption, then per digit d (index 1 + 2d and 2 + 2d) its numeral and its word form."""
    texts = [""]
    for d, word in enumerate(DIGIT_WORDS):
        texts += [f"a handwritten digit {d}", f"a handwritten {word}"]
    return texts


def caption_indices(labels, generator):
    """One caption per sample: the numeral or the word form at random, the empty caption at CAPTION_DROPOUT."""
    import torch

    form = torch.randint(0, 2, labels.shape, generator=generator)
    drop = torch.rand(labels.shape, generator=generator) < CAPTION_DROPOUT
    return torch.where(drop, torch.zeros_like(labels), 1 + 2 * labels + form)


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


def setup(seed: int) -> None:
    import torch

    torch.set_num_threads(2)
    torch.set_flush_denormal(True)  # tiny EMA / Adam moments must not fall onto the slow subnormal path
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def rounded_fp16(module) -> None:
    """Round a module's float weights to float16 and back: train later phases against the weights as stored."""
    import torch

    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def cosine_lr(step: int, total: int, peak: float, warmup: int = 100) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


class Ema:
    """Exponential moving average of a set of modules' parameters (and buffers copied)."""

    def __init__(self, modules, decay: float):
        self.decay = decay
        self.shadow = [copy.deepcopy(m).eval().requires_grad_(False) for m in modules]
        self.modules = modules

    def update(self, step: int) -> None:
        import torch

        decay = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for shadow, module in zip(self.shadow, self.modules):
                for s, p in zip(shadow.parameters(), module.parameters()):
                    s.lerp_(p, 1 - decay)


# ---------------------------------------------------------------------------------------------------------------
# phases
# ---------------------------------------------------------------------------------------------------------------


def shuffled_batches(n: int, size: int, gen):
    """Index batches of ``size`` out of ``n`` samples, endlessly: a new permutation (drawn from ``gen``) each time
    the current one has no full batch left. Drawn lazily, so ``gen``'s other draws keep their order."""
    import torch

    while True:
        order = torch.randperm(n, generator=gen)
        for pos in range(0, n - size + 1, size):
            yield order[pos : pos + size]


def train_vae(images, steps: int, seed: int):
    """Reconstruction (L1 + MSE) with a small KL term through posterior samples; returns the VAE (fp16-rounded)."""
    import torch

    from .models import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE)
    log(f"vae: {count(vae):,} parameters, {steps} steps of {BATCH['vae']}")
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step, idx in zip(range(steps), shuffled_batches(len(images), BATCH["vae"], gen)):
        x = images[idx]
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, 1e-3)
        moments = vae.encode(x)
        mean, logvar = moments.chunk(2, dim=1)
        logvar = logvar.clamp(-30, 20)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen)
        recon = vae.decode(z)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3)).mean()
        rec = (recon - x).abs().mean() + (recon - x).pow(2).mean()
        loss = rec + 1e-5 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            seconds = time.perf_counter() - start
            log(f"  vae step {step:5d}  rec {rec.item():.4f}  kl {kl.item():8.1f}  {seconds:6.0f} s")
    vae.eval().requires_grad_(False)
    rounded_fp16(vae)
    with torch.no_grad():
        moments = torch.cat([vae.encode(images[i : i + 256]) for i in range(0, len(images), 256)])
        mean = moments[:, :4]
        err = (vae.decode(mean[:256]) - images[:256]).abs().mean().item()
    scaling = 1.0 / mean.std().item()
    vae.scaling_factor = scaling
    log(f"vae: mean abs reconstruction error {err:.4f}; latent std {1 / scaling:.3f} -> scaling_factor {scaling:.4f}")
    return vae, moments


def tokenize(folder: Path):
    import torch
    import transformers

    tokenizer = transformers.CLIPTokenizer.from_pretrained(folder)
    ids = tokenizer(captions(), padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return ids.to(torch.int64)


def alphas_cumprod():
    import torch

    betas = torch.linspace(SCHEDULER["beta_start"] ** 0.5, SCHEDULER["beta_end"] ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


def diffusion_loss(unet, text_states, moments, labels, scaling, gen, abar):
    """Epsilon-prediction loss on a batch: posterior sample, uniform timestep, random caption (dropout included)."""
    import torch

    mean, logvar = moments.chunk(2, dim=1)
    z = (mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * torch.randn(mean.shape, generator=gen)) * scaling
    t = torch.randint(0, 1000, (len(z),), generator=gen)
    noise = torch.randn(z.shape, generator=gen)
    a = abar[t].view(-1, 1, 1, 1)
    noisy = a.sqrt() * z + (1 - a).sqrt() * noise
    cond = text_states[caption_indices(labels, gen)]
    return (unet(noisy, t, cond) - noise).pow(2).mean()


def train_unet(moments, labels, ids, scaling: float, steps: int, seed: int):
    """Text encoder + UNet jointly; returns their EMA copies."""
    import torch
    import transformers

    from .models import UNet2DConditionModel

    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(**UNET)
    torch.manual_seed(seed + 2)
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(**TEXT_ENCODER))
    log(
        f"unet: {count(unet):,} parameters; text encoder: {count(text_encoder):,} "
        f"({TEXT_ENCODER['vocab_size'] * TEXT_ENCODER['hidden_size']:,} of them the token embedding); "
        f"{steps} steps of {BATCH['unet']}"
    )
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.Adam(params, lr=5e-4)
    ema = Ema([unet, text_encoder], decay=0.999)
    gen = torch.Generator().manual_seed(seed + 3)
    abar = alphas_cumprod()
    start = time.perf_counter()
    running = 0.0
    for step, idx in zip(range(steps), shuffled_batches(len(labels), BATCH["unet"], gen)):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, 5e-4)
        text_states = text_encoder(ids).last_hidden_state
        loss = diffusion_loss(unet, text_states, moments[idx], labels[idx], scaling, gen, abar)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(step)
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if step % 100 == 0 or step == steps - 1:
            log(f"  unet step {step:5d}  loss {running:.4f}  {time.perf_counter() - start:6.0f} s")
    unet_ema, text_ema = ema.shadow
    rounded_fp16(unet_ema)
    rounded_fp16(text_ema)
    return unet_ema, text_ema


def lora_targets(unet):
    """The UNet's modules the LoRA adapts: attention and feed-forward projections, proj_in/out, resnet convs."""
    import torch

    targets = {}
    for name, module in unet.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if ".attentions." in f".{name}" and isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
            if "transformer_blocks" in name or leaf in ("proj_in", "proj_out"):
                targets[name] = module
        elif ".resnets." in f".{name}" and leaf in ("conv1", "conv2") and isinstance(module, torch.nn.Conv2d):
            targets[name] = module
    return targets


def train_lora(unet, text_encoder, bold_moments, labels, ids, scaling: float, steps: int, seed: int):
    """A kohya LoRA (LoCon for 3x3 convolutions) on the frozen UNet; returns the file's tensors."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed + 4)
    torch.manual_seed(seed + 5)
    unet = copy.deepcopy(unet).train().requires_grad_(False)
    with torch.no_grad():
        text_states = text_encoder(ids).last_hidden_state
    scale = LORA_ALPHA / LORA_RANK
    pairs: dict[str, tuple[nn.Module, nn.Module]] = {}
    hooks = []
    for name, module in lora_targets(unet).items():
        if isinstance(module, nn.Linear):
            down = nn.Linear(module.in_features, LORA_RANK, bias=False)
            up = nn.Linear(LORA_RANK, module.out_features, bias=False)
        else:
            conv = (module.kernel_size, module.stride, module.padding)
            down = nn.Conv2d(module.in_channels, LORA_RANK, *conv, bias=False)
            up = nn.Conv2d(LORA_RANK, module.out_channels, 1, bias=False)
        nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5))
        nn.init.zeros_(up.weight)
        pairs[name] = (down, up)
        hooks.append(module.register_forward_hook(lambda m, args, out, d=down, u=up: out + scale * u(d(args[0]))))
    params = [p for d, u in pairs.values() for p in (*d.parameters(), *u.parameters())]
    log(f"lora: {len(pairs)} modules, rank {LORA_RANK}, {sum(p.numel() for p in params):,} parameters, {steps} steps")
    opt = torch.optim.Adam(params, lr=LORA_LR)
    abar = alphas_cumprod()
    start = time.perf_counter()
    running = 0.0
    for step, idx in zip(range(steps), shuffled_batches(len(labels), BATCH["lora"], gen)):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, LORA_LR, warmup=50)
        loss = diffusion_loss(unet, text_states, bold_moments[idx], labels[idx], scaling, gen, abar)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if step % 100 == 0 or step == steps - 1:
            log(f"  lora step {step:5d}  loss {running:.4f}  {time.perf_counter() - start:6.0f} s")
    for hook in hooks:
        hook.remove()
    tensors = {}
    for name, (down, up) in pairs.items():
        key = "lora_unet_" + name.replace(".", "_")
        down_w, up_w = down.weight.detach(), up.weight.detach()
        if down_w.dim() == 2 and isinstance(dict(unet.named_modules())[name], nn.Conv2d):  # 1x1 conv as Linear
            down_w, up_w = down_w[:, :, None, None], up_w[:, :, None, None]
        tensors[f"{key}.lora_down.weight"] = down_w.half().contiguous()
        tensors[f"{key}.lora_up.weight"] = up_w.half().contiguous()
        tensors[f"{key}.alpha"] = torch.tensor(LORA_ALPHA, dtype=torch.float16)
    return tensors


# ---------------------------------------------------------------------------------------------------------------
# the whole run
# ---------------------------------------------------------------------------------------------------------------


def train_demo(out: str | Path, seed: int = 0, minutes: float = 25.0) -> Path:
    """Train every component and write the diffusers folder ``out`` (and its LoRA file); return ``out``."""
    import torch
    from safetensors.torch import save_file

    from .clip_vocab import write_clip_tokenizer
    from .diffusers_folder import save_model, write_text_to_image_index

    setup(seed)
    begin = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steps = {phase: max(1, round(minutes * SHARES[phase] * RATES[phase])) for phase in RATES}
    images, labels = digit_images()
    bold_images, _ = digit_images(bold=True)
    log(f"data: {len(images)} digits at {IMAGE_SIZE}x{IMAGE_SIZE}; budget {minutes:g} min -> steps {steps}")

    vae, moments = train_vae(images, steps["vae"], seed)
    VAE["scaling_factor"] = round(vae.scaling_factor, 5)
    save_model(vae, VAE, out / "vae", half=True)
    with torch.no_grad():
        bold_moments = torch.cat([vae.encode(bold_images[i : i + 256]) for i in range(0, len(bold_images), 256)])

    write_clip_tokenizer(out / "tokenizer")
    ids = tokenize(out / "tokenizer")
    phase = time.perf_counter()
    unet, text_encoder = train_unet(moments, labels, ids, VAE["scaling_factor"], steps["unet"], seed)
    log(f"unet + text encoder: {time.perf_counter() - phase:.0f} s")
    save_model(unet, UNET, out / "unet", half=True)
    text_encoder.half().save_pretrained(out / "text_encoder")
    text_encoder.float()

    write_text_to_image_index(out, SCHEDULER)

    phase = time.perf_counter()
    lora = train_lora(unet, text_encoder, bold_moments, labels, ids, VAE["scaling_factor"], steps["lora"], seed)
    save_file(lora, out / LORA_FILE, metadata={"ss_network_dim": str(LORA_RANK), "ss_network_alpha": str(LORA_ALPHA)})
    log(f"lora: {time.perf_counter() - phase:.0f} s")

    total = sum(f.stat().st_size for f in out.rglob("*.safetensors"))
    log(f"wrote {out} ({total / 1e6:.1f} MB of weights) in {time.perf_counter() - begin:.0f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffrt.export.train_demo", description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder to write the diffusers pipeline (and bold_lora.safetensors) to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--minutes", type=float, default=25.0, help="training budget; sets the step counts (default 25, ~2 cores)"
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        print("--minutes must be positive", file=sys.stderr)
        return 2
    train_demo(args.out, args.seed, args.minutes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

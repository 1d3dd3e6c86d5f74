"""Train the bundled video demo model: a tiny CogVideoX-architecture model of handwritten digits moving as told.

No model hub is reachable where diffrt is built and tested, so the video demo model (``models/digits-video``) is
trained here on CPU from scikit-learn's bundled digits (1,797 images of 8x8): each digit is drawn 16x16, dark ink on
light paper, on a 32x32 RGB canvas and moves one pixel per frame left, right, up or down for 9 frames (start jittered
by up to 2 pixels), captioned "a handwritten digit 3 moving left" / "a handwritten three moving left" (the empty
caption 10% of the time, for classifier-free guidance). It is written as a standard diffusers ``CogVideoXPipeline``
folder with diffrt's own model classes (export side), loadable by diffusers as it is:

* ``tokenizer/``: a T5-style Unigram tokenizer (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, a Metaspace pre-tokenizer, a
  ``$A </s>`` post-processor) whose pieces are learned from the caption corpus: every caption word is a piece,
  scored by its log-frequency there (the unigram language model's estimate), and single characters are low-scored
  fallback pieces; saved by transformers' ``T5TokenizerFast``;
* ``text_encoder/``: a tiny transformers ``T5EncoderModel`` (T5 v1.1 layout: gated-gelu, relative attention);
* ``vae/``: ``AutoencoderKLCogVideoX`` (3 blocks: 4x spatial and 4x temporal compression, 9x32x32 frames ->
  3x8x8 latents of 8 channels);
* ``transformer/``: ``CogVideoXTransformer3DModel`` in the CogVideoX-2b layout (sin-cos positional embeddings,
  patch size 2: 48 video tokens), with ``max_text_seq_length`` = :data:`MAX_TEXT_LENGTH`;
* ``scheduler/``: ``CogVideoXDDIMScheduler``, v-prediction on zero-terminal-SNR betas with "trailing" spacing as
  CogVideoX uses (``snr_shift_scale`` 1: these latents are small).

Phases: (1) the VAE learns reconstruction of random clips with a small KL term; its weights are rounded to float16
(as stored) and ``scaling_factor`` is fixed from the standard deviation of the training latents; (2) every
(digit, direction) clip, 7,188 of them, is encoded once; (3) the text encoder and the transformer learn
v-prediction jointly on those latents (EMA weights are saved).

**Generate with** ``max_sequence_length=16`` (:data:`MAX_TEXT_LENGTH`; the pipelines' default, 226, does not fit
the transformer's positional table), ``num_frames=9`` and 32x32 (the transformer's sample size, the defaults).

    python -m diffrt.export.train_video_demo OUT_FOLDER [--seed 0] [--minutes 25]

``--minutes`` is a budget, turned into step counts by fixed rates measured on a 2-core CPU (never by reading the
clock): 25 gives 672 VAE steps and 3,648 transformer steps, about 28 minutes on 2 cores. The run is deterministic
(two torch threads, fixed seeds and sample order, deterministic algorithms), so one seed and one budget give the same
files run after run with the same torch build on the same kind of CPU. ``models/digits-video`` is ``--seed 0
--minutes 25``: 9.0 MB of weights (VAE and transformer float16, the T5 encoder float32).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from .train_demo import Ema, cosine_lr, count, log, rounded_fp16, setup, shuffled_batches

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIRECTIONS = ("left", "right", "up", "down")
STEP = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}  # (rows, columns) per frame
IMAGE_SIZE = 32
DIGIT_SIZE = 16
NUM_FRAMES = 9  # 4k + 1: 3 latent frames
SPEED = 1  # pixels per frame
JITTER = 2  # the start moves by up to this many pixels along each axis
CAPTION_DROPOUT = 0.1
MAX_TEXT_LENGTH = 16  # what the pipeline must be called with (max_sequence_length)
LATENT_CHANNELS = 8
LATENT_FRAMES = (NUM_FRAMES - 1) // 4 + 1

TEXT_ENCODER = {
    "d_model": 64,
    "d_kv": 16,
    "d_ff": 128,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.0,
    "feed_forward_proj": "gated-gelu",
    "is_encoder_decoder": False,
    "use_cache": False,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}
VAE = {
    "_class_name": "AutoencoderKLCogVideoX",
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["CogVideoXDownBlock3D"] * 3,
    "up_block_types": ["CogVideoXUpBlock3D"] * 3,
    "block_out_channels": [16, 32, 64],
    "latent_channels": LATENT_CHANNELS,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "temporal_compression_ratio": 4,
    "sample_height": IMAGE_SIZE,
    "sample_width": IMAGE_SIZE,
    "scaling_factor": 1.0,  # replaced by 1 / std of the training latents
}
TRANSFORMER = {
    "_class_name": "CogVideoXTransformer3DModel",
    "num_attention_heads": 4,
    "attention_head_dim": 32,
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    "time_embed_dim": 128,
    "text_embed_dim": TEXT_ENCODER["d_model"],
    "num_layers": 6,
    "sample_width": IMAGE_SIZE // 4,  # latent cells
    "sample_height": IMAGE_SIZE // 4,
    "sample_frames": NUM_FRAMES,
    "patch_size": 2,
    "temporal_compression_ratio": 4,
    "max_text_seq_length": MAX_TEXT_LENGTH,
    "use_rotary_positional_embeddings": False,
    "use_learned_positional_embeddings": False,
}
SCHEDULER = {
    "_class_name": "CogVideoXDDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "sample_max_value": 1.0,
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "prediction_type": "v_prediction",
    "timestep_spacing": "trailing",
    "rescale_betas_zero_snr": True,
    "snr_shift_scale": 1.0,
}
PIPELINE_INDEX = {
    "_class_name": "CogVideoXPipeline",
    "scheduler": ["diffusers", "CogVideoXDDIMScheduler"],
    "text_encoder": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "CogVideoXTransformer3DModel"],
    "vae": ["diffusers", "AutoencoderKLCogVideoX"],
}

# Steps per minute of each phase on a 2-core CPU (measured once; fixed so that step counts never depend on the clock),
# the share of the budget each phase gets, and the minutes the one-off encoding of the clips takes (off the top).
RATES = {"vae": 140, "transformer": 190}
SHARES = {"vae": 0.2, "transformer": 0.8}
BATCH = {"vae": 8, "transformer": 64}
ENCODE_MINUTES = 1.0
LR = {"vae": 1e-3, "transformer": 5e-4}


# ---------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------


def digit_stamps():
    """sklearn's digits as (N, 16, 16) float32 ink maps in [0, 1] (1: black; bilinear upscale) and labels (N,)."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    ink = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    ink = F.interpolate(ink, size=(DIGIT_SIZE, DIGIT_SIZE), mode="bilinear", align_corners=False).clamp(0, 1)
    return ink[:, 0].contiguous(), torch.tensor(digits.target, dtype=torch.int64)


def start_positions(directions, jitter):
    """Top-left corner (row, column) of the digit in frame 0: the path is centred on the canvas, then jittered.

    ``directions`` (B,) indices into :data:`DIRECTIONS`, ``jitter`` (B, 2) integers in [-JITTER, JITTER]."""
    import torch

    centre = (IMAGE_SIZE - DIGIT_SIZE) // 2
    half = SPEED * (NUM_FRAMES - 1) // 2
    steps = torch.tensor([STEP[d] for d in DIRECTIONS], dtype=torch.int64)[directions]  # (B, 2)
    return centre - half * steps + jitter, steps * SPEED


def render_clips(stamps, directions, jitter):
    """Clips (B, 3, F, 32, 32) in [-1, 1], dark ink (-1) on light paper (+1), of the ink ``stamps`` (B, 16, 16)."""
    import torch

    start, velocity = start_positions(directions, jitter)
    ink = torch.zeros(len(stamps), NUM_FRAMES, IMAGE_SIZE, IMAGE_SIZE)
    for b in range(len(stamps)):
        for f in range(NUM_FRAMES):
            r, c = (start[b] + f * velocity[b]).tolist()
            ink[b, f, r : r + DIGIT_SIZE, c : c + DIGIT_SIZE] = stamps[b]
    return (1.0 - 2.0 * ink).unsqueeze(1).expand(-1, 3, -1, -1, -1).contiguous()


def draw_jitter(n: int, gen):
    import torch

    return torch.randint(-JITTER, JITTER + 1, (n, 2), generator=gen)


def captions() -> list[str]:
    """The empty caption, then per digit d and direction k (index 1 + 2 (4 d + k) + form) the numeral and word forms."""
    texts = [""]
    for d, word in enumerate(DIGIT_WORDS):
        for direction in DIRECTIONS:
            texts += [f"a handwritten digit {d} moving {direction}", f"a handwritten {word} moving {direction}"]
    return texts


def caption_indices(labels, directions, generator):
    """One caption per sample: the numeral or the word form at random, the empty caption at CAPTION_DROPOUT."""
    import torch

    form = torch.randint(0, 2, labels.shape, generator=generator)
    drop = torch.rand(labels.shape, generator=generator) < CAPTION_DROPOUT
    return torch.where(drop, torch.zeros_like(labels), 1 + 2 * (4 * labels + directions) + form)


# ---------------------------------------------------------------------------------------------------------------
# the tokenizer
# ---------------------------------------------------------------------------------------------------------------

FALLBACK_CHARACTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-()"


def tokenizer_vocabulary() -> list[tuple[str, float]]:
    """T5's layout: ``<pad>``, ``</s>``, ``<unk>``, then the pieces with their log-probabilities: every word of the
    caption corpus (its share of the corpus' words), "▁" and single characters (far less likely: only words
    outside the corpus are spelled out with them)."""
    from collections import Counter

    words = Counter(f"▁{w}" for text in captions() for w in text.split())
    total = sum(words.values())
    pieces = [(w, math.log(n / total)) for w, n in sorted(words.items(), key=lambda item: (-item[1], item[0]))]
    fallback = [("▁", -20.0)] + [(ch, -20.0) for ch in FALLBACK_CHARACTERS]
    return [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *pieces, *fallback]


def write_t5_tokenizer(folder: Path):
    """Save the T5-style tokenizer to ``folder`` (``tokenizer.json`` + ``tokenizer_config.json``) and return it."""
    from transformers import T5TokenizerFast

    tokenizer = T5TokenizerFast(
        vocab=tokenizer_vocabulary(), pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0
    )
    tokenizer.model_max_length = MAX_TEXT_LENGTH
    tokenizer.save_pretrained(folder)
    return T5TokenizerFast.from_pretrained(folder)


def tokenize(tokenizer):
    """The caption ids (81, MAX_TEXT_LENGTH), padded as CogVideoXPipeline pads them."""
    import torch

    ids = tokenizer(
        captions(), padding="max_length", max_length=MAX_TEXT_LENGTH, truncation=True, return_tensors="pt"
    ).input_ids
    return ids.to(torch.int64)


# ---------------------------------------------------------------------------------------------------------------
# the networks (diffrt's own classes; the hooks below are all that touches their interfaces)
# ---------------------------------------------------------------------------------------------------------------


def model_kwargs(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def make_vae():
    from .models import AutoencoderKLCogVideoX

    return AutoencoderKLCogVideoX(**model_kwargs(VAE))


def vae_encode(vae, clips):
    """(B, 3, F, H, W) -> the posterior's parameters (B, 2 C, f, h, w): mean and log-variance."""
    return vae.encode(clips)


def vae_decode(vae, latents):
    """(B, C, f, h, w) unscaled latents -> (B, 3, F, H, W)."""
    return vae.decode(latents)


def make_transformer():
    from .models import CogVideoXTransformer3DModel

    return CogVideoXTransformer3DModel(**model_kwargs(TRANSFORMER))


def position_inputs(transformer):
    """The transformer's positional inputs for 9 frames at 32x32, computed as the runtime computes them."""
    import torch

    from ..runtime.pipelines.cogvideox_positions import sincos_pos_embedding

    table = sincos_pos_embedding(TRANSFORMER, LATENT_FRAMES, IMAGE_SIZE // 4, IMAGE_SIZE // 4)
    return {"pos_embedding": torch.from_numpy(table).float()}


def denoise(transformer, latents, text_states, timesteps, positions):
    """The transformer's prediction for latents (B, F, C, h, w) at ``timesteps`` (B,)."""
    return transformer(latents, text_states, timesteps, **positions)


# ---------------------------------------------------------------------------------------------------------------
# phases
# ---------------------------------------------------------------------------------------------------------------


def train_vae(stamps, steps: int, seed: int):
    """Reconstruction (L1 + MSE) of random clips with a small KL term; returns the VAE (fp16-rounded)."""
    import torch

    torch.manual_seed(seed)
    vae = make_vae()
    log(f"vae: {count(vae):,} parameters, {steps} steps of {BATCH['vae']} clips")
    opt = torch.optim.Adam(vae.parameters(), lr=LR["vae"])
    gen = torch.Generator().manual_seed(seed)
    pairs = len(stamps) * len(DIRECTIONS)
    start = time.perf_counter()
    for step, idx in zip(range(steps), shuffled_batches(pairs, BATCH["vae"], gen)):
        x = render_clips(stamps[idx // 4], idx % 4, draw_jitter(len(idx), gen))
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, LR["vae"])
        mean, logvar = vae_encode(vae, x).chunk(2, dim=1)
        logvar = logvar.clamp(-30, 20)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen)
        recon = vae_decode(vae, z)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3, 4)).mean()
        rec = (recon - x).abs().mean() + (recon - x).pow(2).mean()
        loss = rec + 1e-5 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(
                f"  vae step {step:5d}  rec {rec.item():.4f}  kl {kl.item():8.1f}  {time.perf_counter() - start:6.0f} s"
            )
    vae.eval().requires_grad_(False)
    rounded_fp16(vae)
    return vae


def encode_dataset(vae, stamps, labels, seed: int):
    """Every (digit, direction) pair once, jittered: the posterior parameters (N, f, 2 C, h, w) (frames first, as
    the transformer takes them), and the digits' labels and the direction indices (N,)."""
    import torch

    gen = torch.Generator().manual_seed(seed + 6)
    n = len(stamps) * len(DIRECTIONS)
    idx = torch.arange(n)
    jitter = draw_jitter(n, gen)
    moments = []
    with torch.no_grad():
        for pos in range(0, n, 64):
            sl = slice(pos, pos + 64)
            clips = render_clips(stamps[idx[sl] // 4], idx[sl] % 4, jitter[sl])
            moments.append(vae_encode(vae, clips).permute(0, 2, 1, 3, 4).contiguous())
    return torch.cat(moments), labels[idx // 4], idx % 4


def alphas_cumprod():
    """CogVideoXDDIMScheduler's: scaled-linear betas, the SNR shift, then rescaled to zero terminal SNR."""
    import torch

    s = SCHEDULER
    betas = torch.linspace(s["beta_start"] ** 0.5, s["beta_end"] ** 0.5, s["num_train_timesteps"], dtype=torch.float64)
    abar = torch.cumprod(1 - betas**2, 0)
    abar = abar / (s["snr_shift_scale"] + (1 - s["snr_shift_scale"]) * abar)
    root = abar.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    return (root**2).float()


def train_transformer(moments, labels, directions, ids, vocab_size: int, scaling: float, steps: int, seed: int):
    """Text encoder + transformer jointly on v-prediction; returns their EMA copies (fp16-rounded)."""
    import torch
    import transformers

    torch.manual_seed(seed + 1)
    transformer = make_transformer()
    torch.manual_seed(seed + 2)
    config = transformers.T5Config(vocab_size=vocab_size, **TEXT_ENCODER)
    text_encoder = transformers.T5EncoderModel(config)
    log(
        f"transformer: {count(transformer):,} parameters; text encoder: {count(text_encoder):,}; "
        f"{steps} steps of {BATCH['transformer']}"
    )
    params = list(transformer.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.Adam(params, lr=LR["transformer"])
    ema = Ema([transformer, text_encoder], decay=0.999)
    gen = torch.Generator().manual_seed(seed + 3)
    abar = alphas_cumprod()
    positions = position_inputs(transformer)
    start = time.perf_counter()
    running = 0.0
    for step, idx in zip(range(steps), shuffled_batches(len(labels), BATCH["transformer"], gen)):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, LR["transformer"])
        mean, logvar = moments[idx].chunk(2, dim=2)
        z = (mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * torch.randn(mean.shape, generator=gen)) * scaling
        t = torch.randint(0, SCHEDULER["num_train_timesteps"], (len(z),), generator=gen)
        noise = torch.randn(z.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1, 1)
        noisy = a.sqrt() * z + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * z
        text_states = text_encoder(ids).last_hidden_state
        cond = text_states[caption_indices(labels[idx], directions[idx], gen)]
        loss = (denoise(transformer, noisy, cond, t, positions) - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(step)
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if step % 100 == 0 or step == steps - 1:
            log(f"  transformer step {step:5d}  loss {running:.4f}  {time.perf_counter() - start:6.0f} s")
    transformer_ema, text_ema = ema.shadow
    rounded_fp16(transformer_ema)
    rounded_fp16(text_ema)
    return transformer_ema, text_ema


# ---------------------------------------------------------------------------------------------------------------
# the whole run
# ---------------------------------------------------------------------------------------------------------------


def write_pipeline_index(out: Path) -> None:
    from ..runtime.schema import INDEX_NAME, SCHEDULER_CONFIG

    scheduler_path = out.joinpath(*SCHEDULER_CONFIG)
    scheduler_path.parent.mkdir(parents=True, exist_ok=True)
    scheduler_path.write_text(json.dumps(SCHEDULER, indent=2) + "\n")
    (out / INDEX_NAME).write_text(json.dumps(PIPELINE_INDEX, indent=2) + "\n")


def step_counts(minutes: float) -> dict[str, int]:
    left = max(minutes - ENCODE_MINUTES, 0.1 * minutes)
    return {phase: max(1, round(left * SHARES[phase] * RATES[phase])) for phase in RATES}


def train_video_demo(out: str | Path, seed: int = 0, minutes: float = 25.0) -> Path:
    """Train every component and write the diffusers folder ``out``; return ``out``."""
    import torch
    import transformers

    from .diffusers_folder import save_model

    setup(seed)
    begin = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steps = step_counts(minutes)
    stamps, labels = digit_stamps()
    log(
        f"data: {len(stamps)} digits x {len(DIRECTIONS)} directions, {NUM_FRAMES} frames of {IMAGE_SIZE}x{IMAGE_SIZE}; "
        f"budget {minutes:g} min -> steps {steps}"
    )

    phase = time.perf_counter()
    vae = train_vae(stamps, steps["vae"], seed)
    moments, clip_labels, directions = encode_dataset(vae, stamps, labels, seed)
    mean = moments[:, :, :LATENT_CHANNELS]
    scaling = round(1.0 / mean.std().item(), 5)
    with torch.no_grad():
        x = render_clips(stamps[:64], torch.arange(64) % 4, torch.zeros(64, 2, dtype=torch.int64))
        err = (vae_decode(vae, vae_encode(vae, x)[:, :LATENT_CHANNELS]) - x).abs().mean().item()
    vae.scaling_factor = scaling
    save_model(vae, {**VAE, "scaling_factor": scaling}, out / "vae", half=True)
    log(
        f"vae: mean abs reconstruction error {err:.4f}; latent std {mean.std().item():.3f} -> scaling_factor "
        f"{scaling}; {time.perf_counter() - phase:.0f} s with the encoding of {len(moments)} clips"
    )

    tokenizer = write_t5_tokenizer(out / "tokenizer")
    ids = tokenize(tokenizer)
    phase = time.perf_counter()
    transformer, text_encoder = train_transformer(
        moments, clip_labels, directions, ids, len(tokenizer), scaling, steps["transformer"], seed
    )
    log(f"transformer + text encoder: {time.perf_counter() - phase:.0f} s")
    save_model(transformer, TRANSFORMER, out / "transformer", half=True)
    # float32 (0.4 MB): transformers 5 loads a checkpoint in its own dtype, and a float16 T5 would hand float16
    # states to diffusers' float32 transformer
    transformers.utils.logging.disable_progress_bar()
    text_encoder.save_pretrained(out / "text_encoder")
    write_pipeline_index(out)

    total = sum(f.stat().st_size for f in out.rglob("*.safetensors"))
    log(f"wrote {out} ({total / 1e6:.1f} MB of weights) in {time.perf_counter() - begin:.0f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m diffrt.export.train_video_demo", description=__doc__.splitlines()[0]
    )
    parser.add_argument("out", help="folder to write the diffusers CogVideoXPipeline to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--minutes", type=float, default=25.0, help="training budget; sets the step counts (default 25, ~2 cores)"
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        print("--minutes must be positive", file=sys.stderr)
        return 2
    train_video_demo(args.out, args.seed, args.minutes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""CogVideoX-2b with deterministic random weights, written as a diffusers ``CogVideoXPipeline`` folder.

The transformer and the VAE have the real CogVideoX-2b configs (THUDM/CogVideoX-2b ``transformer/config.json`` and
``vae/config.json``: a 1.69 B-parameter transformer, 30 layers of 30 heads x 64, 4096-wide text input, sin-cos
positions; the 216 M-parameter causal 3D VAE, 16 latent channels, 8x spatial and 4x temporal compression), the
scheduler is the real one (``CogVideoXDDIMScheduler``: v-prediction, zero-terminal-SNR betas, trailing timesteps,
``snr_shift_scale`` 3). Weights are seeded, each module's default initialization (what diffusers and transformers
give a fresh model), which keeps activations finite through all 30 layers; they are stored in fp16, as the real
checkpoint ships them, and both diffusers (``torch_dtype=torch.float32``) and ``diffrt export`` read them as fp32.

The text encoder is **reduced**. The real one, T5 v1.1 XXL, holds 4.76 B parameters (19 GB in fp32): beside the
transformer, and loaded by both backends in turn, it does not fit this 24 GB machine. Kept: T5's architecture
(gated-GELU, relative position buckets) at ``d_model`` 4096, the width the transformer's ``text_embed_dim``
expects, and 226 tokens per prompt; reduced: 2 layers (of 24), 16 heads (of 64) of 64, ``d_ff`` 2560 (of 10240),
and a vocabulary of the small offline T5 tokenizer (``tests/fixtures/tiny_cogvideox.py``; nothing is downloaded)
instead of 32128 pieces: 97 M parameters. So the text encoder's time and memory here are not CogVideoX-2b's.

``--tiny`` writes the same layout at toy sizes (2 transformer layers of 2 heads x 16, a 4-block VAE of 8 channels,
a T5 of width 32) for testing the benchmark harness in seconds.

    python benchmarks/cogvideox2b.py OUT_FOLDER           # about 1.5 minutes and 4.0 GB on disk
    python benchmarks/cogvideox2b.py OUT_FOLDER --tiny    # seconds, a few MB
    python benchmarks/cogvideox2b.py OUT_FOLDER --transformer-layers 10   # real widths, 10 of the 30 layers
    python benchmarks/cogvideox2b.py OUT_FOLDER --export PACKAGE --around 160x240   # diffrt export, see below

A folder that already holds ``model_index.json`` is reused as it is.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SEED = 0

# THUDM/CogVideoX-2b transformer/config.json (diffusers' CogVideoXTransformer3DModel).
TRANSFORMER = dict(
    activation_fn="gelu-approximate",
    attention_bias=True,
    attention_head_dim=64,
    dropout=0.0,
    flip_sin_to_cos=True,
    freq_shift=0,
    in_channels=16,
    max_text_seq_length=226,
    norm_elementwise_affine=True,
    norm_eps=1e-5,
    num_attention_heads=30,
    num_layers=30,
    out_channels=16,
    patch_size=2,
    sample_frames=49,
    sample_height=60,
    sample_width=90,
    spatial_interpolation_scale=1.875,
    temporal_compression_ratio=4,
    temporal_interpolation_scale=1.0,
    text_embed_dim=4096,
    time_embed_dim=512,
    timestep_activation_fn="silu",
    use_learned_positional_embeddings=False,
    use_rotary_positional_embeddings=False,
)
# THUDM/CogVideoX-2b vae/config.json (diffusers' AutoencoderKLCogVideoX).
VAE = dict(
    act_fn="silu",
    block_out_channels=(128, 256, 256, 512),
    down_block_types=("CogVideoXDownBlock3D",) * 4,
    force_upcast=True,
    in_channels=3,
    latent_channels=16,
    latents_mean=None,
    latents_std=None,
    layers_per_block=3,
    norm_eps=1e-6,
    norm_num_groups=32,
    out_channels=3,
    sample_height=480,
    sample_width=720,
    scaling_factor=1.15258426,
    shift_factor=None,
    temporal_compression_ratio=4,
    up_block_types=("CogVideoXUpBlock3D",) * 4,
    use_post_quant_conv=False,
    use_quant_conv=False,
)
# THUDM/CogVideoX-2b scheduler/scheduler_config.json.
SCHEDULER = dict(
    beta_end=0.012,
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    clip_sample=False,
    clip_sample_range=1.0,
    num_train_timesteps=1000,
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
    sample_max_value=1.0,
    set_alpha_to_one=True,
    snr_shift_scale=3.0,
    steps_offset=0,
    timestep_spacing="trailing",
)
# T5 v1.1 XXL (google/t5-v1_1-xxl, CogVideoX's text_encoder/config.json), for the record: what is reduced below.
T5_XXL = dict(
    vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu"
)
# The reduced T5 this benchmark runs: T5-XXL's width (the transformer's text_embed_dim), 2 of its 24 layers.
T5_REDUCED = dict(d_model=4096, d_kv=64, d_ff=2560, num_layers=2, num_heads=16)
T5_COMMON = dict(
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    layer_norm_epsilon=1e-6,
    dropout_rate=0.0,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
    is_encoder_decoder=False,
    use_cache=False,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)

# --tiny: the same layout at toy sizes (the harness's smoke test). Sample 96x144 pixels: the harness's 32x48 lies
# below the package's shape range, as 160x240 lies below the real one's.
TINY_TRANSFORMER = {
    **TRANSFORMER,
    **dict(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        time_embed_dim=32,
        text_embed_dim=32,
        num_layers=2,
        sample_height=12,
        sample_width=18,
        sample_frames=9,
    ),
}
TINY_VAE = {
    **VAE,
    **dict(
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        sample_height=96,
        sample_width=144,
    ),
}
TINY_T5 = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)


def configs(tiny: bool = False, transformer_layers: int | None = None) -> dict[str, dict[str, Any]]:
    """The component configs of the real (or ``tiny``) build; ``transformer_layers`` overrides the transformer's
    depth (30), a fallback for a disk too small for the full one (see bench_video.py)."""
    transformer = dict(TINY_TRANSFORMER if tiny else TRANSFORMER)
    if transformer_layers:
        transformer["num_layers"] = transformer_layers
    return {
        "transformer": transformer,
        "vae": dict(TINY_VAE if tiny else VAE),
        "text_encoder": {**T5_COMMON, **(TINY_T5 if tiny else T5_REDUCED)},
        "scheduler": dict(SCHEDULER),
    }


def _t5_tokenizer_module():
    """The offline T5 tokenizer builder of the test fixtures (a T5-layout tokenizer.json; nothing downloaded)."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from fixtures import tiny_cogvideox
    finally:
        sys.path.remove(str(ROOT / "tests"))
    return tiny_cogvideox


def build_source(folder: Path, tiny: bool = False, seed: int = SEED, transformer_layers: int | None = None) -> Path:
    """Write the pipeline to ``folder`` (seeded; fp16 weights) unless it is already there; return it."""
    import diffusers
    import torch
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return folder
    diffusers.utils.logging.set_verbosity_error()  # no "modules to keep in float32: []" notes on the fp16 cast
    c = configs(tiny, transformer_layers)
    tokenizer_folder = _t5_tokenizer_module().build_t5_tokenizer(folder.parent / f"_{folder.name}-t5-tokenizer", 100)
    tokenizer = T5TokenizerFast.from_pretrained(tokenizer_folder)
    # One module at a time, each checked in fp32 and then cast to fp16: the fp32 transformer alone is 6.8 GB.
    torch.manual_seed(seed)
    transformer = CogVideoXTransformer3DModel(**c["transformer"]).eval()
    check_finite("transformer", transformer)
    transformer = transformer.to(torch.float16)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLCogVideoX(**c["vae"]).eval()
    check_finite("vae", vae)
    vae = vae.to(torch.float16)
    torch.manual_seed(seed + 2)
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), **c["text_encoder"])).eval()
    check_finite("text_encoder", text_encoder)
    text_encoder = text_encoder.to(torch.float16)
    pipe = CogVideoXPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=CogVideoXDDIMScheduler(**c["scheduler"]),
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def check_finite(name: str, module) -> None:
    """One small forward on seeded inputs (1 latent frame of 2x2 patches, 226 tokens): random weights must give
    finite, non-flat outputs, or the benchmark would time NaNs."""
    import torch

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if name == "text_encoder":
            out = module(torch.randint(2, module.config.vocab_size, (1, 226), generator=generator)).last_hidden_state
        elif name == "transformer":
            config = module.config
            latents = torch.randn(1, 1, config.in_channels, 4, 4, generator=generator)
            text = torch.randn(1, config.max_text_seq_length, config.text_embed_dim, generator=generator)
            out = module(latents, text, torch.tensor([999]), return_dict=False)[0]
        else:
            out = module.decode(torch.randn(1, module.config.latent_channels, 1, 4, 4, generator=generator)).sample
    if not torch.isfinite(out).all() or float(out.std()) < 1e-4:
        raise SystemExit(f"{name}: random weights gave non-finite or flat outputs (std {float(out.std())})")


def parameter_counts(folder: Path) -> dict[str, int]:
    """Parameters per component, read from the safetensors headers (no weights loaded)."""
    from safetensors import safe_open

    counts = {}
    for part in ("transformer", "vae", "text_encoder"):
        total = 0
        for file in sorted((Path(folder) / part).glob("*.safetensors")):
            with safe_open(str(file), framework="np") as f:
                for key in f.keys():
                    shape = f.get_slice(key).get_shape()
                    n = 1
                    for d in shape:
                        n *= d
                    total += n
        counts[part] = total
    return counts


def export_around(source: Path, package: Path, height: int, width: int) -> dict[str, Any]:
    """``diffrt export SOURCE PACKAGE --no-check --force``, with the package's shape range centred on ``height`` x
    ``width`` instead of the transformer's sample size, so that every graph is traced at that size.

    With its defaults, diffrt export traces CogVideoX's graphs at the sample size, 480x720 (the VAE encoder on 8
    frames): on this 24 GB machine that trace was killed for memory (23.3 GB resident at the VAE encoder). The
    graphs are the same either way (dynamic height, width and frames); only the size they are traced at and the
    range the package declares (half to twice the centre) change. Done by replacing
    ``diffrt.export.video_package.video_shape_range`` for this one call; nothing else of the export differs.
    Returns {seconds, graphs: {name: bytes}}.
    """
    from diffrt.export import video_package
    from diffrt.export.package import ExportOptions, export_package
    from diffrt.export.source import load_source
    from diffrt.runtime.networks import ShapeRange

    def progress(name: str, message: str) -> None:
        print(f"  {name:<16} {message}", file=sys.stderr, flush=True)

    default = video_package.video_shape_range
    video_package.video_shape_range = lambda _source, options: ShapeRange.around(height, width, batch=options.batch)
    try:
        start = time.perf_counter()
        report = export_package(load_source(source), package, ExportOptions(check=False, force=True), progress)
    finally:
        video_package.video_shape_range = default
    return {"seconds": round(time.perf_counter() - start, 1), "graphs": {g.name: g.bytes for g in report.graphs}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="the diffusers folder to write (or, with --export, to read)")
    parser.add_argument("--export", metavar="PACKAGE", help="export the folder OUT to this engine package instead")
    parser.add_argument("--around", default="160x240", help="with --export: the size (HxW) the package is centred on")
    parser.add_argument("--tiny", action="store_true", help="toy sizes, for testing the harness")
    parser.add_argument("--transformer-layers", type=int, help="override the transformer's 30 layers (fallback)")
    parser.add_argument("--report", help="write {seconds, parameters, configs, peak_rss_gb} to this JSON file")
    args = parser.parse_args(argv)
    if args.export:
        height, width = (int(v) for v in args.around.lower().split("x"))
        done = export_around(Path(args.out), Path(args.export), height, width)
        print(f"wrote {args.export} ({sum(done['graphs'].values()) / 2**30:.2f} GB) in {done['seconds']} s")
        return 0
    start = time.perf_counter()
    folder = build_source(Path(args.out), tiny=args.tiny, transformer_layers=args.transformer_layers)
    seconds = time.perf_counter() - start
    if args.report:
        import resource

        report = {
            "seconds": round(seconds, 1),
            "parameters": parameter_counts(folder),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        }
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {folder} in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

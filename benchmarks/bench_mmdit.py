"""SD3-medium- and Flux-schnell-architecture pipelines (random weights): diffrt (ONNX Runtime CPU) beside diffusers
(torch fp32, CPU) in one run, each backend in its own process, the same latents and prompt.

What is real and what is reduced (nothing is downloaded; weights are seeded module defaults):

* SD3: stabilityai/stable-diffusion-3-medium's configs: transformer (24 heads x 64, 4096-wide text input, 2048-wide
  pooled input, patch 2, 192 x 192 position table), CLIP-L and CLIP-G with projection, the 16-channel VAE (shift and
  scale factors), FlowMatchEuler with shift 3. **Reduced:** the transformer's depth (``--sd3-layers``, default 8 of
  24 layers, each at its real width) and T5 (T5-XXL's width 4096, 2 of 24 layers, 16 heads, d_ff 2560, the offline
  test tokenizer's vocabulary: the real 4.76 B-parameter T5 beside everything else does not fit this 24 GB machine).
* Flux: black-forest-labs/FLUX.1-schnell's configs: transformer (24 heads x 128, 64 input channels, rotary axes
  16/56/56, no guidance embedding), CLIP-L, the 16-channel VAE, FlowMatchEuler without dynamic shift. **Reduced:**
  the transformer's depth (``--flux-blocks``, default 2 of 19 double and 4 of 38 single blocks at the real width:
  FLUX.1's 12 B parameters are 48 GB in fp32) and T5 as for SD3.

Ratios are diffusers / diffrt: above 1, diffrt is faster or smaller. Each backend makes one warm-up call and then
``--reps`` measured ones; the lower end-to-end time is reported.

    python benchmarks/bench_mmdit.py                      # ~25 min here: builds, exports, runs both families
    python benchmarks/bench_mmdit.py --tiny --work /tmp/m  # toy sizes, seconds: the harness's test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
PROMPT = "a photograph of an astronaut riding a horse on the moon"
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
              projection_dim=768, hidden_act="quick_gelu")  # fmt: skip
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
              projection_dim=1280, hidden_act="gelu")  # fmt: skip
CLIP_COMMON = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                   pad_token_id=49407, layer_norm_eps=1e-5)  # fmt: skip
T5_REDUCED = dict(d_model=4096, d_kv=64, d_ff=2560, num_layers=2, num_heads=16)
VAE = dict(block_out_channels=(128, 256, 512, 512), latent_channels=16, layers_per_block=2, sample_size=1024,
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
           use_quant_conv=False, use_post_quant_conv=False)  # fmt: skip
SD3 = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
           joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
           pos_embed_max_size=192)  # fmt: skip
FLUX = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=False,
            axes_dims_rope=(16, 56, 56))  # fmt: skip
TINY = dict(clip=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=3,
                      projection_dim=32, hidden_act="gelu"),
            t5=dict(d_model=64, d_kv=8, d_ff=64, num_layers=2, num_heads=4),
            vae=dict(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                     up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, sample_size=32),
            sd3=dict(sample_size=16, num_layers=2, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64,
                     caption_projection_dim=32, pooled_projection_dim=64, pos_embed_max_size=16, in_channels=16,
                     out_channels=16),
            flux=dict(in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                      joint_attention_dim=64, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6)))  # fmt: skip
FAMILIES = {
    "sd3": dict(pipeline="StableDiffusion3Pipeline", steps=8, guidance=7.0, scaling=1.5305, shift=0.0609,
                scheduler=dict(shift=3.0)),
    "flux": dict(pipeline="FluxPipeline", steps=4, guidance=0.0, scaling=0.3611, shift=0.1159,
                 scheduler=dict(shift=1.0, use_dynamic_shifting=False)),
}  # fmt: skip


# ===================================================================================================== models =====
def _tests_module(name: str):
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        return __import__(f"fixtures.{name}", fromlist=[name])
    finally:
        sys.path.remove(str(ROOT / "tests"))


def build_source(family: str, folder: Path, tiny: bool, depth: tuple[int, ...]) -> dict[str, Any]:
    """Write the seeded diffusers folder (weights as fp16, as released checkpoints ship) unless it is there."""
    import diffusers
    import torch
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        T5Config,
        T5EncoderModel,
        T5TokenizerFast,
    )

    from diffrt.export.clip_vocab import write_clip_tokenizer

    record = folder / "bench_build.json"
    if record.is_file():
        return json.loads(record.read_text())
    diffusers.utils.logging.set_verbosity_error()
    spec = FAMILIES[family]
    start = time.perf_counter()
    torch.manual_seed(0)
    clip_l = {**CLIP_COMMON, **(TINY["clip"] if tiny else CLIP_L)}
    t5_folder = _tests_module("tiny_cogvideox").build_t5_tokenizer(folder.parent / f"_{family}-t5-tokenizer", 100)
    t5_tokenizer = T5TokenizerFast.from_pretrained(t5_folder)
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer), **(TINY["t5"] if tiny else T5_REDUCED),
                                 feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
                                 pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))  # fmt: skip
    vae = diffusers.AutoencoderKL(**{**VAE, **(TINY["vae"] if tiny else {})}, scaling_factor=spec["scaling"],
                                  shift_factor=spec["shift"])  # fmt: skip
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(**spec["scheduler"])
    vocab = CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder.parent / f"_{family}-clip"))
    if family == "sd3":
        config = {**SD3, **(TINY["sd3"] if tiny else {}), "num_layers": depth[0]}
        vocab_2 = CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder.parent / f"_{family}-clip-g", "!"))
        clip_g = {**CLIP_COMMON, **(TINY["clip"] if tiny else CLIP_G)}
        pipe = diffusers.StableDiffusion3Pipeline(
            transformer=diffusers.SD3Transformer2DModel(**config), scheduler=scheduler, vae=vae,
            text_encoder=CLIPTextModelWithProjection(CLIPTextConfig(**clip_l)), tokenizer=vocab,
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**clip_g)), tokenizer_2=vocab_2,
            text_encoder_3=t5, tokenizer_3=t5_tokenizer,
        )  # fmt: skip
    else:
        config = {**FLUX, **(TINY["flux"] if tiny else {}), "num_layers": depth[0], "num_single_layers": depth[1]}
        pipe = diffusers.FluxPipeline(
            transformer=diffusers.FluxTransformer2DModel(**config), scheduler=scheduler, vae=vae,
            text_encoder=CLIPTextModel(CLIPTextConfig(**clip_l)), tokenizer=vocab, text_encoder_2=t5,
            tokenizer_2=t5_tokenizer,
        )  # fmt: skip
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    params = {
        name: sum(p.numel() for p in getattr(pipe, name).parameters())
        for name in ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae")
        if getattr(pipe, name, None) is not None
    }
    done = {"seconds": round(time.perf_counter() - start, 1), "parameters": params, "transformer": config}
    record.write_text(json.dumps(done, indent=1) + "\n")
    return done


# ===================================================================================================== child ======
def child(args: argparse.Namespace) -> None:
    """Load one backend, make the warm-up call and ``reps`` measured ones; write the measurements."""
    spec = FAMILIES[args.family]
    latents = np.load(args.latents)
    kwargs = dict(prompt=PROMPT, height=args.size, width=args.size, num_inference_steps=spec["steps"],
                  guidance_scale=spec["guidance"], max_sequence_length=args.tokens)  # fmt: skip
    start = time.perf_counter()
    if args.child == "diffusers":
        import diffusers
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        pipe = getattr(diffusers, spec["pipeline"]).from_pretrained(args.model, torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)

        def generate():
            with torch.no_grad():
                return pipe(**kwargs, latents=torch.from_numpy(latents), output_type="np").images
    else:
        from diffrt.runtime import pipelines

        pipe = getattr(pipelines, spec["pipeline"]).from_pretrained(args.model)
        pipe.set_progress_bar_config(disable=True)

        def generate():
            return pipe(**kwargs, latents=latents, generator=0, output_type="np").images

    load_s = time.perf_counter() - start
    times = []
    for _ in range(1 + args.reps):
        start = time.perf_counter()
        image = np.asarray(generate(), dtype=np.float32)
        times.append(time.perf_counter() - start)
    np.save(args.image, image)
    result = {"load_s": load_s, "first_call_s": times[0], "calls_s": times[1:],
              "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # fmt: skip
    Path(args.result).write_text(json.dumps(result) + "\n")


# ===================================================================================================== parent =====
def run(command: list[str], what: str) -> float:
    print(f"[bench-mmdit] {what}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    return round(time.perf_counter() - start, 1)


def measure(family: str, backend: str, model: Path, work: Path, args, latents: Path) -> dict[str, Any]:
    result, image = work / f"{family}-{backend}.json", work / f"{family}-{backend}.npy"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", backend, "--family", family,
               "--model", str(model), "--latents", str(latents), "--result", str(result), "--image", str(image),
               "--size", str(args.size), "--reps", str(args.reps), "--tokens", str(args.tokens)]  # fmt: skip
    run(command, f"{family}: {backend}, {args.size}x{args.size}, 1 warm-up + {args.reps} calls")
    return {**json.loads(result.read_text()), "image": str(image)}


def bench_family(family: str, args, work: Path) -> dict[str, Any]:
    depth = (args.sd3_layers,) if family == "sd3" else tuple(args.flux_blocks)
    source, package = work / f"{family}-source", work / f"{family}-package"
    built = build_source(family, source, args.tiny, depth)
    export_s = None
    if not (package / "model_index.json").is_file():
        command = [sys.executable, "-m", "diffrt", "export", str(source), str(package), "--force"]
        command += ["--static", f"{args.size}x{args.size}", "--batch", "1"]
        export_s = run(command, f"{family}: diffrt export")
    config = built["transformer"]
    f = 2 ** (len((TINY["vae"] if args.tiny else VAE)["block_out_channels"]) - 1)
    side = args.size // f
    shape = (1, 16, side, side) if family == "sd3" else (1, (side // 2) ** 2, config["in_channels"])
    latents = work / f"{family}-latents.npy"
    np.save(latents, np.random.default_rng(0).standard_normal(shape, dtype=np.float32))
    rows = {b: measure(family, b, source if b == "diffusers" else package, work, args, latents)
            for b in ("diffusers", "diffrt")}  # fmt: skip
    theirs, ours = (np.load(rows[b]["image"]) for b in ("diffusers", "diffrt"))
    lower = {b: min(r["calls_s"]) for b, r in rows.items()}
    return {
        "build": built,
        "export_s": export_s,
        "rows": rows,
        "ratios": {
            "end_to_end": round(lower["diffusers"] / lower["diffrt"], 2),
            "load": round(rows["diffusers"]["load_s"] / rows["diffrt"]["load_s"], 2),
            "peak_rss": round(rows["diffusers"]["peak_rss_gb"] / rows["diffrt"]["peak_rss_gb"], 2),
        },
        "max_pixel_diff": float(np.abs(theirs - ours).max()),
    }


def cpu_model() -> str:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.machine())


def report(results: dict[str, Any], args) -> str:
    lines = [f"## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} — {args.size}x{args.size}, "
             f"{'tiny models' if args.tiny else 'SD3-medium / FLUX.1-schnell architectures'}", "",
             f"Machine: {cpu_model()}, {os.cpu_count()} cores, Python "
             f"{platform.python_version()}. Ratios diffusers / diffrt (above 1: diffrt faster or smaller); "
             "end to end: the lower of the measured calls.", "",
             "| family | transformer | steps | diffusers s | diffrt s | end to end | load | peak RSS GB (diffusers / "
             "diffrt) | max pixel diff |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for family, r in results.items():
        t = r["build"]["transformer"]
        depth = f"{t['num_layers']} layers" if family == "sd3" else f"{t['num_layers']}+{t['num_single_layers']} blocks"
        d, o = r["rows"]["diffusers"], r["rows"]["diffrt"]
        lines.append(
            f"| {family} | {depth}, {r['build']['parameters']['transformer'] / 1e9:.2f} B params | "
            f"{FAMILIES[family]['steps']} | {min(d['calls_s']):.2f} | {min(o['calls_s']):.2f} | "
            f"**{r['ratios']['end_to_end']}×** | {r['ratios']['load']}× | {d['peak_rss_gb']:.2f} / "
            f"{o['peak_rss_gb']:.2f} | {r['max_pixel_diff']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(ROOT / "build" / "bench" / "mmdit"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128, help="T5 tokens per prompt (max_sequence_length)")
    parser.add_argument("--sd3-layers", type=int, default=8)
    parser.add_argument("--flux-blocks", type=int, nargs=2, default=(2, 4), metavar=("DOUBLE", "SINGLE"))
    parser.add_argument("--families", default="sd3,flux")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", help="results JSON (default benchmarks/results/mmdit.json)")
    for name in ("--child", "--family", "--model", "--latents", "--result", "--image"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = {family: bench_family(family, args, work) for family in args.families.split(",")}
    text = report(results, args)
    print(text)
    out = Path(args.out) if args.out else (work if args.tiny else BENCH / "results") / "mmdit.json"
    out.write_text(json.dumps({"settings": vars(args), "results": results}, indent=1, default=str) + "\n")
    if not args.tiny:
        history = BENCH / "MMDIT.md"
        head = history.read_text() if history.is_file() else "# SD3 and Flux on the CPU: diffrt beside diffusers\n\n"
        history.write_text(head + "\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

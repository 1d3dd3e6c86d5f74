"""LoRA at run time on an SD 1.5-size package: what slots cost per UNet step, and what switching adapters costs.

Builds the Stable Diffusion 1.5 architecture with random weights (``sd15.py``), two PEFT adapters on every linear
layer of the UNet's transformer blocks and the text encoder's attention (rank 8 and rank 64, random with a realistic
spread), and exports the folder twice: plainly, and with ``--lora-slots``. Then, all in one run:

1. **UNet step** (ONNX Runtime CPU, the pipeline's engine settings, batch 2 as under guidance) at 256x256 and
   512x512: the unslotted package; the slotted one with no adapter (rank 0), with the rank-8 adapter, with the
   rank-64 one; and the rank-8 adapter fed through ``onnxruntime.LoraAdapter`` (``RunOptions.add_active_adapter``)
   instead of plain feeds. The five are timed round-robin (one warm-up, then ``REPEATS`` rounds), so a change in the
   machine's load hits all of them alike; each is reported by its fastest and median round.
2. **Switching adapters**: diffrt's ``load_lora_weights`` + ``set_adapters`` + building the feeds the next call
   runs with; switching between already loaded adapters; against ``diffrt lora apply`` of the same adapter to the
   unslotted package, and against diffusers' ``load_lora_weights`` + ``set_adapters`` on its pipeline (children).
3. **diffusers' own per-step cost of an unfused adapter** (its UNet at 256x256, with and without the rank-8 adapter
   active), for reference.

    python benchmarks/bench_lora_runtime.py [WORKDIR]    # default build/bench-lora; results/lora_runtime.json
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sd15 import TEXT_ATTENTION_TARGETS, build_lora, build_source  # the script's folder is on sys.path

ROOT = Path(__file__).resolve().parent.parent
REPEATS = int(os.environ.get("REPEATS", "3"))
SIZES = (256, 512)
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]


def child(code: str) -> dict:
    """Run ``code`` (which sets ``RESULT``) in a fresh interpreter; its result. (No peak RSS: a child forked from this
    process, which holds two SD 1.5 pipelines, inherits its high-water mark in ``ru_maxrss``.)"""
    wrapper = "import json, time\n" + code + "\nprint(json.dumps(RESULT))\n"
    out = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def export(source: Path, out: Path, slots: int | None) -> float:
    if (out / "diffrt.json").is_file():
        return float("nan")
    code = (
        "from diffrt.export.package import ExportOptions, export_package\n"
        "from diffrt.export.source import load_source\n"
        "start = time.perf_counter()\n"
        f"export_package(load_source({str(source)!r}), {str(out)!r}, ExportOptions(lora_slots={slots!r}, force=True))\n"
        "RESULT = {'seconds': time.perf_counter() - start}"
    )
    return child(code)["seconds"]


def unet_feeds(size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "sample": rng.standard_normal((2, 4, size // 8, size // 8), dtype=np.float32),
        "timestep": np.full((2,), 500.0, dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 768), dtype=np.float32),
    }


def ort_adapter(feeds: dict[str, np.ndarray], folder: Path):
    """The feeds written as an ONNX Runtime adapter file and loaded as ``onnxruntime.LoraAdapter``."""
    import onnxruntime as ort

    start = time.perf_counter()
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    fmt.set_parameters({name: ort.OrtValue.ortvalue_from_numpy(value) for name, value in feeds.items()})
    path = folder / "adapter.onnx_adapter"
    fmt.export_adapter(str(path))
    adapter = ort.LoraAdapter()
    adapter.Load(str(path))
    options = ort.RunOptions()
    options.add_active_adapter(adapter)
    return options, adapter, time.perf_counter() - start


def step_times(plain: Path, slotted: Path, adapters: dict[str, Path], scratch: Path) -> dict:
    from diffrt.runtime import StableDiffusionPipeline

    base = StableDiffusionPipeline.from_pretrained(plain, provider="cpu")
    pipe = StableDiffusionPipeline.from_pretrained(slotted, provider="cpu")
    for name, path in adapters.items():
        pipe.load_lora_weights(str(path), adapter_name=name)
    feeds = {name: pipe.adapter_feeds({name: 1.0}).of("unet") for name in adapters}
    options, _keep, adapter_seconds = ort_adapter(feeds["rank8"], scratch)
    results: dict = {"ort_lora_adapter_prepare_s": adapter_seconds}
    for size in SIZES:
        inputs = unet_feeds(size)
        runs = {
            "unslotted": lambda x=inputs: base.unet.run(x, ["out_sample"]),
            "slotted_rank0": lambda x=inputs: pipe.unet.run(x, ["out_sample"]),
            "slotted_rank8": lambda x=inputs: pipe.unet.run({**x, **feeds["rank8"]}, ["out_sample"]),
            "slotted_rank64": lambda x=inputs: pipe.unet.run({**x, **feeds["rank64"]}, ["out_sample"]),
            "slotted_rank8_ort_lora_adapter": lambda x=inputs: pipe.unet.session.run(["out_sample"], x, options),
        }
        reference = runs["slotted_rank8"]()["out_sample"]
        via_adapter = runs["slotted_rank8_ort_lora_adapter"]()[0]
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(REPEATS):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
        row = {name: {"min_s": min(t), "median_s": statistics.median(t), "all_s": t} for name, t in times.items()}
        for name in runs:
            row[name]["over_unslotted"] = row[name]["min_s"] / row["unslotted"]["min_s"]
        row["ort_lora_adapter_max_abs_diff_from_feeds"] = float(np.abs(reference - via_adapter).max())
        results[f"{size}x{size}"] = row
        print(json.dumps({size: {k: round(v["min_s"], 3) for k, v in row.items() if isinstance(v, dict)}}))
    return results


def switch_times(slotted: Path, adapters: dict[str, Path]) -> dict:
    """diffrt: load + set_adapters + the feeds of the next call; then switching among loaded adapters."""
    code = (
        "from diffrt.runtime import StableDiffusionPipeline\n"
        f"pipe = StableDiffusionPipeline.from_pretrained({str(slotted)!r}, provider='cpu')\n"
        "RESULT = {}\n"
        f"for name, path in { ({k: str(v) for k, v in adapters.items()})!r}.items():\n"
        "    start = time.perf_counter()\n"
        "    pipe.load_lora_weights(path, adapter_name=name)\n"
        "    pipe.set_adapters(name)\n"
        "    pipe.adapter_feeds()\n"
        "    RESULT[f'load_set_{name}_s'] = time.perf_counter() - start\n"
        "for label, names in (('rank8', ['rank8']), ('rank64', ['rank64']), ('both', ['rank8', 'rank64'])):\n"
        "    pipe.set_adapters(names, [0.7] * len(names))\n"
        "    start = time.perf_counter(); pipe.adapter_feeds(); first = time.perf_counter() - start\n"
        "    start = time.perf_counter(); pipe.adapter_feeds(); again = time.perf_counter() - start\n"
        "    RESULT[f'switch_{label}_first_s'], RESULT[f'switch_{label}_cached_s'] = first, again\n"
    )
    return child(code)


def apply_time(plain: Path, adapter: Path, out: Path) -> dict:
    code = (
        "from diffrt.runtime.lora import LoraSpec\nfrom diffrt.export.lora_package import apply_loras\n"
        "start = time.perf_counter()\n"
        f"apply_loras({str(plain)!r}, {str(out)!r}, (LoraSpec.parse({str(adapter)!r}),), force=True)\n"
        "RESULT = {'seconds': time.perf_counter() - start}"
    )
    return child(code)


def diffusers_times(source: Path, adapters: dict[str, Path]) -> dict:
    """diffusers: load_lora_weights + set_adapters per adapter, switching, and its UNet step with an adapter."""
    code = (
        "import torch\nfrom diffusers import StableDiffusionPipeline\n"
        "torch.set_num_threads(len(__import__('os').sched_getaffinity(0)))\n"
        f"pipe = StableDiffusionPipeline.from_pretrained({str(source)!r}, torch_dtype=torch.float32)\n"
        "RESULT = {}\n"
        "g = torch.Generator().manual_seed(0)\n"
        "sample, hidden = torch.randn(2, 4, 32, 32, generator=g), torch.randn(2, 77, 768, generator=g)\n"
        "def step():\n"
        "    start = time.perf_counter()\n"
        "    with torch.no_grad(): pipe.unet(sample, 500, hidden)\n"
        "    return time.perf_counter() - start\n"
        "step()\n"
        f"RESULT['unet_step_256_plain_s'] = min(step() for _ in range({REPEATS}))\n"
        f"for name, path in { ({k: str(v) for k, v in adapters.items()})!r}.items():\n"
        "    start = time.perf_counter()\n"
        "    pipe.load_lora_weights(path, adapter_name=name)\n"
        "    pipe.set_adapters(name)\n"
        "    RESULT[f'load_set_{name}_s'] = time.perf_counter() - start\n"
        "for label, names in (('rank8', ['rank8']), ('rank64', ['rank64']), ('both', ['rank8', 'rank64'])):\n"
        "    start = time.perf_counter(); pipe.set_adapters(names, [0.7] * len(names))\n"
        "    RESULT[f'switch_{label}_s'] = time.perf_counter() - start\n"
        "pipe.set_adapters('rank8')\n"
        "step()\n"
        f"RESULT['unet_step_256_rank8_s'] = min(step() for _ in range({REPEATS}))\n"
    )
    return child(code)


def main() -> int:
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "build" / "bench-lora"
    work.mkdir(parents=True, exist_ok=True)
    source = build_source(work / "sd15-random")
    adapters = {
        "rank8": build_lora(source, work / "adapter-rank8", 8, 1, UNET_TARGETS, TEXT_ATTENTION_TARGETS),
        "rank64": build_lora(source, work / "adapter-rank64", 64, 2, UNET_TARGETS, TEXT_ATTENTION_TARGETS),
    }
    plain, slotted = work / "plain", work / "slotted"
    results: dict = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line), "?"),
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "repeats": REPEATS,
    }
    results["export_plain_s"] = export(source, plain, None)
    results["export_slotted_s"] = export(source, slotted, 128)
    results["package_bytes"] = {
        name: sum(p.stat().st_size for p in (folder / "unet").glob("model.onnx*"))
        for name, folder in (("plain", plain), ("slotted", slotted))
    }
    with tempfile.TemporaryDirectory() as scratch:
        results["unet_step"] = step_times(plain, slotted, adapters, Path(scratch))
    results["diffrt_switch"] = switch_times(slotted, adapters)
    results["lora_apply_rank8"] = apply_time(plain, adapters["rank8"], work / "applied")
    results["diffusers"] = diffusers_times(source, adapters)
    out = ROOT / "benchmarks" / "results" / "lora_runtime.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Interoperability with Optimum's ONNX export, checked by hand (not part of `make test`): `make interop-optimum`.

Optimum needs transformers 4.x and diffusers 0.35, which cannot share the test environment (transformers 5.17 there),
so this runs in two interpreters:

    python optimum_interop.py ours WORKDIR      # test venv: tiny source, diffrt package, diffusers reference image
    python optimum_interop.py theirs WORKDIR    # optimum venv: Optimum runs our package; Optimum exports the source
    python optimum_interop.py compare WORKDIR   # test venv: images equal, Optimum's graphs fit diffrt's contracts,
                                                # diffrt's runtime runs both packages to diffusers' image
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

PROMPT = "a red bicycle"
STEPS = 3


def ours(work: Path) -> None:
    import torch
    from diffusers import StableDiffusionPipeline

    from diffrt.export.package import export_package
    from diffrt.export.source import load_source
    from diffrt.export.tiny import build_tiny_sd

    source = build_tiny_sd(work / "source")
    export_package(load_source(source), work / "package")
    latents = np.random.default_rng(0).standard_normal((1, 4, 16, 16)).astype(np.float32)
    np.save(work / "latents.npy", latents)
    pipe = StableDiffusionPipeline.from_pretrained(source, safety_checker=None)
    image = pipe(PROMPT, num_inference_steps=STEPS, latents=torch.from_numpy(latents), output_type="np").images
    np.save(work / "diffusers.npy", image)


def theirs(work: Path) -> None:
    import torch
    from optimum.exporters.onnx import main_export
    from optimum.onnxruntime import ORTStableDiffusionPipeline

    pipe = ORTStableDiffusionPipeline.from_pretrained(work / "package")
    latents = torch.from_numpy(np.load(work / "latents.npy"))
    image = pipe(PROMPT, num_inference_steps=STEPS, latents=latents, output_type="np", height=64, width=64).images
    np.save(work / "optimum.npy", image)
    main_export(str(work / "source"), str(work / "optimum-package"), task="text-to-image")
    # Optimum on its own export: the reference for diffrt's runtime reading that folder. (Its text encoder does not
    # hold the source's weights: transformers 4 does not read transformers 5's CLIP key names, so it initialises
    # the encoder at random. The comparison is still exact: both runtimes run the same graphs.)
    own = ORTStableDiffusionPipeline.from_pretrained(work / "optimum-package")
    image = own(PROMPT, num_inference_steps=STEPS, latents=latents, output_type="np", height=64, width=64).images
    np.save(work / "optimum-own.npy", image)


def compare(work: Path) -> None:
    import onnxruntime as ort

    from diffrt.runtime import networks

    diff = float(np.abs(np.load(work / "optimum.npy") - np.load(work / "diffusers.npy")).max())
    print(f"Optimum running the diffrt package vs diffusers on the source: max abs diff {diff:.2e}")
    assert diff < 2e-3, diff
    root = work / "optimum-package"
    config = {p: json.loads((root / p / "config.json").read_text()) for p in ("unet", "vae_decoder", "text_encoder")}
    scale = networks.vae_scale_factor(config["vae_decoder"])
    contracts = {
        "unet": networks.unet_network(config["unet"], scale),
        "vae_encoder": networks.vae_encoder_network(config["vae_decoder"], scale),
        "vae_decoder": networks.vae_decoder_network(config["vae_decoder"], scale),
        "text_encoder": networks.text_encoder_network(config["text_encoder"]),
    }
    for name, contract in contracts.items():
        session = ort.InferenceSession(str(root / name / "model.onnx"), providers=["CPUExecutionProvider"])
        inputs = [(i.name, i.type) for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        want = [(t.name, "tensor(int64)" if t.dtype == "int64" else "tensor(float)") for t in contract.inputs]
        assert inputs == want, (name, inputs, want)
        assert outputs[: len(contract.outputs)] == contract.output_names[: len(outputs)], (name, outputs)
        print(f"Optimum's {name}: inputs {inputs} and outputs {outputs} fit diffrt's contract")

    from diffrt.runtime import StableDiffusionPipeline

    latents = np.load(work / "latents.npy")
    runs = (
        ("the diffrt package", work / "package", "diffusers on the source", "diffusers.npy"),
        ("Optimum's package", root, "Optimum on its package", "optimum-own.npy"),
    )
    for label, package, reference_label, reference in runs:
        pipe = StableDiffusionPipeline.from_pretrained(package, provider="cpu")
        pipe.set_progress_bar_config(disable=True)
        image = pipe(PROMPT, num_inference_steps=STEPS, latents=latents, output_type="np").images
        diff = float(np.abs(image - np.load(work / reference)).max())
        print(f"diffrt's runtime on {label} vs {reference_label}: max abs diff {diff:.2e}")
        assert diff < 2e-3, (label, diff)


if __name__ == "__main__":
    step, work = sys.argv[1], Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    {"ours": ours, "theirs": theirs, "compare": compare}[step](work)

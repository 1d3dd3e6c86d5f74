"""The runtime imports and works in an interpreter where torch (and the test oracles) cannot be imported."""

import json
import subprocess
import sys
import textwrap

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        BLOCKED = {"torch", "torchvision", "diffusers", "transformers", "scipy", "accelerate"}

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    """
)


def run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


def test_blocker_really_blocks_torch():
    result = run_blocked("import torch")
    assert result.returncode != 0 and "blocked" in result.stderr


def test_runtime_imports_and_runs_without_torch(tokenizer_folders):
    folder = str(tokenizer_folders["sd1-vocab-merges"])
    result = run_blocked(
        f"""
        import json, sys
        import numpy as np
        import diffrt, diffrt.cli
        import diffrt.runtime
        from diffrt.runtime import CLIPTokenizer, SCHEDULERS
        from diffrt.export.clip_vocab import clip_vocab_and_merges  # torch-free part of export
        from diffrt.runtime import networks  # shape contracts: read by the runtime too
        # The GPU side: timing hooks, the CUDA driver wrapper, TensorRT plan bookkeeping, the engines CLI, fp16 pass.
        import diffrt.runtime.timing, diffrt.runtime.engines.cuda, diffrt.runtime.engines.trt_plans
        import diffrt.runtime.engines.cli, diffrt.kernels.fp16
        assert networks.vae_decoder_network({{"latent_channels": 4}}, 8).shapes(1, 64, 64)["sample"] == (1, 3, 64, 64)
        ran = []
        configs = {{"UnCLIPScheduler": {{"beta_schedule": "squaredcos_cap_v2"}}}}
        for name, cls in sorted(SCHEDULERS.items()):
            sd_betas = {{"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}}
            config = {{**sd_betas, **configs.get(name, {{}})}}
            s = cls.from_config(config)
            s.set_timesteps(4, **({{"intermediate_timesteps": None}} if name == "SCMScheduler" else {{}}))
            x = np.ones((1, 4, 8, 8), np.float32) * np.float32(s.init_noise_sigma)
            short = name in ("DDPMWuerstchenScheduler", "SCMScheduler")  # their pipelines stop one short
            timesteps = s.timesteps[:-1] if short else s.timesteps
            x0 = None
            for i, t in enumerate(timesteps):
                out = 0.1 * s.scale_model_input(x, t)
                if name == "CogVideoXDPMScheduler":  # CogVideoX's pipeline passes the previous x0 and timestep
                    x, x0 = s.step(out, x0, t, timesteps[i - 1] if i else None, x, generator=0)
                elif name == "ScoreSdeVeScheduler":  # predictor-corrector: the predictor half
                    x = s.step_pred(out, t, x, generator=0).prev_sample
                else:
                    x = s.step(out, t, x, generator=0).prev_sample
            assert np.isfinite(x).all(), name
            ran.append(name)
        ids = CLIPTokenizer.from_pretrained({folder!r})("a cat").input_ids[0, :4].tolist()
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers", "scipy"))
        print(json.dumps({{"ran": ran, "ids": ids, "heavy": heavy}}))
        """
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    assert report["ids"] == [49406, 320, 2368, 49407]
    from diffrt.runtime import SCHEDULERS

    assert report["ran"] == sorted(SCHEDULERS)


def test_cli_help_without_torch():
    result = run_blocked("from diffrt.cli import main; raise SystemExit(main(['--help']))")
    assert result.returncode == 0, result.stderr
    for command in ("info", "schedulers", "tokenize", "export", "generate", "engines"):
        assert command in result.stdout


def test_an_image_is_generated_where_torch_cannot_be_imported(packages, tmp_path):
    out = tmp_path / "astronaut.png"
    result = run_blocked(
        f"""
        import json, sys
        from diffrt.runtime import StableDiffusionPipeline, AutoPipelineForInpainting
        from diffrt.runtime.schedulers import DPMSolverMultistepScheduler
        pipe = StableDiffusionPipeline.from_pretrained({str(packages["sd1"])!r})
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
        image = pipe("a photograph of an astronaut riding a horse", num_inference_steps=3, generator=0).images[0]
        image.save({str(out)!r})
        inpaint = AutoPipelineForInpainting.from_pipe(pipe)
        filled = inpaint("a horse", image=image, mask_image=image.convert("L"), num_inference_steps=2).images[0]
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers", "scipy"))
        print(json.dumps({{"size": list(image.size), "filled": list(filled.size), "heavy": heavy}}))
        """
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"size": [32, 32], "filled": [32, 32], "heavy": []}
    assert out.stat().st_size > 0


def test_sdxl_base_and_refiner_generate_where_torch_cannot_be_imported(sdxl_packages):
    result = run_blocked(
        f"""
        import json, sys
        from diffrt.runtime import AutoPipelineForImage2Image, AutoPipelineForText2Image
        base = AutoPipelineForText2Image.from_pretrained({str(sdxl_packages["sdxl"])!r})
        refiner = AutoPipelineForImage2Image.from_pretrained({str(sdxl_packages["sdxl_refiner"])!r})
        prompt = "a photograph of an astronaut riding a horse"
        latents = base(prompt, num_inference_steps=4, denoising_end=0.5, output_type="latent", generator=0).images
        image = refiner(prompt, image=latents, num_inference_steps=4, denoising_start=0.5, generator=0).images[0]
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers", "scipy"))
        print(json.dumps({{"classes": [type(base).__name__, type(refiner).__name__], "size": list(image.size),
                           "heavy": heavy}}))
        """
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {
        "classes": ["StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline"],
        "size": [64, 64],
        "heavy": [],
    }


def test_lora_adapters_load_and_switch_where_torch_cannot_be_imported(tiny_models, lora_files, tmp_path):
    from diffrt.export.package import ExportOptions, export_package
    from diffrt.export.source import load_source

    package = export_package(load_source(tiny_models["sd1"]), tmp_path / "slotted", ExportOptions(lora_slots=16)).path
    result = run_blocked(
        f"""
        import json, sys
        import numpy as np
        from diffrt.runtime import StableDiffusionPipeline
        pipe = StableDiffusionPipeline.from_pretrained({str(package)!r})
        pipe.load_lora_weights({str(lora_files["kohya_locon_bf16"])!r}, adapter_name="locon")
        pipe.load_lora_weights({str(lora_files["peft_both"])!r}, adapter_name="peft")
        pipe.set_adapters(["locon", "peft"], [0.3, 0.8])
        kwargs = dict(prompt="a red cube", num_inference_steps=2, generator=0, output_type="np")
        both, base = pipe(**kwargs).images, pipe(**kwargs, adapters={{}}).images
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers", "scipy"))
        print(json.dumps({{"changed": bool(np.abs(both - base).max() > 0.01), "heavy": heavy,
                           "active": pipe.get_active_adapters()}}))
        """
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"changed": True, "heavy": [], "active": ["locon", "peft"]}


def test_the_server_runs_without_torch(packages):
    package = str(packages["sd1"])
    result = run_blocked(
        f"""
        import sys
        from fastapi.testclient import TestClient
        from diffrt.serve import ServeConfig, create_app
        import diffrt.serve.ray  # Ray Serve's side too
        app = create_app({{"tiny": {package!r}}}, ServeConfig(max_batch=2))
        with TestClient(app) as client:  # runs the lifespan: models load, then shut down
            while client.get("/readyz").status_code != 200:
                pass
            answer = client.post("/v1/images/generations", json={{"prompt": "a cat", "size": "32x32", "steps": 2}})
            assert answer.status_code == 200, answer.text
        blocked = [m for m in ("torch", "diffusers", "transformers") if m in sys.modules]
        print("ok", blocked)
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok []" in result.stdout


def test_videos_are_generated_where_torch_cannot_be_imported(tmp_path):
    """CogVideoX text-, image- and video-to-video, tiled decoding and a .gif/.mp4 written, with torch blocked."""
    from fixtures import tiny_cogvideox as tc

    from diffrt.export.package import ExportOptions, export_package
    from diffrt.export.source import load_source

    t2v = export_package(load_source(tc.build_cogvideox_5b(tmp_path / "5b")), tmp_path / "p5b", ExportOptions()).path
    i2v = export_package(load_source(tc.build_cogvideox15(tmp_path / "15")), tmp_path / "p15", ExportOptions()).path
    result = run_blocked(
        f"""
        import json, sys
        from diffrt.runtime import (CogVideoXPipeline, CogVideoXImageToVideoPipeline,
                                    CogVideoXVideoToVideoPipeline, export_to_video, load_video)
        pipe = CogVideoXPipeline.from_pretrained({str(t2v)!r}, stage_memory="low")
        pipe.vae.enable_tiling(tile_sample_min_height=48, tile_sample_min_width=40)
        video = pipe("a ball", num_frames=9, num_inference_steps=2, use_dynamic_cfg=True, generator=0).frames[0]
        export_to_video(video, {str(tmp_path / "t2v.gif")!r}, fps=8)
        export_to_video(video, {str(tmp_path / "t2v.mp4")!r}, fps=8)
        v2v = CogVideoXVideoToVideoPipeline.from_pipe(pipe)
        again = v2v(video=load_video({str(tmp_path / "t2v.gif")!r}), prompt="a ball", num_inference_steps=2,
                    generator=1).frames[0]
        i2v = CogVideoXImageToVideoPipeline.from_pretrained({str(i2v)!r})
        moved = i2v(image=video[0], prompt="a ball", num_frames=9, num_inference_steps=2, generator=2).frames[0]
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers", "scipy"))
        print(json.dumps({{"frames": [len(video), len(again), len(moved)], "read": len(load_video(
            {str(tmp_path / "t2v.mp4")!r})), "size": list(video[0].size), "heavy": heavy}}))
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"frames": [9, 9, 9], "read": 9, "size": [32, 32], "heavy": []}


def test_a_package_is_quantized_where_torch_cannot_be_imported(packages, tmp_path):
    out = tmp_path / "int8"
    result = run_blocked(
        f"""
        import json, sys
        from diffrt.cli import main
        status = main(["quantize", {str(packages["sd1"])!r}, {str(out)!r}, "--calibration-steps", "1"])
        from diffrt.runtime import StableDiffusionPipeline
        pipe = StableDiffusionPipeline.from_pretrained({str(out)!r})
        image = pipe("a cat", num_inference_steps=2, generator=0).images[0]
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers", "scipy"))
        print(json.dumps({{"status": status, "size": list(image.size), "heavy": heavy}}))
        """
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"status": 0, "size": [32, 32], "heavy": []}
    assert json.loads((out / "diffrt.json").read_text())["quantization"]["networks"]["unet"]["quantized_nodes"] > 0


def test_sd3_and_flux_generate_where_torch_cannot_be_imported(mmdit_packages, tmp_path):
    """Every SD3 / Flux pipeline (text-to-image, image-to-image, inpainting) and `diffrt generate`, torch blocked."""
    out = tmp_path / "flux.png"
    result = run_blocked(
        f"""
        import json, sys
        import numpy as np, PIL.Image
        from diffrt.runtime import (AutoPipelineForImage2Image, AutoPipelineForInpainting,
                                    StableDiffusion3Pipeline, FluxPipeline)
        from diffrt.cli import main
        sizes = []
        for pipe in (StableDiffusion3Pipeline.from_pretrained({str(mmdit_packages["sd3"])!r}),
                     FluxPipeline.from_pretrained({str(mmdit_packages["flux_dev"])!r})):
            kwargs = dict(height=32, width=32, num_inference_steps=2, max_sequence_length=16, generator=0)
            image = pipe("a cat", **kwargs).images[0]
            again = AutoPipelineForImage2Image.from_pipe(pipe)("a cat", image=image, strength=0.5, **kwargs).images[0]
            mask = PIL.Image.fromarray(np.triu(np.full((32, 32), 255, np.uint8)))
            inpaint = AutoPipelineForInpainting.from_pipe(pipe)
            filled = inpaint("a dog", image=image, mask_image=mask, **kwargs).images[0]
            sizes += [list(image.size), list(again.size), list(filled.size)]
        code = main(["generate", {str(mmdit_packages["flux_schnell"])!r}, "a cat", "--size", "32x32", "--steps", "2",
                     "--out", {str(out)!r}])
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers", "scipy"))
        print(json.dumps({{"sizes": sizes, "code": code, "heavy": heavy}}))
        """
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"sizes": [[32, 32]] * 6, "code": 0, "heavy": []}
    assert out.stat().st_size > 0

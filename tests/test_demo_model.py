"""The bundled demo model (models/digits) end to end: exported, run by the torch-free runtime, judged by a classifier.

No training happens here: the committed weights are exported once per module, then the runtime draws digits that
a classifier trained on scikit-learn's digits must recognise as the prompted ones, and the "bold strokes" LoRA must
measurably thicken the strokes at weight 1 and change nothing at weight 0.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from fixtures.digits import WORDS, to_sklearn, train_classifier

MODEL = Path(__file__).resolve().parents[1] / "models" / "digits"
LORA = MODEL / "bold_lora.safetensors"
TINY_VAE = MODEL / "vae_tiny"  # distilled from the KL VAE by `make train-tiny-vae`
PER_DIGIT = 8  # half with the numeral ("a handwritten digit 7"), half with the word ("a handwritten seven")
STEPS, GUIDANCE, BATCH = 20, 4.0, 10


def _prompts() -> tuple[list[str], np.ndarray]:
    prompts, labels = [], []
    for i in range(PER_DIGIT):
        for d in range(10):
            prompts.append(f"a handwritten digit {d}" if i % 2 == 0 else f"a handwritten {WORDS[d]}")
            labels.append(d)
    return prompts, np.array(labels)


def ink_coverage(images: np.ndarray) -> float:
    """Fraction of pixels darker than mid-grey."""
    return float((images.astype(np.float64).mean(axis=-1) < 127.5).mean())


def ink_per_image(images: np.ndarray) -> np.ndarray:
    return 1.0 - images.astype(np.float64).mean(axis=(1, 2, 3)) / 255.0


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """The demo model exported as it is (with its tiny VAE as the preview decoder), with its LoRA at weight 1, and
    at weight 0."""
    from diffrt.export.package import ExportOptions, export_package
    from diffrt.export.source import load_source
    from diffrt.export.vae_swap import add_preview_vae
    from diffrt.runtime.lora import LoraSpec

    root = tmp_path_factory.mktemp("digits")
    source = load_source(MODEL)
    out = {}
    for name, loras in (("base", ()), ("bold", (LoraSpec(LORA, 1.0),)), ("bold0", (LoraSpec(LORA, 0.0),))):
        out[name] = root / name
        chosen = add_preview_vae(source, TINY_VAE) if name == "base" else source
        export_package(chosen, out[name], ExportOptions(batch=BATCH, check=False, loras=loras))
    return out


@pytest.fixture(scope="module")
def classifier():
    """The judge (see fixtures/digits.py)."""
    return train_classifier()


@pytest.fixture(scope="module")
def generated(packages):
    """80 prompted digits from the base package and from the bold one (same prompts and seeds)."""
    from diffrt.runtime.demo import generate
    from diffrt.runtime.pipelines import StableDiffusionPipeline

    prompts, labels = _prompts()
    images = {}
    for name in ("base", "bold"):
        pipe = StableDiffusionPipeline.from_pretrained(packages[name], provider="cpu")
        pipe.set_progress_bar_config(disable=True)
        images[name] = generate(pipe, prompts, STEPS, GUIDANCE, seed=0, batch=BATCH)
    return images, labels


def test_committed_weights_are_small_fp16_and_kohya():
    from diffrt.export.weights import read_safetensors_header
    from diffrt.runtime.lora import read_lora

    files = sorted(MODEL.rglob("*.safetensors"))
    assert {f.relative_to(MODEL).as_posix() for f in files} == {
        "bold_lora.safetensors",
        "text_encoder/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "vae_tiny/diffusion_pytorch_model.safetensors",
    }
    assert sum(f.stat().st_size for f in files) < 15 * 2**20
    for f in files:
        assert {t.dtype for t in read_safetensors_header(f).tensors.values()} == {"F16"}, f
    index = json.loads((MODEL / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    adapter = read_lora(LORA)
    assert adapter.format == "kohya" and set(adapter.modules) == {"unet"}


def test_generated_digits_are_the_prompted_ones(generated, classifier):
    images, labels = generated
    model, held_out = classifier
    assert held_out >= 0.95  # the judge itself is sound
    predicted = model.predict(to_sklearn(images["base"]))
    accuracy = float((predicted == labels).mean())
    per_digit = [float((predicted[labels == d] == d).mean()) for d in range(10)]
    print(f"classifier: held-out {held_out:.3f}; generated {accuracy:.3f}; per digit {per_digit}")
    assert len(labels) >= 80
    assert accuracy >= 0.8, f"only {accuracy:.1%} of generated digits were recognised (per digit: {per_digit})"


def test_tiny_vae_decodes_generated_digits_as_recognisably_as_the_kl_vae(packages, classifier):
    """The fast decode: models/digits/vae_tiny (here the base package's preview decoder) against the KL VAE, on the
    same 80 generated latents: the judge's accuracy within 2 points, pixels close."""
    import time

    from diffrt.runtime.pipelines import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(packages["base"], provider="cpu")
    pipe.set_progress_bar_config(disable=True)
    prompts, labels = _prompts()
    calls = [(i, prompts[s : s + BATCH]) for i, s in enumerate(range(0, len(prompts), BATCH))]
    kwargs = dict(num_inference_steps=STEPS, guidance_scale=GUIDANCE, output_type="latent")
    latents = np.concatenate([pipe(chunk, generator=i, **kwargs).images for i, chunk in calls])
    decoders = {"kl": lambda x: pipe.decode_latents(x, "np").images, "tiny": lambda x: pipe.decode_preview(x, "np")}
    seconds, decoded = {}, {}
    for name, decode in decoders.items():
        decode(latents[:BATCH])  # sessions made and warm
        start = time.perf_counter()
        images = np.concatenate([decode(latents[s : s + BATCH]) for s in range(0, len(latents), BATCH)])
        decoded[name] = (images * 255.0).round().clip(0, 255).astype(np.uint8)
        seconds[name] = time.perf_counter() - start
    model = classifier[0]
    accuracy = {name: float((model.predict(to_sklearn(images)) == labels).mean()) for name, images in decoded.items()}
    difference = np.abs(decoded["tiny"].astype(int) - decoded["kl"].astype(int))
    print(
        f"tiny VAE: accuracy {accuracy['tiny']:.3f} vs KL {accuracy['kl']:.3f}; pixel difference mean "
        f"{difference.mean():.2f} max {difference.max()} (of 255); decode of 80: KL {seconds['kl'] * 1e3:.0f} ms, "
        f"tiny {seconds['tiny'] * 1e3:.0f} ms"
    )
    assert accuracy["tiny"] >= accuracy["kl"] - 0.02
    assert difference.mean() <= 8


def test_bold_lora_thickens_strokes_and_weight_zero_changes_nothing(packages, generated, classifier):
    from diffrt.runtime.demo import generate
    from diffrt.runtime.pipelines import StableDiffusionPipeline

    images, labels = generated
    base, bold = ink_coverage(images["base"]), ink_coverage(images["bold"])
    accuracy = float((classifier[0].predict(to_sklearn(images["bold"])) == labels).mean())
    print(f"ink coverage: base {base:.3f}, LoRA x1.0 {bold:.3f} ({bold / base:.2f}x); bold recognised {accuracy:.3f}")
    # The LoRA's data has 1.36x the ink of the base data (3x3 dilation); the LoRA gets about 1.2x of it across.
    assert bold >= 1.15 * base
    per_image = ink_per_image(images["bold"]) > ink_per_image(images["base"])
    print(f"images with more ink under the LoRA: {per_image.mean():.1%}")
    assert per_image.mean() >= 0.9, f"only {per_image.mean():.0%} of the images got bolder"
    assert accuracy >= 0.6  # still the prompted digits, only bolder

    prompts = _prompts()[0][:BATCH]
    pipe = StableDiffusionPipeline.from_pretrained(packages["bold0"], provider="cpu")
    pipe.set_progress_bar_config(disable=True)
    zero = generate(pipe, prompts, STEPS, GUIDANCE, seed=0, batch=BATCH)
    difference = np.abs(zero.astype(int) - images["base"][:BATCH].astype(int)).max()
    print(f"LoRA x0.0: largest pixel difference from the base images {difference}")
    assert difference <= 1


BLOCK_TORCH = """
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "transformers", "diffusers"}:
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Block())
from diffrt.runtime.demo import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_demo_grid_torch_free(packages, tmp_path):
    out = tmp_path / "demo.png"
    argv = [str(packages["base"]), str(packages["bold"]), "--labels", "base", "bold", "--out", str(out)]
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(BLOCK_TORCH), *argv], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout and "unet" in result.stdout
    import PIL.Image

    with PIL.Image.open(out) as image:
        assert image.width > image.height > 2 * 32

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# ONNX Runtime engines cache optimized graphs; tests keep that cache out of the user's home, in a folder removed
# when the session ends (each session's graphs take hundreds of MB).
if "DIFFRT_CACHE" not in os.environ:
    os.environ["DIFFRT_CACHE"] = tempfile.mkdtemp(prefix="diffrt-test-cache-")
    atexit.register(shutil.rmtree, os.environ["DIFFRT_CACHE"], True)

# Test helpers (parity harness, fixture builders) import by module name.
sys.path.insert(0, str(Path(__file__).parent / "schedulers"))
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "export"))
sys.path.insert(0, str(Path(__file__).parent / "runtime"))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Folders of tiny random-weight pipelines saved by diffusers: sd1, sd2, inpaint, depth, ddpm."""
    from fixtures import tiny_models as tm

    root = tmp_path_factory.mktemp("tiny_models")
    return {
        "sd1": tm.build_sd1(root),
        "sd2": tm.build_sd2(root),
        "inpaint": tm.build_inpaint(root),
        "depth": tm.build_depth(root),
        "ddpm": tm.build_ddpm(root),
    }


@pytest.fixture(scope="session")
def sdxl_models(tmp_path_factory):
    """Folders of tiny SDXL pipelines saved by diffusers: sdxl (base), sdxl_inpaint (9 channels), sdxl_refiner."""
    from fixtures import tiny_models as tm

    root = tmp_path_factory.mktemp("sdxl_models")
    return {
        "sdxl": tm.build_sdxl(root),
        "sdxl_inpaint": tm.build_sdxl_inpaint(root),
        "sdxl_refiner": tm.build_sdxl_refiner(root),
    }


@pytest.fixture(scope="session")
def sdxl_packages(sdxl_models, tmp_path_factory):
    """Engine packages exported (ONNX, dynamic shapes) from each tiny SDXL fixture."""
    from diffrt.export.package import export_package
    from diffrt.export.source import load_source

    root = tmp_path_factory.mktemp("sdxl_packages")
    return {kind: export_package(load_source(folder), root / kind).path for kind, folder in sdxl_models.items()}


@pytest.fixture(scope="session")
def tokenizer_folders(tmp_path_factory):
    """CLIP tokenizer folders in both forms diffusers folders come in, for both padding conventions."""
    from transformers import CLIPTokenizer

    from diffrt.export.clip_vocab import write_clip_tokenizer

    root = tmp_path_factory.mktemp("tokenizers")
    folders = {
        "sd1-vocab-merges": write_clip_tokenizer(root / "sd1_classic"),
        "sd2-vocab-merges": write_clip_tokenizer(root / "sd2_classic", pad_token="!"),
    }
    for name, source in list(folders.items()):  # transformers 5 re-saves as tokenizer.json + tokenizer_config.json
        target = root / name.replace("vocab-merges", "tokenizer-json")
        CLIPTokenizer.from_pretrained(source).save_pretrained(target)
        folders[name.replace("vocab-merges", "tokenizer-json")] = target
    return folders


@pytest.fixture(scope="session")
def packages(tiny_models, tmp_path_factory):
    """Engine packages exported (ONNX, dynamic shapes) from each tiny fixture: sd1, sd2, inpaint, depth, ddpm."""
    from diffrt.export.package import export_package
    from diffrt.export.source import load_source

    root = tmp_path_factory.mktemp("packages")
    return {kind: export_package(load_source(folder), root / kind).path for kind, folder in tiny_models.items()}


@pytest.fixture(scope="session")
def lora_files(tiny_models, tmp_path_factory):
    """LoRA files for the tiny SD1 pipeline in every format diffrt reads: {name: path} (see fixtures/loras.py)."""
    from fixtures.loras import build_loras

    return build_loras(tiny_models["sd1"], tmp_path_factory.mktemp("loras"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: with pytest -n 2 on two cores, more torch threads per worker only fight over the cores.
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def mmdit_models(tmp_path_factory):
    """Folders of tiny SD3 / Flux pipelines saved by diffusers: sd3 (SD3.0-style, with T5), sd35 (qk norm, a
    dual-attention layer, saved without T5), flux_dev (guidance embedding, dynamic shift), flux_schnell."""
    from fixtures import tiny_mmdit as tm

    root = tmp_path_factory.mktemp("mmdit_models")
    return {
        "sd3": tm.build_sd3(root, "sd3", seed=100),
        "sd35": tm.build_sd3(root, "sd35", seed=110, sd35=True, t5=False),
        "flux_dev": tm.build_flux(root, "flux_dev", seed=200, dev=True),
        "flux_schnell": tm.build_flux(root, "flux_schnell", seed=300, dev=False),
    }


@pytest.fixture(scope="session")
def mmdit_packages(mmdit_models, tmp_path_factory):
    """Engine packages exported (ONNX, dynamic shapes, checked against torch) from each tiny SD3 / Flux fixture."""
    from diffrt.export.package import export_package
    from diffrt.export.source import load_source

    root = tmp_path_factory.mktemp("mmdit_packages")
    return {kind: export_package(load_source(folder), root / kind).path for kind, folder in mmdit_models.items()}

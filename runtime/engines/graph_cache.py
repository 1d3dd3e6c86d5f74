"""ONNX Runtime's graph cache: each graph as prepared for this machine, kept so the next start skips the work.

Two kinds of entry, each a folder named after the network and a key over what it depends on:

- ``<cache>/ort/<network>-<key>/``: the CPU provider's optimized graph, its weights prepacked for the CPU kernels
  (:func:`cached_graph_folder`); ONNX Runtime writes it while it builds the session (:func:`start_entry`);
- ``<cache>/fp16/<network>-<key>/``: the graph converted to fp16 for the CUDA provider
  (:func:`converted_graph_folder`; made by :mod:`.ort_cuda`).

Both are written in a hidden staging folder and published whole; whichever writer finishes first wins
(:func:`publish_entry`). Attention fusion (:func:`fused_graph`) runs before either, so entries hold the fused graph.

Keys and checks are by content, not by path and modification time: a package graph replaced by another of the same
size with its times kept (``cp -p``, ``rsync -t``, an archive) gets a new entry, and each entry records the digests
of its own files, verified when it is used; an entry that no longer matches (flipped bytes, a truncated copy) is
dropped with a warning and built again. :func:`file_digest` hashes files up to 64 MiB in full (graph structure,
small weights). Larger weight files get a sampled digest: their size, their first and last MiB, and 256 blocks of
64 KiB spread evenly. That costs ~20 ms where a full hash of SD 1.5's 3.4 GB would cost seconds at every start; it
can miss a change confined to the bytes between samples of such a file (a deliberate edit of a few weights), not a
replaced or truncated file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import shutil
from pathlib import Path
from types import ModuleType

import onnxruntime

from ...staging import publish_folder, staging_folder
from ..schema import EXTERNAL_DATA_FILE
from .base import MODEL_FILE, SessionSettings, logger, network_name

# ONNX Runtime's CPU provider: the only one whose optimized sessions are cached (GPU providers optimize for the
# device at hand).
CPU = "CPUExecutionProvider"
CACHE_SOURCE_FILE = "source.json"  # which graph file an entry was made from


def cached_graph_folder(model: Path, provider: str, settings: SessionSettings) -> Path | None:
    """Where the optimized form of ``model`` is cached for this provider, machine and onnxruntime; None when off.

    The key covers what the optimized graph depends on: the graph's files (path, size, modification time), the
    onnxruntime version, the optimization level and the CPU's instruction sets (level "all" picks kernels and
    layouts for them). Only the CPU provider's sessions are cached: GPU providers optimize for the device at hand
    (their fp16 graphs are cached by :func:`converted_graph_folder`).
    """
    if settings.cache_path is None or provider != CPU or settings.graph_optimization == "disable":
        return None
    parts = [onnxruntime.__version__, provider, settings.graph_optimization, _cpu_flags()]
    attention = attention_pass() if settings.fuse_attention else None
    if attention is not None:  # the fused graph is another graph; unfused keys stay as they were
        parts.append(f"fuse_attention-{attention.PASS_VERSION}")
    return _keyed_folder(settings.cache_path / "ort", model, parts)


def converted_graph_folder(model: Path, settings: SessionSettings, fp16_version: str, fused: bool) -> Path | None:
    """Where ``model`` converted to fp16 (attention fused first when ``fused``) is cached; None when caching is off.

    The conversion does not depend on the GPU or the onnxruntime version, only on the graph and the passes."""
    if settings.cache_path is None:
        return None
    parts = ["fp16", f"fp16-{fp16_version}"]
    if fused:
        parts.append(f"fuse_attention-{attention_pass().PASS_VERSION}")
    return _keyed_folder(settings.cache_path / "fp16", model, parts)


def _keyed_folder(root: Path, model: Path, parts: list[str]) -> Path:
    key = hashlib.sha256()
    for part in parts:
        key.update(part.encode() + b"\0")
    for file in sorted(model.parent.glob(model.name + "*")):
        key.update(f"{file.name}|{file_digest(file)}".encode() + b"\0")
    return root / f"{network_name(model)}-{key.hexdigest()[:20]}"


FULL_HASH_BYTES = 64 * 2**20
SAMPLES, SAMPLE_BYTES, EDGE_BYTES = 256, 64 * 1024, 2**20


def file_digest(path: Path) -> str:
    """A digest of ``path``'s content: SHA-256 of the whole file up to 64 MiB, else of its size, first and last MiB
    and 256 evenly spread 64 KiB blocks (see the module's docstring for what that can miss)."""
    size = path.stat().st_size
    digest = hashlib.sha256(f"{size}\0".encode())
    with open(path, "rb") as f:
        if size <= FULL_HASH_BYTES:
            for chunk in iter(lambda: f.read(2**20), b""):
                digest.update(chunk)
            return f"sha256:{digest.hexdigest()}"
        offsets = [0, size - EDGE_BYTES] + [i * (size - SAMPLE_BYTES) // (SAMPLES - 1) for i in range(SAMPLES)]
        for offset, length in zip(offsets, [EDGE_BYTES, EDGE_BYTES] + [SAMPLE_BYTES] * SAMPLES):
            f.seek(offset)
            digest.update(f.read(length))
    return f"sampled-sha256:{digest.hexdigest()}"


def _manifest(folder: Path) -> dict[str, str]:
    return {file.name: file_digest(file) for file in sorted(folder.glob(MODEL_FILE + "*")) if file.is_file()}


def usable_entry(folder: Path, name: str) -> bool:
    """Whether the cache entry ``folder`` exists and its files still match the digests recorded when it was made;
    an entry that does not (damaged, truncated, or from an older diffrt) is removed with a warning."""
    if not (folder / MODEL_FILE).is_file():
        return False
    try:
        recorded = json.loads((folder / CACHE_SOURCE_FILE).read_text())["files"]
        current = _manifest(folder)
    except (OSError, ValueError, KeyError, TypeError):
        recorded, current = None, {}
    if recorded == current:
        return True
    logger.warning(
        "%s: dropping the unusable cached graph %s (its files no longer match the digests recorded when it was "
        "made); building it again",
        name,
        folder,
    )
    shutil.rmtree(folder, ignore_errors=True)
    return False


@functools.cache
def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def attention_pass() -> ModuleType | None:
    """``diffrt.kernels.attention`` where it can run, else None: it needs the onnx package, which onnxruntime
    does not bring; its absence costs memory, not correctness, so it is a warning (once per process)."""
    try:
        from ...kernels import attention
    except ImportError as error:
        if error.name != "onnx":
            raise
        logger.warning(
            "SessionSettings.fuse_attention needs the onnx package (pip install onnx); graphs run on the CPU "
            "provider with attention unfused, which takes more memory at large image sizes"
        )
        return None
    return attention


def fused_graph(model: Path, name: str) -> bytes | None:
    """``model`` with its attention fused into MultiHeadAttention, serialized without its
    weights (they stay in the original external data file); None when there is nothing to fuse or no pass."""
    attention = attention_pass()
    if attention is None:
        return None
    import onnx  # present: the pass imports it

    try:
        graph = onnx.load(str(model), load_external_data=False)
    except Exception as error:  # ONNX Runtime then reads the file itself and says what is wrong with it
        logger.debug("%s: not fusing attention, onnx could not read %s: %s", name, model, error)
        return None
    try:
        fused, count = attention.fuse_attention(graph)
    except Exception as error:  # a failing pass must not stop the graph from running; unfused is always correct
        logger.warning(
            "%s: attention fusion failed (%s: %s); running the graph unfused", name, type(error).__name__, error
        )
        return None
    if not count:
        return None
    logger.info("%s: %d attention blocks fused into MultiHeadAttention", name, count)
    return fused.SerializeToString()


def new_entry(folder: Path, doing: str) -> Path | None:
    """A staging folder for the cache entry ``folder``; None (with a warning that the work goes on ``doing``) when
    the cache is not writable."""
    try:
        return staging_folder(folder)
    except OSError as error:
        logger.warning("graph cache %s is not writable (%s); %s", folder.parent, error, doing)
        return None


def start_entry(folder: Path, options: onnxruntime.SessionOptions) -> Path | None:
    """Ask ONNX Runtime to write the optimized graph, with its weights prepacked, into a staging folder for the
    cache entry ``folder``; the folder, to :func:`publish_entry` once the session is built, or None."""
    staging = new_entry(folder, "continuing without it")
    if staging is None:
        return None
    options.optimized_model_filepath = str(staging / MODEL_FILE)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", EXTERNAL_DATA_FILE)
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    options.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
    return staging


def publish_entry(staging: Path, folder: Path, model: Path) -> None:
    """Publish the staging folder under its key (all or nothing; another process may have won the race), and drop
    entries made for earlier versions of the same graph file, so re-exports do not fill the cache."""
    source = str(model.resolve())
    try:
        if (staging / MODEL_FILE).is_file() and not folder.exists():
            record = {"model": source, "files": _manifest(staging)}
            (staging / CACHE_SOURCE_FILE).write_text(json.dumps(record, indent=1) + "\n")
            if publish_folder(staging, folder, replace=False):
                for entry in folder.parent.glob(folder.name.rsplit("-", 1)[0] + "-*"):
                    if entry != folder and _cache_source(entry) == source:
                        shutil.rmtree(entry, ignore_errors=True)
            return
    except OSError as error:
        logger.warning("could not store the optimized graph in %s: %s", folder, error)
    shutil.rmtree(staging, ignore_errors=True)


def _cache_source(entry: Path) -> str | None:
    try:
        return json.loads((entry / CACHE_SOURCE_FILE).read_text()).get("model")
    except (OSError, ValueError, AttributeError):
        return None

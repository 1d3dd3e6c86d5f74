"""LoRA adapters read and fused in NumPy, with the numbers of diffusers' ``load_lora_weights`` + ``fuse_lora``.

Three file formats are read (safetensors through :func:`~diffrt.runtime.safetensors_file.read_safetensors_numpy`;
pickles only at export, where torch is, through the ``pickle_loader`` export hands in), and state dicts given as
mappings of arrays (diffusers' ``load_lora_weights(dict)``):

* ``"peft"``: diffusers / PEFT keys ``unet.<module>.lora_A.weight`` and ``.lora_B.weight`` (also
  ``text_encoder.``). Per-module scale ``lora_alpha / r`` comes from the LoraConfig diffusers stores in the
  safetensors metadata (``lora_adapter_metadata``: ``lora_alpha``, ``alpha_pattern`` matched the way PEFT matches
  it, ``use_rslora``). Without that metadata diffusers uses ``alpha == rank`` for every module: scale 1.
* ``"attn-procs"``: the attention-processor keys of older diffusers (``...attn1.processor.to_q_lora.down.weight``,
  ``<module>.lora.down.weight``, ``<module>.lora_linear_layer.down.weight``). They carry no alpha: scale 1.
* ``"kohya"``: ``lora_unet_<path>`` / ``lora_te_<path>`` / ``lora_te1_<path>`` (the text encoder) /
  ``lora_te2_<path>`` (SDXL's second text encoder) with ``.lora_down.weight``, ``.lora_up.weight`` and ``.alpha``,
  LoCon conv layers included. Scale ``alpha / rank`` per module; a module without ``.alpha`` gets scale 1 (kohya's
  own rule, and diffusers' when the file has no alpha at all). Underscore names are resolved against the model's
  parameter names, never split by guesswork. For an SDXL UNet the names may also be in the LDM / SGM layout kohya
  trains SDXL in (``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``, ``middle_block``,
  ``output_blocks``, resnets' ``in_layers_2`` / ``out_layers_3`` / ``emb_layers_1`` / ``skip_connection``): those
  are looked up in a table of the model's own layers under their LDM names, built from its block structure.

:func:`lora_deltas` turns adapters into ``weight * scale * up @ down`` per model parameter, summed over adapters,
which is what ``set_adapters(names, adapter_weights=...)`` + ``fuse_lora()`` add to the weights. This module
never imports torch (pickled files excepted: reading them needs it).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CheckpointError
from .ldm_names import UNetBlocks, resnet_layers
from .safetensors_file import check_finite_tensors, file_sha256, read_safetensors_numpy

__all__ = [
    "LORA_FORMATS",
    "LoraAdapter",
    "LoraModule",
    "LoraSpec",
    "lora_deltas",
    "lora_from_tensors",
    "read_lora",
    "resolve_modules",
]

LORA_FORMATS = ("peft", "attn-procs", "kohya")
MAX_WEIGHT = 1000.0  # adapters are used near 1; a weight of 1e30 fuses into weights whose activations overflow

# Extensions of the weight files diffrt reads; pickles (all but the first) only at export, on request.
PICKLE_EXTENSIONS = (".ckpt", ".bin", ".pt", ".pth")
ACCEPTED_EXTENSIONS = (".safetensors", *PICKLE_EXTENSIONS)

# The file name diffusers' save_lora_weights writes, read when a folder is given.
DIFFUSERS_LORA_FILE = "pytorch_lora_weights.safetensors"

# kohya / A1111 key prefixes and the diffusers component each one names.
_KOHYA_PREFIXES = {
    "lora_unet_": "unet",
    "lora_te_": "text_encoder",
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
}
_KOHYA_SUFFIXES = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}

# First key segments that name a pipeline component in diffusers' LoRA files.
_COMPONENT_PREFIXES = ("unet", "text_encoder", "text_encoder_2", "transformer", "prior", "decoder")

# Keys of adapter types that are not plain LoRA (searched anywhere in a key), with the name users know them by.
_UNSUPPORTED = (
    (re.compile(r"\.lora_mid\."), "LoCon with Tucker decomposition (lora_mid)"),
    (re.compile(r"\.hada_"), "LoHa (hada_w1_a, hada_w2_b...)"),
    (re.compile(r"\.lokr_"), "LoKr (lokr_w1, lokr_w2...)"),
    (re.compile(r"\.dora_scale$"), "DoRA (dora_scale)"),
    (re.compile(r"lora_magnitude_vector"), "DoRA (lora_magnitude_vector)"),
    (re.compile(r"\.oft_"), "OFT (oft_blocks)"),
    (re.compile(r"\.on_input$"), "(IA)3 (on_input)"),
    (re.compile(r"\.[wb]_norm$"), "LyCORIS norm-layer (w_norm, b_norm)"),
    (re.compile(r"\.diff(_b)?$"), "LyCORIS full weight-difference (diff)"),
    (re.compile(r"\.[ab][12]\.weight$"), "GLoRA (a1, a2, b1, b2)"),
    (re.compile(r"\.lora_B\.bias$"), "LoRA-with-bias (lora_B.bias)"),
)

# Old diffusers attention-processor names: <attn>.processor.to_q_lora.down.weight and friends.
_ATTN_PROC_RE = re.compile(
    r"^(?P<parent>.+?)(?:\.processor)?\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<half>down|up)\.weight$"
)
_UNET_PROJ = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
_TEXT_PROJ = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}

# Which model family a width belongs to, for "this adapter is for another model" errors.
_CROSS_ATTENTION_FAMILIES = {768: "Stable Diffusion 1.x", 1024: "Stable Diffusion 2.x", 2048: "SDXL"}
_TEXT_WIDTH_FAMILIES = {768: "Stable Diffusion 1.x", 1024: "Stable Diffusion 2.x", 1280: "SDXL"}

# kohya keys in the LDM / SGM UNet layout, which diffusers only maps for SDXL (and so do we).
_SGM_MARKERS = ("input_blocks", "output_blocks", "middle_block")
# The parameter only SDXL's text_time UNet has among the families diffrt exports.
_SDXL_UNET_MARKER = "add_embedding.linear_1.weight"

# PEFT's LoraConfig default lora_alpha, used when diffusers' metadata leaves it out.
_PEFT_DEFAULT_ALPHA = 8.0


def _name(path: str | os.PathLike) -> str:
    return repr(str(path))


def _short(value: object, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 5] + "[...]"


def _listing(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(_short(item) for item in items[:limit])
    return shown if len(items) <= limit else f"{shown}, ..."


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# ---------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraSpec:
    """One ``--lora`` argument: a file and the weight its update is multiplied by."""

    path: Path
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """``"a.safetensors"`` or ``"a.safetensors:0.8"``; the last colon splits only before a number (``C:\\x``)."""
        if not isinstance(text, str) or not text.strip():
            raise CheckpointError(
                f"LoRA argument {text!r} names no file; accepted: FILE or FILE:WEIGHT, such as style.safetensors:0.8."
            )
        head, colon, tail = text.rpartition(":")
        if colon:
            try:
                weight = float(tail)
            except ValueError:
                weight = None
            # A path whose extension ends right before the colon meant a weight, so a bad one is an error.
            if weight is None and head.lower().endswith(ACCEPTED_EXTENSIONS):
                raise CheckpointError(
                    f"LoRA argument {text!r} has the weight {tail!r}, which is not a number; "
                    "accepted: FILE or FILE:WEIGHT with a finite number, such as style.safetensors:0.8."
                )
            if weight is not None:
                if not math.isfinite(weight) or abs(weight) > MAX_WEIGHT:
                    raise CheckpointError(
                        f"LoRA argument {text!r} has the weight {tail!r}; accepted: a finite number from "
                        f"-{MAX_WEIGHT:g} to {MAX_WEIGHT:g}, such as style.safetensors:0.8 (larger ones overflow "
                        "float32 activations)."
                    )
                if not head.strip():
                    raise CheckpointError(
                        f"LoRA argument {text!r} names no file before its weight; accepted: FILE or FILE:WEIGHT."
                    )
                return cls(Path(head), weight)
        return cls(Path(text))


@dataclass
class LoraModule:
    """One low-rank pair: ``delta = (alpha / rank) * up @ down``, reshaped to the weight it updates."""

    down: np.ndarray  # (rank, in) or conv (rank, in, kh, kw)
    up: np.ndarray  # (out, rank) or conv (out, rank, 1, 1)
    alpha: float | None  # None: scale 1 (alpha == rank)
    source: str = ""  # the module's name as the file spells it, for messages

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank

    def fits(self, shape: tuple[int, ...]) -> bool:
        """Whether ``up @ down`` can update a Linear ``(out, in)`` or Conv2d ``(out, in, kh, kw)`` weight."""
        shape = tuple(shape)
        up, down = self.up.shape, self.down.shape
        if len(shape) not in (2, 4) or len(up) not in (2, 4) or len(down) not in (2, 4):
            return False
        if up[0] != shape[0] or (len(up) == 4 and up[2:] != (1, 1)):
            return False
        if len(down) == 4 and len(shape) == 4:
            return down[1:] == shape[1:]
        # Linear and 1x1 convolutions are the same map, so either spelling fits either layer.
        if len(shape) == 4 and shape[2:] != (1, 1):
            return False
        if len(down) == 4 and down[2:] != (1, 1):
            return False
        return down[1] == shape[1]

    def product(self, shape: tuple[int, ...]) -> np.ndarray:
        """``up @ down`` (unscaled) as a float32 array of ``shape``; ValueError if it does not fit."""
        if not self.fits(shape):
            raise ValueError(
                f"LoRA module {self.source or '?'} (up {tuple(self.up.shape)}, down {tuple(self.down.shape)}) "
                f"does not fit a weight of shape {tuple(shape)}"
            )
        up = np.asarray(self.up, dtype=np.float32).reshape(self.up.shape[0], self.rank)
        down = np.asarray(self.down, dtype=np.float32).reshape(self.rank, -1)
        return (up @ down).reshape(shape)

    def delta(self, shape: tuple[int, ...]) -> np.ndarray:
        """``(alpha / rank) * up @ down`` reshaped to the Linear or Conv2d weight ``shape``, float32."""
        return self.product(shape) * np.float32(self.scale)


@dataclass
class LoraAdapter:
    """A LoRA file read into NumPy: component -> module name as the file has it -> :class:`LoraModule`."""

    path: Path
    sha256: str
    weight: float
    format: str  # one of LORA_FORMATS
    modules: dict[str, dict[str, LoraModule]]

    def count(self) -> int:
        return sum(len(modules) for modules in self.modules.values())


# ---------------------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------------------


def _as_spec(spec: LoraSpec | str | os.PathLike) -> LoraSpec:
    if isinstance(spec, LoraSpec):
        return spec
    if isinstance(spec, str):
        return LoraSpec.parse(spec)
    if isinstance(spec, os.PathLike):
        return LoraSpec(Path(spec))
    raise CheckpointError(f"LoRA argument {spec!r} is a {type(spec).__name__}; accepted: a path or LoraSpec.")


PickleLoader = Callable[[Path], dict[str, np.ndarray]]
"""Reads a pickled LoRA file into float32 arrays (export's, with torch); the runtime has none."""


def _pickle_refusal(path: Path) -> CheckpointError:
    return CheckpointError(
        f"LoRA file {_name(path)} is a pickle, which the torch-free runtime does not open (unpickling can run "
        "arbitrary code from the file, and needs torch); accepted: a LoRA file in safetensors format: convert it, "
        "or, if you trust its source, fuse it at export with `diffrt export SOURCE OUT --lora FILE --allow-pickle`."
    )


def _load_tensors(path: Path, pickle_loader: PickleLoader | None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return read_safetensors_numpy(path)
    if not path.exists():
        raise CheckpointError(f"LoRA file {_name(path)} does not exist.")
    if suffix in PICKLE_EXTENSIONS and pickle_loader is None:
        raise _pickle_refusal(path)
    if pickle_loader is not None:  # export's loader: its own refusal, checks and messages for pickles and the rest
        return pickle_loader(path), {}
    raise CheckpointError(
        f"LoRA file {_name(path)} has an extension diffrt does not read at run time; accepted: a safetensors file."
    )


def read_lora(spec: LoraSpec | str | os.PathLike, pickle_loader: PickleLoader | None = None) -> LoraAdapter:
    """Read a LoRA file (``"file"`` or ``"file:weight"``; a save_lora_weights folder too) into NumPy.

    Raises CheckpointError naming the file when it holds no LoRA weights, keys diffrt cannot read, an adapter
    type other than LoRA / LoCon (Tucker, LoHa, LoKr, DoRA...), or halves that do not pair up. Pickled files are
    read only through ``pickle_loader`` (export passes one that honours ``--allow-pickle``).
    """
    spec = _as_spec(spec)
    path = Path(spec.path)
    if path.is_dir():  # the folder diffusers' save_lora_weights writes
        if not (path / DIFFUSERS_LORA_FILE).is_file():
            raise CheckpointError(
                f"LoRA path {_name(path)} is a folder without {DIFFUSERS_LORA_FILE}; accepted: a LoRA file, "
                "or a folder written by diffusers' save_lora_weights."
            )
        path = path / DIFFUSERS_LORA_FILE
    tensors, metadata = _load_tensors(path, pickle_loader)
    fmt, modules = _parse(tensors, metadata, f"LoRA file {_name(path)}")
    return LoraAdapter(path=path, sha256=file_sha256(path), weight=float(spec.weight), format=fmt, modules=modules)


def lora_from_tensors(
    tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None, weight: float = 1.0
) -> LoraAdapter:
    """An adapter from a state dict held in memory (``{key: array}``, keys as a LoRA file has them), as diffusers'
    ``load_lora_weights(state_dict)`` takes it; arrays of any float dtype (or objects NumPy can convert)."""
    if not isinstance(tensors, Mapping) or not tensors:
        raise CheckpointError(
            f"LoRA state dict {type(tensors).__name__} is not accepted; accepted: a non-empty dict of arrays by key."
        )
    arrays: dict[str, np.ndarray] = {}
    for key, value in tensors.items():
        try:
            if hasattr(value, "detach") and hasattr(value, "float"):  # a torch tensor (any dtype), without torch here
                value = value.detach().float().cpu().numpy()
            array = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError, RuntimeError):
            raise CheckpointError(
                f"LoRA state dict entry {_short(key)} is a {type(value).__name__}, not an array; accepted: arrays."
            ) from None
        arrays[str(key)] = array
    check_finite_tensors(arrays, "LoRA state dict")
    fmt, modules = _parse(arrays, dict(metadata or {}), "LoRA state dict")
    return LoraAdapter(path=Path("<state dict>"), sha256="", weight=float(weight), format=fmt, modules=modules)


def _parse(
    tensors: dict[str, np.ndarray], metadata: dict[str, str], where: str
) -> tuple[str, dict[str, dict[str, LoraModule]]]:
    _refuse_unsupported(tensors, where)
    kohya = [key for key in tensors if key.startswith(tuple(_KOHYA_PREFIXES))]
    if kohya and len(kohya) == len(tensors):
        return "kohya", _parse_kohya(tensors, where)
    return _parse_diffusers(tensors, metadata, where)


def _refuse_unsupported(tensors: dict[str, np.ndarray], where: str) -> None:
    for marker, kind in _UNSUPPORTED:
        found = [key for key in tensors if marker.search(key)]
        if found:
            raise CheckpointError(
                f"{where} is a {kind} adapter (key {_short(found[0])}), which diffrt does not support; accepted: "
                "plain LoRA (lora_A/lora_B, lora_down/lora_up), LoCon conv layers included."
            )


def _no_lora(tensors: dict[str, np.ndarray], where: str) -> CheckpointError:
    keys = list(tensors)
    found = f"its first keys: {_listing(keys, 3)}" if keys else "it holds no tensors"
    return CheckpointError(
        f"{where} holds no LoRA weights ({found}); accepted: diffusers/PEFT (unet.*.lora_A.weight), "
        "attention-processor (*.to_q_lora.down.weight) or kohya (lora_unet_*, lora_te_*) keys."
    )


def _unrecognised(keys: list[str], where: str) -> CheckpointError:
    return CheckpointError(
        f"{where} has {_plural(len(keys), 'key')} that diffrt does not read as LoRA weights ({_listing(keys)}); "
        "accepted: one format per file, diffusers/PEFT (lora_A/lora_B), attention-processor (to_q_lora.down) "
        "or kohya (lora_unet_*/lora_te_* with lora_down/lora_up/alpha)."
    )


def _scalar(value: np.ndarray, key: str, where: str) -> float:
    if value.size != 1 or not np.isfinite(value).all():
        raise CheckpointError(
            f"{where} has an alpha {_short(key)} of shape {tuple(value.shape)} that is not one finite number; "
            "accepted: a single finite value."
        )
    return float(value.reshape(-1)[0])


def _parse_kohya(tensors: dict[str, np.ndarray], where: str) -> dict[str, dict[str, LoraModule]]:
    halves: dict[tuple[str, str], dict[str, Any]] = {}
    unknown = []
    for key, value in tensors.items():
        prefix = next(p for p in _KOHYA_PREFIXES if key.startswith(p))
        name, _, suffix = key[len(prefix) :].partition(".")
        if not name or suffix not in _KOHYA_SUFFIXES:
            unknown.append(key)
            continue
        parts = halves.setdefault((_KOHYA_PREFIXES[prefix], name), {"source": prefix + name})
        if _KOHYA_SUFFIXES[suffix] in parts:  # lora_te_x and lora_te1_x both naming one module
            raise CheckpointError(f"{where} has two {suffix} entries for the module {_short(key)}; accepted: one.")
        parts[_KOHYA_SUFFIXES[suffix]] = value
    if unknown:
        raise _unrecognised(unknown, where)
    modules: dict[str, dict[str, LoraModule]] = {}
    for (component, name), parts in halves.items():
        alpha = _scalar(parts["alpha"], parts["source"] + ".alpha", where) if "alpha" in parts else None
        module = _pair(parts, alpha, where)
        modules.setdefault(component, {})[name] = module
    if not modules:
        raise _no_lora(tensors, where)
    return modules


def _pair(parts: dict[str, Any], alpha: float | None, where: str) -> LoraModule:
    source = parts["source"]
    if "down" not in parts and "up" not in parts:
        raise CheckpointError(
            f"{where} has an alpha for the module {_short(source)} but neither of its halves; "
            "accepted: lora_down and lora_up weights beside every alpha."
        )
    if "down" not in parts or "up" not in parts:
        have, lack = ("down", "up") if "down" in parts else ("up", "down")
        raise CheckpointError(
            f"{where} has the {have} half of the LoRA module {_short(source)} but not its {lack} half; "
            "accepted: both halves of every module."
        )
    down, up = parts["down"], parts["up"]
    if down.ndim not in (2, 4) or up.ndim not in (2, 4) or down.shape[0] != up.shape[1] or down.shape[0] == 0:
        raise CheckpointError(
            f"{where} has a LoRA module {_short(source)} whose halves do not pair up (down {tuple(down.shape)}, "
            f"up {tuple(up.shape)}); accepted: down (rank, in[, kh, kw]) and up (out, rank[, 1, 1])."
        )
    return LoraModule(down=down, up=up, alpha=alpha, source=source)


def _split_component(key: str) -> tuple[str, str]:
    """(component, rest) of a diffusers key; unprefixed keys (older files) go to the UNet or the text encoder."""
    head, _, rest = key.partition(".")
    if head in _COMPONENT_PREFIXES and rest:
        return head, rest
    if key.startswith(("text_model.", "encoder.layers.")):
        return "text_encoder", key
    return "unet", key


def _diffusers_module(component: str, rest: str) -> tuple[str, str, str] | None:
    """(module path, half, format) of one diffusers key without its component prefix, or None."""
    for suffix, half in ((".lora_A.weight", "down"), (".lora_B.weight", "up")):
        if rest.endswith(suffix):
            return rest[: -len(suffix)], half, "peft"
    found = _ATTN_PROC_RE.match(rest)
    if found:
        projections = _TEXT_PROJ if component.startswith("text_encoder") else _UNET_PROJ
        module = f"{found['parent']}.{projections[found['proj']]}"
        return module, found["half"], "attn-procs"
    for marker in (".lora.", ".lora_linear_layer."):
        for half in ("down", "up"):
            suffix = f"{marker}{half}.weight"
            if rest.endswith(suffix):
                return rest[: -len(suffix)], half, "attn-procs"
    return None


def _parse_diffusers(
    tensors: dict[str, np.ndarray], metadata: dict[str, str], where: str
) -> tuple[str, dict[str, dict[str, LoraModule]]]:
    halves: dict[tuple[str, str], dict[str, Any]] = {}
    formats: set[str] = set()
    unknown = []
    for key, value in tensors.items():
        component, rest = _split_component(key)
        parsed = _diffusers_module(component, rest)
        if parsed is None:
            unknown.append(key)
            continue
        module, half, fmt = parsed
        # diffusers drops ".processor." from every key before matching modules.
        module = ".".join(part for part in module.split(".") if part != "processor")
        formats.add(fmt)
        prefix = key[: len(key) - len(rest)]
        parts = halves.setdefault((component, module), {"source": prefix + module})
        if half in parts:
            raise CheckpointError(
                f"{where} has two {half} weights for the module {_short(prefix + module)}; accepted: one per module."
            )
        parts[half] = value
    if not halves:
        raise _no_lora(tensors, where)
    if unknown:
        raise _unrecognised(unknown, where)
    configs = _adapter_configs(metadata, where)
    modules: dict[str, dict[str, LoraModule]] = {}
    for (component, module), parts in halves.items():
        pair = _pair(parts, None, where)
        pair.alpha = _configured_alpha(configs.get(component), component, module, pair.rank, where)
        modules.setdefault(component, {})[module] = pair
    return ("peft" if "peft" in formats else "attn-procs"), modules


# ---------------------------------------------------------------------------------------------------------------
# diffusers' LoraConfig metadata
# ---------------------------------------------------------------------------------------------------------------


def _adapter_configs(metadata: dict[str, str], where: str) -> dict[str, dict[str, Any]]:
    """The LoraConfig fields diffusers' save_lora_weights stores per component (``unet.lora_alpha``...)."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        packed = json.loads(raw)
    except (ValueError, RecursionError):
        packed = None
    if not isinstance(packed, dict):
        raise CheckpointError(
            f"{where} has lora_adapter_metadata that is not a JSON object; accepted: the LoraConfig fields "
            "diffusers' save_lora_weights writes."
        )
    configs: dict[str, dict[str, Any]] = {}
    for key, value in packed.items():
        component, dot, field_name = str(key).partition(".")
        if dot:
            configs.setdefault(component, {})[field_name] = value
    return configs


def _number(value: object, what: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CheckpointError(f"{where} has {what} = {_short(repr(value))} in its metadata; accepted: a number.")
    return float(value)


def _pattern_key(patterns: Iterable[str], key: str, where: str) -> str:
    """PEFT's get_pattern_key: the first pattern that matches a dot-separated suffix of ``key``, else ``key``."""
    for pattern in patterns:
        try:
            if re.match(rf"(.*\.)?({pattern})$", key):
                return pattern
        except re.error:
            raise CheckpointError(
                f"{where} has the alpha_pattern key {_short(pattern)}, which is not a valid regular expression; "
                "accepted: module names or patterns PEFT can match."
            ) from None
    return key


def _configured_alpha(
    config: dict[str, Any] | None, component: str, module: str, rank: int, where: str
) -> float | None:
    """Alpha diffusers would give this module; None (scale 1) when the file carries no LoraConfig for it."""
    if not config:
        return None
    if config.get("use_dora"):
        raise CheckpointError(
            f"{where} is a DoRA adapter (use_dora in its metadata), which diffrt does not support; "
            "accepted: plain LoRA."
        )
    alpha = _number(config.get("lora_alpha", _PEFT_DEFAULT_ALPHA), f"{component}.lora_alpha", where)
    patterns = config.get("alpha_pattern") or {}
    if not isinstance(patterns, dict):
        raise CheckpointError(f"{where} has a {component}.alpha_pattern that is not accepted (a JSON object).")
    # PEFT matches patterns against the module's name in the live model; transformers 5 CLIP has no text_model.
    current = module.removeprefix("text_model.") if component.startswith("text_encoder") else module
    matched = _pattern_key(patterns, current, where)
    if matched in patterns:
        alpha = _number(patterns[matched], f"{component}.alpha_pattern[{matched!r}]", where)
    if config.get("use_rslora"):
        return alpha * math.sqrt(rank)  # rsLoRA scales by alpha / sqrt(r); stored as the alpha giving that over r
    return alpha


# ---------------------------------------------------------------------------------------------------------------
# resolving modules against the model and building the deltas
# ---------------------------------------------------------------------------------------------------------------


class _Targets:
    """A component's weight names, looked up by module path (dotted) or by kohya's underscore form."""

    def __init__(self, component: str, shapes: dict[str, tuple[int, ...]]):
        self.component = component
        self.shapes = {name: tuple(shape) for name, shape in shapes.items()}
        self.text = component.startswith("text_encoder")
        self.dotted: dict[str, str] = {}
        self.underscored: dict[str, list[str]] = {}
        for name in self.shapes:
            if not name.endswith(".weight"):
                continue
            path = self._normal(name[: -len(".weight")])
            self.dotted.setdefault(path, name)
            forms = [path.replace(".", "_")]
            if self.text:  # kohya names keep transformers 4's text_model prefix
                forms.append("text_model_" + forms[0])
            for form in forms:
                self._add(form, name)
        self.ldm_names = component == "unet" and _SDXL_UNET_MARKER in self.shapes
        if self.ldm_names:  # kohya's SDXL trainer names the UNet's layers as the LDM UNet does
            for path, sgm in _sgm_paths(self.shapes).items():
                self._add(sgm.replace(".", "_"), f"{path}.weight")

    def _add(self, form: str, name: str) -> None:
        names = self.underscored.setdefault(form, [])
        if name not in names:
            names.append(name)

    def _normal(self, path: str) -> str:
        return path.removeprefix("text_model.") if self.text else path

    def resolve(self, key: str, kohya: bool) -> list[str]:
        """Parameter names ``key`` can mean: one when resolved, none when unknown, several when ambiguous."""
        if kohya:
            return self.underscored.get(key, [])
        found = self.dotted.get(self._normal(key))
        return [found] if found else []

    def width(self, endings: tuple[str, ...]) -> int | None:
        """Input width of the first weight whose name ends with one of ``endings`` (a model-family fingerprint)."""
        for name, shape in self.shapes.items():
            if name.endswith(endings) and len(shape) >= 2:
                return int(shape[1])
        return None


_BLOCK_RE = re.compile(r"^(?P<part>down_blocks|up_blocks)\.(?P<block>\d+)\.(?P<kind>resnets|attentions)\.(?P<i>\d+)\.")


def _unet_blocks(paths: Sequence[str]) -> UNetBlocks:
    """The block structure of the UNet whose module paths are ``paths``: resnets per down block, and which blocks
    have attentions."""
    resnets: dict[int, int] = {}  # down block -> number of resnets
    attention: dict[tuple[str, int], bool] = {}  # (down_blocks | up_blocks, block) -> whether it has attentions
    for path in paths:
        if found := _BLOCK_RE.match(path):
            block = (found["part"], int(found["block"]))
            attention[block] = attention.get(block, False) or found["kind"] == "attentions"
            if block[0] == "down_blocks" and found["kind"] == "resnets":
                resnets[block[1]] = max(resnets.get(block[1], 0), int(found["i"]) + 1)
    down = sorted(resnets)
    return UNetBlocks(
        layers=tuple(resnets[i] for i in down),
        down_attention=tuple(attention[("down_blocks", i)] for i in down),
        up_attention=tuple(has for (part, _), has in sorted(attention.items()) if part == "up_blocks"),
        mid_attention=any(path.startswith("mid_block.attentions.") for path in paths),
        added_embedding=any(path.startswith("add_embedding.") for path in paths),
    )


def _sgm_paths(names: Iterable[str]) -> dict[str, str]:
    """Diffusers module path -> the same layer's path in the LDM / SGM UNet, for every weight in ``names``
    (numbered as :mod:`~diffrt.export.ldm_names` describes, from the blocks the names show)."""
    paths = [name.removesuffix(".weight") for name in names if name.endswith(".weight")]
    modules = _unet_blocks(paths).modules()
    prefixes = {f"{module.diffusers}.": module for module in modules}
    resnet = dict(resnet_layers(shortcut=True))
    mapped = {}
    for path in paths:
        prefix = next((p for p in prefixes if f"{path}.".startswith(p)), None)
        if prefix is None:
            continue
        rest = path[len(prefix) :]
        if prefixes[prefix].kind == "resnet":
            rest = resnet.get(rest, rest)
        mapped[path] = f"{prefixes[prefix].ldm}.{rest}".rstrip(".")
    return mapped


_CROSS_ENDINGS = ("attn2.to_k", "attn2.to_v")
_TEXT_ENDINGS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.fc1")


def _widths(modules: dict[str, LoraModule], endings: tuple[str, ...]) -> set[int]:
    forms = endings + tuple(ending.replace(".", "_") for ending in endings)
    return {int(m.down.shape[1]) for key, m in modules.items() if key.endswith(forms) and m.down.ndim >= 2}


def _family_error(where: str, what: str, found: set[int], model: int, families: dict[int, str]) -> CheckpointError:
    width = sorted(found)[0]
    family = families.get(width)
    looks = f"looks like a {family} adapter" if family else "is for another model family"
    return CheckpointError(
        f"{where} {looks}: its {what} take {width}-wide inputs, but this model's take {model}; "
        "accepted: a LoRA trained for this model's family."
    )


def _check_family(adapter: LoraAdapter, index: dict[str, _Targets], where: str) -> None:
    for component in adapter.modules:
        if component in index:
            continue
        first = next(iter(adapter.modules[component].values())).source
        have = ", ".join(index) or "none"
        if component == "text_encoder_2":
            raise CheckpointError(
                f"{where} has text_encoder_2 modules (such as {_short(first)}), which only SDXL has, so it looks "
                f"like an SDXL adapter; accepted: a LoRA for this model, whose components are {have}."
            )
        if component == "transformer":
            raise CheckpointError(
                f"{where} has transformer modules (such as {_short(first)}), so it looks like an adapter for a "
                f"transformer model (SD3, Flux...); accepted: a LoRA for this model, whose components are {have}."
            )
        raise CheckpointError(
            f"{where} has {component} modules (such as {_short(first)}), a component this model does not have; "
            f"accepted: a LoRA for this model, whose components are {have}."
        )
    checks = (
        ("unet", _CROSS_ENDINGS, "cross-attention layers", _CROSS_ATTENTION_FAMILIES),
        ("text_encoder", _TEXT_ENDINGS, "text-encoder layers", _TEXT_WIDTH_FAMILIES),
        ("text_encoder_2", _TEXT_ENDINGS, "second text-encoder layers", _TEXT_WIDTH_FAMILIES),
    )
    for component, endings, what, families in checks:
        if component not in adapter.modules or component not in index:
            continue
        model = index[component].width(tuple(f"{ending}.weight" for ending in endings))
        found = _widths(adapter.modules[component], endings)
        if model is not None and found and found != {model}:
            raise _family_error(where, what, found, model, families)


def _unresolved_error(where: str, missing: list[str], ldm_names: bool) -> CheckpointError:
    hint = ""
    if not ldm_names and any(marker in key for key in missing for marker in _SGM_MARKERS):
        hint = " (their input_blocks / output_blocks names are the LDM layout that SDXL kohya files use)"
    verb = "matches" if len(missing) == 1 else "match"
    return CheckpointError(
        f"{where} has {_plural(len(missing), 'module')} that {verb} no layer of this model{hint}: "
        f"{_listing(missing)}; accepted: a LoRA trained for this model."
    )


def resolve_modules(
    adapter: LoraAdapter, targets: dict[str, dict[str, tuple[int, ...]]]
) -> dict[tuple[str, str], LoraModule]:
    """``adapter``'s modules by (component, parameter name) of the model whose parameter shapes are ``targets``.

    ``targets`` maps a component (``"unet"``, ``"text_encoder"``, ``"text_encoder_2"``) to ``{parameter name:
    shape}``; text-encoder names may carry transformers 4's ``text_model.`` prefix or not. Raises CheckpointError
    naming the adapter for modules of another model family, modules that match no layer (or several), or shapes
    that do not fit.
    """
    index = {component: _Targets(component, shapes) for component, shapes in targets.items()}
    where = f"LoRA file {_name(adapter.path)}"
    _check_family(adapter, index, where)
    kohya = adapter.format == "kohya"
    resolved: dict[tuple[str, str], LoraModule] = {}
    missing: list[str] = []
    for component, modules in adapter.modules.items():
        for key, module in modules.items():
            names = index[component].resolve(key, kohya)
            label = module.source or key
            if not names:
                missing.append(label)
                continue
            if len(names) > 1:
                raise CheckpointError(
                    f"{where} has the module {_short(label)}, whose underscore name fits several layers of "
                    f"this model ({_listing(names)}); accepted: names that fit one layer."
                )
            if (component, names[0]) in resolved:
                other = resolved[(component, names[0])].source
                raise CheckpointError(
                    f"{where} has two modules for the {component} parameter {names[0]} ({_short(other)} and "
                    f"{_short(label)}); accepted: one module per layer."
                )
            resolved[(component, names[0])] = module
    if missing:
        raise _unresolved_error(where, missing, "unet" in index and index["unet"].ldm_names)
    for (component, name), module in resolved.items():
        shape = index[component].shapes[name]
        if not module.fits(shape):
            raise CheckpointError(
                f"{where} has the module {_short(module.source)} with up {tuple(module.up.shape)} and down "
                f"{tuple(module.down.shape)}, which does not fit the model's {component} parameter {name} of "
                f"shape {shape}; accepted: a LoRA trained for this model."
            )
    return resolved


def lora_deltas(
    adapters: Sequence[LoraAdapter], targets: dict[str, dict[str, tuple[int, ...]]]
) -> tuple[dict[str, dict[str, np.ndarray]], list[dict[str, Any]]]:
    """Weight updates of ``adapters`` for the model whose parameter shapes are ``targets``, and one summary each.

    Returns ``deltas[component][name]``: the sum over adapters of ``weight * (alpha / rank) * up @ down``
    (float32, the parameter's shape), what diffusers' ``set_adapters`` + ``fuse_lora`` add; and
    ``[{"file", "sha256", "weight", "format", "modules"}]``. Raises what :func:`resolve_modules` raises.
    """
    deltas: dict[str, dict[str, np.ndarray]] = {}
    summaries: list[dict[str, Any]] = []
    for adapter in adapters:
        counts = {component: 0 for component in targets}
        for (component, name), module in resolve_modules(adapter, targets).items():
            shape = tuple(targets[component][name])
            # One float32 multiply by weight * alpha / rank, as PEFT's set_scale + merge do.
            update = module.product(shape) * np.float32(adapter.weight * module.scale)
            into = deltas.setdefault(component, {})
            into[name] = into[name] + update if name in into else update
            counts[component] += 1
        summaries.append(
            {
                "file": str(adapter.path),
                "sha256": adapter.sha256,
                "weight": adapter.weight,
                "format": adapter.format,
                "modules": counts,
            }
        )
    return deltas, summaries

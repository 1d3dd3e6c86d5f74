"""The real CLIP BPE vocabulary, rebuilt from the merges file open-clip-torch ships, as a diffusers tokenizer folder.

No model hub is reachable where diffrt is built and tested, so tokenizer folders are made from
``open_clip/bpe_simple_vocab_16e6.txt.gz`` (the merges OpenAI's CLIP was trained with). Torch-free.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
import json
import os
from pathlib import Path

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # CLIP keeps the first 48,894 merges of the file
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# What a transformers CLIPTextConfig over this vocabulary takes: its size, the ids of BOS and EOS (which pads), and
# the 77 positions of the tokenizer's model_max_length.
CLIP_TEXT_TOKENS = {
    "vocab_size": 49408,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
    "max_position_embeddings": 77,
}


def find_bpe_file() -> Path:
    """Locate open-clip-torch's merges file without importing open_clip (its import needs torchvision)."""
    try:
        for f in importlib.metadata.files("open_clip_torch") or []:
            if f.name == BPE_FILE:
                return Path(f.locate())
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec("open_clip")
    if spec and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / BPE_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{BPE_FILE} not found; install it with `pip install --no-deps open-clip-torch` (it ships the CLIP merges)."
    )


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode map: printable bytes map to themselves, the rest above 255."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def clip_vocab_and_merges(bpe_file: str | os.PathLike | None = None) -> tuple[dict[str, int], list[str]]:
    """CLIP's 49,408-entry vocabulary and its merges: byte units, their end-of-word forms, one token per merge,
    then the two special tokens."""
    path = Path(bpe_file) if bpe_file else find_bpe_file()
    lines = gzip.open(path, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : NUM_MERGES + 1]  # line 0 is a version header
    units = list(bytes_to_unicode().values())
    tokens = units + [u + "</w>" for u in units] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_clip_tokenizer(
    folder: str | os.PathLike,
    pad_token: str = EOS,
    model_max_length: int = 77,
    bpe_file: str | os.PathLike | None = None,
) -> Path:
    """Write a tokenizer folder in the classic diffusers form: vocab.json, merges.txt, special_tokens_map.json,
    tokenizer_config.json. ``pad_token`` is ``<|endoftext|>`` for SD 1.x and ``!`` for SD 2.x."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges(bpe_file)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {
        **special,
        "model_max_length": model_max_length,
        "tokenizer_class": "CLIPTokenizer",
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out

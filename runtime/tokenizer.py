"""CLIP tokenization with the ``tokenizers`` library, reading a diffusers ``tokenizer/`` folder in either form.

A folder holds either ``tokenizer.json`` (what transformers 5 writes) or ``vocab.json`` + ``merges.txt`` (older
diffusers folders), with ``tokenizer_config.json`` / ``special_tokens_map.json`` naming the special tokens. Like
transformers' ``CLIPTokenizer``, only the vocabulary and merges are taken from the files; the text pipeline is
CLIP's own: NFC, whitespace runs to one space, lower case, CLIP's word regex, byte-level BPE with ``</w>`` word
ends, ``<|startoftext|> ... <|endoftext|>`` around each prompt. Every special token, the padding token included, is
matched as a whole in the text (so SD 2.x's ``!`` padding token splits ``!!!`` into three tokens, as transformers
does). Prompts are padded to ``model_max_length`` (77) and truncated to it, warning with the text that was cut.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from .errors import ConfigError, PackageError

logger = logging.getLogger("diffrt.tokenizer")

CLIP_WORD_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
DEFAULT_SPECIALS = {
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>",
}


@dataclass
class TokenizedPrompts:
    """Token ids and attention masks of a batch of prompts."""

    input_ids: np.ndarray  # (batch, model_max_length) int64
    attention_mask: np.ndarray  # (batch, model_max_length) int64, 1 for real tokens (start and end included)


class CLIPTokenizer:
    """CLIP's tokenizer, torch-free. Build it with ``CLIPTokenizer.from_pretrained(package_or_tokenizer_dir)``."""

    def __init__(
        self,
        vocab: dict[str, int],
        merges: Sequence[str] | Sequence[tuple[str, str]],
        bos_token: str = DEFAULT_SPECIALS["bos_token"],
        eos_token: str = DEFAULT_SPECIALS["eos_token"],
        unk_token: str = DEFAULT_SPECIALS["unk_token"],
        pad_token: str = DEFAULT_SPECIALS["pad_token"],
        model_max_length: int = 77,
    ):
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
        for role, token in (("bos_token", bos_token), ("eos_token", eos_token), ("pad_token", pad_token)):
            if token not in vocab:
                raise ConfigError(f"{role}={token!r} is not in the tokenizer vocabulary; accepted: a vocabulary token.")
        tok = Tokenizer(
            BPE(
                vocab=vocab,
                merges=merges,
                continuing_subword_prefix="",
                end_of_word_suffix="</w>",
                fuse_unk=False,
                unk_token=unk_token,
            )
        )
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
        )
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(CLIP_WORD_PATTERN), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        specials = dict.fromkeys([pad_token, bos_token, eos_token, unk_token])  # ordered, unique
        tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
        self.bos_token_id = tok.token_to_id(bos_token)
        self.eos_token_id = tok.token_to_id(eos_token)
        self.pad_token_id = tok.token_to_id(pad_token)
        tok.post_processor = processors.RobertaProcessing(
            (eos_token, self.eos_token_id), (bos_token, self.bos_token_id), trim_offsets=False, add_prefix_space=False
        )
        self.bos_token, self.eos_token, self.unk_token, self.pad_token = bos_token, eos_token, unk_token, pad_token
        self.model_max_length = int(model_max_length)
        self.vocab_size = tok.get_vocab_size()
        self._tokenizer = tok

    # ----- loading ---------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, subfolder: str | None = "tokenizer") -> CLIPTokenizer:
        """Load from a tokenizer folder, or from a model/engine package holding ``<subfolder>/``."""
        folder = Path(path)
        if subfolder and (folder / subfolder).is_dir():
            folder = folder / subfolder
        if not folder.is_dir():
            raise PackageError(f"tokenizer folder {str(folder)!r} does not exist.")
        settings = {**DEFAULT_SPECIALS, "model_max_length": 77}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # later files override earlier ones
            data = _read_json(folder / name) if (folder / name).is_file() else {}
            for key in (*DEFAULT_SPECIALS, "model_max_length"):
                if data.get(key) is not None:
                    settings[key] = _token_text(data[key])
        if settings["model_max_length"] > 10**6:  # transformers' "unset" sentinel
            settings["model_max_length"] = 77
        vocab, merges = _read_vocab_and_merges(folder)
        for role in ("bos_token", "eos_token", "pad_token"):
            if settings[role] not in vocab:
                raise PackageError(
                    f"tokenizer folder {str(folder)!r}: its {role} {settings[role]!r} is not in the vocabulary; "
                    "accepted: a vocabulary holding CLIP's special tokens."
                )
        return cls(vocab, merges, **settings)

    # ----- tokenizing ------------------------------------------------------------------------------------------
    def __call__(self, prompts: str | Sequence[str], max_length: int | None = None) -> TokenizedPrompts:
        """Ids and masks padded and truncated to ``max_length`` (default ``model_max_length``), as diffusers asks
        transformers for them (``padding="max_length", truncation=True``). Warns with the text that was cut."""
        prompts = _as_prompt_list(prompts)
        length = max_length or self.model_max_length
        full = self._tokenizer.encode_batch(prompts)
        ids = np.full((len(prompts), length), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(prompts), length), dtype=np.int64)
        removed = []
        for row, encoding in enumerate(full):
            tokens = encoding.ids
            if len(tokens) > length:  # keep the start token, length - 2 text tokens, then the end token
                removed.append(self.decode(tokens[length - 1 : -1]))
                tokens = tokens[: length - 1] + [self.eos_token_id]
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        if removed:
            logger.warning(
                "The following part of your input was truncated because CLIP can only handle sequences up to "
                "%d tokens: %s",
                length,
                removed,
            )
        return TokenizedPrompts(ids, mask)

    def encode(self, prompt: str) -> list[int]:
        """Token ids of one prompt, start and end tokens included, neither padded nor truncated."""
        return self._tokenizer.encode(_as_prompt_list(prompt)[0]).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``, words separated by spaces (``</w>`` marks word ends)."""
        text = self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        return text.replace("</w>", " ").strip()

    def __repr__(self) -> str:
        return (
            f"CLIPTokenizer(vocab_size={self.vocab_size}, model_max_length={self.model_max_length}, "
            f"pad_token={self.pad_token!r})"
        )


def _as_prompt_list(prompts: str | Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, Sequence) and all(isinstance(p, str) for p in prompts):
        return list(prompts)
    raise ConfigError(f"prompt={prompts!r} is not supported; accepted: a string or a list of strings.")


def _token_text(value):
    return value["content"] if isinstance(value, dict) else value


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PackageError(f"tokenizer file {str(path)!r} is not valid JSON: {error}.") from None


def _read_vocab_and_merges(folder: Path) -> tuple[dict[str, int], list]:
    tokenizer_json = folder / "tokenizer.json"
    if tokenizer_json.is_file():
        model = _read_json(tokenizer_json).get("model", {})
        if model.get("type") != "BPE" or "vocab" not in model or "merges" not in model:
            raise PackageError(
                f"tokenizer file {str(tokenizer_json)!r} does not hold a BPE model with vocab and merges; "
                "accepted: a CLIP tokenizer.json."
            )
        return _checked(model["vocab"], model["merges"], tokenizer_json, tokenizer_json)
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    if vocab_file.is_file() and merges_file.is_file():
        try:
            lines = merges_file.read_text(encoding="utf-8").split("\n")
        except UnicodeDecodeError as error:
            raise PackageError(f"tokenizer file {str(merges_file)!r} is not UTF-8 text: {error}.") from None
        merges = [line for line in lines if line and not line.startswith("#version")]
        return _checked(_read_json(vocab_file), merges, vocab_file, merges_file)
    missing = [f.name for f in (vocab_file, merges_file) if not f.is_file()]
    raise PackageError(
        f"tokenizer folder {str(folder)!r} lacks {' and '.join(missing)}; accepted: tokenizer.json, or "
        "vocab.json with merges.txt."
    )


def _checked(vocab: object, merges: object, vocab_path: Path, merges_path: Path) -> tuple[dict[str, int], list]:
    """A vocabulary of token -> id and a non-empty list of merges whose parts and results are all in it; a
    PackageError naming the file otherwise (an empty merges file would tokenize character by character)."""
    if not isinstance(vocab, dict) or not vocab:
        raise PackageError(
            f"tokenizer file {str(vocab_path)!r} holds no vocabulary (an empty or non-object JSON); accepted: a "
            "CLIP vocabulary of token -> id."
        )
    bad = next((k for k, v in vocab.items() if not isinstance(v, int) or isinstance(v, bool) or v < 0), None)
    if bad is not None:
        raise PackageError(
            f"tokenizer file {str(vocab_path)!r} maps {bad!r} to {vocab[bad]!r}; accepted: token ids >= 0."
        )
    if not isinstance(merges, list) or not merges:
        raise PackageError(
            f"tokenizer file {str(merges_path)!r} holds no BPE merges, so every word would be split into single "
            "characters; accepted: CLIP's merges (merges.txt lines such as 'i n', or tokenizer.json's model.merges)."
        )
    for number, merge in enumerate(merges, start=1):
        pair = merge.split(" ") if isinstance(merge, str) else merge
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(isinstance(t, str) and t for t in pair):
            raise PackageError(
                f"tokenizer file {str(merges_path)!r}: merge {number} ({merge!r}) is not a pair of tokens; accepted: "
                "two tokens separated by one space."
            )
        missing = [t for t in (*pair, pair[0] + pair[1]) if t not in vocab]
        if missing:
            raise PackageError(
                f"tokenizer file {str(merges_path)!r}: merge {number} ({merge!r}) names {missing[0]!r}, which "
                f"{str(vocab_path)!r} lacks; accepted: merges and a vocabulary from the same tokenizer."
            )
    return vocab, merges

"""T5 tokenization with the ``tokenizers`` library, reading a ``tokenizer/`` folder that holds T5's tokenizer.json.

The folder is what transformers' ``T5TokenizerFast.save_pretrained`` writes: ``tokenizer.json``, with
``tokenizer_config.json`` and possibly ``special_tokens_map.json`` naming the special tokens. A folder holding only
SentencePiece's ``spiece.model`` is not read (that needs the sentencepiece library); transformers converts one once.

Like transformers 5's ``T5Tokenizer`` (what diffusers' CogVideoX pipelines load), only the Unigram vocabulary with
its scores, the SentencePiece character map (a ``Precompiled`` normalizer) and the added tokens are taken from the
file; the text pipeline is T5's own: the character map, whitespace splitting, ``▁`` word marks (Metaspace), Unigram
pieces, then ``</s>``. Special tokens (``<pad>``, ``</s>``, ``<unk>``, ``<extra_id_*>``) typed in a prompt are
matched as a whole. Prompts are padded with ``<pad>`` to ``max_length`` (CogVideoX: 226) and truncated to it
(``max_length - 1`` text tokens, then ``</s>``), warning with the text that was cut as diffusers does.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram

from .errors import ConfigError, PackageError, check_choice
from .tokenizer import _as_prompt_list

logger = logging.getLogger("diffrt.tokenizer")

DEFAULT_MAX_LENGTH = 226  # diffusers' CogVideoX max_sequence_length
DEFAULT_SPECIALS = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
SPACE_MARK = "\u2581"


@dataclass
class T5TokenizedPrompts:
    """Token ids and attention masks of a batch of prompts, and what truncation cut from each."""

    input_ids: np.ndarray  # (batch, length) int64, padded with the pad id
    attention_mask: np.ndarray  # (batch, length) int64, 1 for real tokens (</s> included)
    removed_text: list[str | None]  # per prompt: the text truncation cut, None where nothing was cut

    @property
    def truncated(self) -> np.ndarray:
        """(batch,) bool: which prompts were cut."""
        return np.array([r is not None for r in self.removed_text], dtype=bool)


class T5Tokenizer:
    """T5's tokenizer, torch-free. Build it with ``T5Tokenizer.from_pretrained(package_or_tokenizer_dir)``."""

    def __init__(
        self,
        vocab: Sequence[tuple[str, float]],
        unk_id: int | None = None,
        precompiled_charsmap: bytes | None = None,
        added_tokens: Sequence[AddedToken | str] = (),
        eos_token: str = DEFAULT_SPECIALS["eos_token"],
        unk_token: str = DEFAULT_SPECIALS["unk_token"],
        pad_token: str = DEFAULT_SPECIALS["pad_token"],
        model_max_length: int = DEFAULT_MAX_LENGTH,
    ):
        vocab = [(str(piece), float(score)) for piece, score in vocab]
        ids = {piece: i for i, (piece, _) in reversed(list(enumerate(vocab)))}
        for role, token in (("eos_token", eos_token), ("pad_token", pad_token), ("unk_token", unk_token)):
            if token not in ids:
                raise ConfigError(f"{role}={token!r} is not in the tokenizer vocabulary; accepted: a vocabulary token.")
        unk_id = ids[unk_token] if unk_id is None else int(unk_id)
        if not 0 <= unk_id < len(vocab):
            raise ConfigError(f"unk_id={unk_id} is outside the vocabulary of {len(vocab)} pieces.")
        tok = Tokenizer(Unigram(vocab, unk_id=unk_id, byte_fallback=False))
        if precompiled_charsmap:
            try:
                tok.normalizer = normalizers.Precompiled(precompiled_charsmap)
            except Exception as error:  # the library raises its own exception type
                raise ConfigError(f"the tokenizer's precompiled_charsmap cannot be read: {error}.") from None
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.WhitespaceSplit(),
                pre_tokenizers.Metaspace(replacement=SPACE_MARK, prepend_scheme="always", split=True),
            ]
        )
        tok.decoder = decoders.Metaspace(replacement=SPACE_MARK, prepend_scheme="always", split=True)
        specials = [
            t if isinstance(t, AddedToken) else AddedToken(t, normalized=False, special=True) for t in added_tokens
        ]
        known = {t.content for t in specials}
        specials += [
            AddedToken(t, normalized=False, special=True)
            for t in dict.fromkeys([pad_token, eos_token, unk_token])
            if t not in known
        ]
        for token in specials:  # one by one, in order: tokens missing from the vocabulary take the next ids
            (tok.add_special_tokens if token.special else tok.add_tokens)([token])
        self.eos_token_id = tok.token_to_id(eos_token)
        self.pad_token_id = tok.token_to_id(pad_token)
        self.unk_token_id = unk_id
        tok.post_processor = processors.TemplateProcessing(
            single=["$A", eos_token],
            pair=["$A", eos_token, "$B", eos_token],
            special_tokens=[(eos_token, self.eos_token_id)],
        )
        self.eos_token, self.unk_token, self.pad_token = eos_token, unk_token, pad_token
        self.model_max_length = int(model_max_length)
        self.vocab_size = tok.get_vocab_size()
        self._tokenizer = tok

    # ----- loading ---------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, subfolder: str | None = "tokenizer") -> T5Tokenizer:
        """Load from a tokenizer folder, or from a model/engine package holding ``<subfolder>/``."""
        folder = Path(path)
        if subfolder and (folder / subfolder).is_dir():
            folder = folder / subfolder
        if not folder.is_dir():
            raise PackageError(f"tokenizer folder {str(folder)!r} does not exist.")
        tokenizer_json = folder / "tokenizer.json"
        if not tokenizer_json.is_file():
            spiece = " (its spiece.model alone is not supported: diffrt does not read SentencePiece models)"
            raise PackageError(
                f"tokenizer folder {str(folder)!r} has no tokenizer.json"
                f"{spiece if (folder / 'spiece.model').is_file() else ''}; accepted: a T5 tokenizer.json as "
                "transformers' T5TokenizerFast.save_pretrained writes it (with sentencepiece installed, "
                "T5TokenizerFast.from_pretrained(folder).save_pretrained(folder) adds one)."
            )
        settings = {**DEFAULT_SPECIALS, "model_max_length": DEFAULT_MAX_LENGTH}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # later files override earlier ones
            data = _read_json(folder / name) if (folder / name).is_file() else {}
            if not isinstance(data, dict):
                raise PackageError(f"tokenizer file {str(folder / name)!r} holds no JSON object; accepted: one.")
            for key in (*DEFAULT_SPECIALS, "model_max_length"):
                if data.get(key) is not None:
                    settings[key] = _token_text(data[key])
        if not isinstance(settings["model_max_length"], int) or not 0 < settings["model_max_length"] <= 10**6:
            settings["model_max_length"] = DEFAULT_MAX_LENGTH  # transformers' "unset" sentinel is 1e30
        vocab, unk_id, charsmap, added = _read_tokenizer_json(tokenizer_json)
        pieces = {piece for piece, _ in vocab} | {t.content for t, _ in added}
        for role in ("eos_token", "pad_token", "unk_token"):
            if settings[role] not in pieces:
                raise PackageError(
                    f"tokenizer file {str(tokenizer_json)!r}: its {role} {settings[role]!r} is not in the vocabulary; "
                    "accepted: a vocabulary holding T5's special tokens."
                )
        try:
            tokenizer = cls(vocab, unk_id, charsmap, [t for t, _ in added], **settings)
        except ConfigError as error:
            raise PackageError(f"tokenizer file {str(tokenizer_json)!r}: {error}") from None
        for token, token_id in added:
            if tokenizer._tokenizer.token_to_id(token.content) != token_id:
                raise PackageError(
                    f"tokenizer file {str(tokenizer_json)!r}: added token {token.content!r} has id {token_id}, "
                    "which is neither its id in the vocabulary nor the next free id; accepted: a consistent file."
                )
        return tokenizer

    # ----- tokenizing ------------------------------------------------------------------------------------------
    def __call__(
        self,
        prompts: str | Sequence[str],
        max_length: int | None = None,
        padding: str = "max_length",
        truncation: bool = True,
        add_special_tokens: bool = True,
    ) -> T5TokenizedPrompts:
        """Ids and masks as diffusers' CogVideoX pipelines ask transformers for them (``padding="max_length",
        max_length=226, truncation=True, add_special_tokens=True``): rows of ``max_length`` (default
        ``model_max_length``) ids padded with ``<pad>``; ``padding="longest"`` pads to the longest row instead.
        Warns with the text that truncation cut."""
        check_choice("padding", padding, ("max_length", "longest"), "the T5 tokenizer")
        prompts = _as_prompt_list(prompts)
        length = self.model_max_length if max_length is None else int(max_length)
        if length < (2 if add_special_tokens else 1):
            raise ConfigError(f"max_length={length} leaves no room for text; accepted: 2 or more.")
        rows = [e.ids for e in self._tokenizer.encode_batch(prompts, add_special_tokens=add_special_tokens)]
        removed: list[str | None] = [None] * len(rows)
        if truncation:
            keep = length - 1 if add_special_tokens else length  # the text kept before </s>
            for row, ids in enumerate(rows):
                if len(ids) > length:
                    removed[row] = self.decode(ids[keep:-1] if add_special_tokens else ids[keep:])
                    rows[row] = ids[:keep] + ([self.eos_token_id] if add_special_tokens else [])
        width = max(map(len, rows)) if padding == "longest" else max(length, *map(len, rows))
        input_ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for row, ids in enumerate(rows):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        cut = [text for text in removed if text is not None]
        if cut:
            logger.warning(
                "The following part of your input was truncated because `max_sequence_length` is set to %d tokens: %s",
                length,
                cut,
            )
        return T5TokenizedPrompts(input_ids, mask, removed)

    def encode(self, prompt: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of one prompt (``</s>`` at the end), neither padded nor truncated."""
        return self._tokenizer.encode(_as_prompt_list(prompt)[0], add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` (``▁`` marks become spaces)."""
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def __repr__(self) -> str:
        return (
            f"T5Tokenizer(vocab_size={self.vocab_size}, model_max_length={self.model_max_length}, "
            f"pad_token={self.pad_token!r})"
        )


def _token_text(value):
    return value["content"] if isinstance(value, dict) else value


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PackageError(f"tokenizer file {str(path)!r} is not valid JSON: {error}.") from None


def _read_tokenizer_json(path: Path) -> tuple[list[tuple[str, float]], int | None, bytes | None, list]:
    """(vocab with scores, unk id, SentencePiece character map or None, [(added token, id)] in id order) of a T5
    tokenizer.json."""
    data = _read_json(path)
    model = data.get("model") if isinstance(data, dict) else None
    vocab = model.get("vocab") if isinstance(model, dict) else None
    if not isinstance(model, dict) or model.get("type") != "Unigram" or not isinstance(vocab, list) or not vocab:
        kind = model.get("type") if isinstance(model, dict) else None
        raise PackageError(
            f"tokenizer file {str(path)!r} holds {'a ' + str(kind) if kind else 'no'} model, not a Unigram "
            "vocabulary; accepted: a T5 (SentencePiece Unigram) tokenizer.json."
        )
    for number, entry in enumerate(vocab):
        if (
            not isinstance(entry, (list, tuple))
            or len(entry) != 2
            or not isinstance(entry[0], str)
            or not isinstance(entry[1], (int, float))
            or isinstance(entry[1], bool)
        ):
            raise PackageError(
                f"tokenizer file {str(path)!r}: vocabulary entry {number} ({entry!r}) is not a [piece, score] "
                "pair; accepted: T5's Unigram vocabulary."
            )
    unk_id = model.get("unk_id")
    if unk_id is not None and (not isinstance(unk_id, int) or isinstance(unk_id, bool)):
        raise PackageError(f"tokenizer file {str(path)!r}: model.unk_id={unk_id!r}; accepted: an integer id.")
    added = []
    for entry in sorted(data.get("added_tokens") or [], key=lambda e: e.get("id", 0) if isinstance(e, dict) else 0):
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("content"), str)
            or not isinstance(entry.get("id"), int)
        ):
            raise PackageError(
                f"tokenizer file {str(path)!r}: added token {entry!r} lacks a content string or an id; accepted: "
                "tokenizer.json's added_tokens entries."
            )
        flags = {k: bool(entry.get(k, False)) for k in ("single_word", "lstrip", "rstrip", "normalized", "special")}
        added.append((AddedToken(entry["content"], **flags), entry["id"]))
    return [(p, float(s)) for p, s in vocab], unk_id, _precompiled_charsmap(data.get("normalizer"), path), added


def _precompiled_charsmap(normalizer: object, path: Path) -> bytes | None:
    """The SentencePiece character map of a ``Precompiled`` normalizer, alone or inside a ``Sequence``; the
    other normalizers are dropped, as transformers drops them when it loads a T5 tokenizer."""
    if not isinstance(normalizer, dict):
        return None
    parts = normalizer.get("normalizers") if normalizer.get("type") == "Sequence" else [normalizer]
    for part in parts if isinstance(parts, list) else []:
        if isinstance(part, dict) and part.get("type") == "Precompiled" and part.get("precompiled_charsmap"):
            try:
                return base64.b64decode(part["precompiled_charsmap"], validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise PackageError(
                    f"tokenizer file {str(path)!r}: its Precompiled normalizer's precompiled_charsmap is not base64; "
                    "accepted: the character map SentencePiece conversion writes."
                ) from None
    return None

"""diffrt's CLIP tokenizer gives the ids and masks transformers' CLIPTokenizer gives, on every folder form."""

import logging
import random

import numpy as np
import pytest
from transformers import CLIPTokenizer as ReferenceTokenizer

from diffrt.runtime import CLIPTokenizer, PackageError

HANDWRITTEN = [
    "",
    " ",
    "a photograph of an astronaut riding a horse",
    "A Photograph Of An ASTRONAUT",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\nand\u00a0non-breaking\u2003spaces",
    "many      spaces     between",
    "wow!!! great!",
    "what?!?! ... --- ,,, ;;; ::: ((( ))) [[[ ]]] {{{ }}}",
    "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
    "a cat, (masterpiece:1.2), [best quality], {detailed}",
    "it's the cat's toy; they're here, we've won, I'm sure, you'll see, he'd go",
    "IT'S LOUD",
    "numbers 12345 and 3.14159 and 1,000,000",
    "café résumé naïve coöperate",
    "cafe\u0301 with a combining accent (NFC makes it é)",
    "Ångström ß straße ǅ ﬁ ligature",
    "東京タワーの夜景、高精細",
    "красивый пейзаж с горами",
    "منظر طبيعي جميل",
    "नमस्ते दुनिया",
    "🐱 a cat 🐶 a dog 🚀🚀🚀",
    "👩‍🚀 astronaut with ZWJ, 🏳️‍🌈 flag, 👍🏽 skin tone",
    "🇫🇷🇯🇵 flags",
    "mixed 中文 and english and 😀 emoji",
    "<|startoftext|> literal special tokens <|endoftext|>",
    "<|STARTOFTEXT|> upper-case is not special",
    "<|endoftext|><|endoftext|>",
    "html <b>bold</b> &amp; entities",
    "https://example.com/path?q=1&r=2#frag",
    "email@example.com",
    "snake_case and kebab-case and CamelCase",
    "under_score__double",
    "\u200b zero width space \u200b",
    "\ufeff byte order mark",
    "math: x² + y² = z², ∑ ∫ √ ∞",
    "currency $100 €50 £20 ¥1000",
    "quotes “curly” ‘single’ «guillemets»",
    "ellipsis… and dash — and en–dash",
    "a" * 300,
    "word " * 100,
    "a very long prompt, " * 30,
    "emoji run " + "😀" * 80,
    "中" * 100,
]

WORDS = (
    "a cat dog portrait of the in on with by artstation trending highly detailed photo oil painting cinematic "
    "lighting 8k unreal engine sharp focus city night forest river mountain sunset woman man robot castle "
    "dragon glowing neon watercolor sketch anime"
).split()
DECOR = [
    "",
    ",",
    ".",
    "!",
    "?",
    "!!",
    "...",
    ":",
    ";",
    "'",
    '"',
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    "-",
    "_",
    "/",
    "😀",
    "🌸",
    "é",
    "ü",
    "日本",
    "  ",
    "\t",
    "\n",
    "1",
    "42",
    "3.5",
]


def generated_prompts(n: int, seed: int = 0) -> list[str]:
    """Random prompts mixing words, punctuation runs, unicode, emoji and whitespace; some far past 77 tokens."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(n):
        parts = []
        for _ in range(rng.choice([1, 3, 8, 20, 60])):
            word = rng.choice(WORDS)
            word = word.upper() if rng.random() < 0.1 else word.capitalize() if rng.random() < 0.2 else word
            parts.append(rng.choice(DECOR) + word + rng.choice(DECOR) * rng.choice([1, 1, 2, 3]))
        prompts.append(rng.choice([" ", "  ", ", ", " "]).join(parts))
    return prompts


CORPUS = HANDWRITTEN + generated_prompts(200)
FOLDER_KINDS = ["sd1-vocab-merges", "sd2-vocab-merges", "sd1-tokenizer-json", "sd2-tokenizer-json"]


def test_corpus_is_large_and_varied():
    assert len(CORPUS) >= 200
    assert any(len(p) > 400 for p in CORPUS) and "" in CORPUS


@pytest.mark.parametrize("kind", FOLDER_KINDS)
def test_ids_and_masks_equal_transformers(tokenizer_folders, kind):
    ours = CLIPTokenizer.from_pretrained(tokenizer_folders[kind])
    reference = ReferenceTokenizer.from_pretrained(tokenizer_folders[kind])
    assert ours.pad_token_id == reference.pad_token_id
    assert ours.model_max_length == reference.model_max_length == 77
    expected = reference(CORPUS, padding="max_length", max_length=77, truncation=True, return_tensors="np")
    got = ours(CORPUS)
    for i, prompt in enumerate(CORPUS):
        assert got.input_ids[i].tolist() == expected["input_ids"][i].tolist(), f"ids differ for {prompt!r}"
        assert got.attention_mask[i].tolist() == expected["attention_mask"][i].tolist(), f"mask differs for {prompt!r}"
    assert got.input_ids.dtype == np.int64 and got.input_ids.shape == (len(CORPUS), 77)


@pytest.mark.parametrize("kind", ["sd1-vocab-merges", "sd2-tokenizer-json"])
def test_untruncated_encoding_equals_transformers(tokenizer_folders, kind):
    ours = CLIPTokenizer.from_pretrained(tokenizer_folders[kind])
    reference = ReferenceTokenizer.from_pretrained(tokenizer_folders[kind])
    for prompt in CORPUS[:80]:
        assert ours.encode(prompt) == reference(prompt).input_ids


def test_padding_conventions_differ_as_in_sd1_and_sd2(tokenizer_folders):
    sd1 = CLIPTokenizer.from_pretrained(tokenizer_folders["sd1-vocab-merges"])
    sd2 = CLIPTokenizer.from_pretrained(tokenizer_folders["sd2-vocab-merges"])
    ids1, ids2 = sd1("a cat").input_ids[0], sd2("a cat").input_ids[0]
    assert ids1[:4].tolist() == ids2[:4].tolist() == [49406, 320, 2368, 49407]
    assert set(ids1[4:].tolist()) == {49407} and set(ids2[4:].tolist()) == {0}


def test_real_clip_vocabulary_ids():
    from diffrt.export.clip_vocab import clip_vocab_and_merges

    vocab, merges = clip_vocab_and_merges()
    assert len(vocab) == 49408 and len(merges) == 48894
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407


def test_known_prompt_ids(tokenizer_folders):
    tok = CLIPTokenizer.from_pretrained(tokenizer_folders["sd1-vocab-merges"])
    assert tok.encode("a photograph of an astronaut riding a horse") == [
        49406,
        320,
        8853,
        539,
        550,
        18376,
        6765,
        320,
        4558,
        49407,
    ]


def test_truncation_keeps_end_token_and_warns_with_removed_text(tokenizer_folders, caplog):
    tok = CLIPTokenizer.from_pretrained(tokenizer_folders["sd1-vocab-merges"])
    prompt = "red " * 75 + "blue green"  # 77 words: the last two do not fit in 75 text tokens
    with caplog.at_level(logging.WARNING, logger="diffrt.tokenizer"):
        out = tok(prompt)
    assert out.input_ids[0, -1] == tok.eos_token_id and out.attention_mask[0].sum() == 77
    assert "truncated" in caplog.text and "blue green" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="diffrt.tokenizer"):
        tok("red " * 75)
    assert caplog.text == ""


def test_reads_tokenizer_of_a_pipeline_folder(tiny_models):
    for name in ("sd1", "sd2", "inpaint"):
        ours = CLIPTokenizer.from_pretrained(tiny_models[name])  # the package root: finds tokenizer/
        reference = ReferenceTokenizer.from_pretrained(tiny_models[name], subfolder="tokenizer")
        prompts = ["a cat!!", "hello  world", ""]
        expected = reference(prompts, padding="max_length", max_length=77, truncation=True).input_ids
        assert ours(prompts).input_ids.tolist() == expected


def test_missing_tokenizer_file_is_a_clear_error(tmp_path, tokenizer_folders):
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    (folder / "vocab.json").write_bytes((tokenizer_folders["sd1-vocab-merges"] / "vocab.json").read_bytes())
    with pytest.raises(
        PackageError, match=r"lacks merges\.txt; accepted: tokenizer\.json, or vocab\.json with merges\.txt"
    ):
        CLIPTokenizer.from_pretrained(folder)
    with pytest.raises(PackageError, match="does not exist"):
        CLIPTokenizer.from_pretrained(tmp_path / "nowhere")


def test_prompt_type_is_checked(tokenizer_folders):
    tok = CLIPTokenizer.from_pretrained(tokenizer_folders["sd1-vocab-merges"])
    with pytest.raises(ValueError, match="accepted: a string or a list of strings"):
        tok(["a", 3])


def _broken_copy(tmp_path, source, vocab=None, merges=None):
    import shutil

    folder = tmp_path / "tokenizer"
    shutil.copytree(source, folder)
    if vocab is not None:
        (folder / "vocab.json").write_text(vocab)
    if merges is not None:
        (folder / "merges.txt").write_text(merges)
    return folder


@pytest.mark.parametrize(
    "vocab,merges,message",
    [
        (None, "", r"merges\.txt' holds no BPE merges, so every word would be split"),
        (None, "#version: 0.2\n", "holds no BPE merges"),
        (None, "#version: 0.2\ni n\nthreewords in line\n", r"merge 2 \('threewords in line'\) is not a pair"),
        (None, "#version: 0.2\nq z\n", r"merge 1 \('q z'\) names 'qz'.*lacks"),
        ("{}", None, r"vocab\.json' holds no vocabulary"),
        ("[1, 2]", None, "holds no vocabulary"),
        ('{"a": -1}', None, "maps 'a' to -1"),
    ],
)
def test_empty_or_malformed_vocab_and_merges_are_refused_naming_the_file(
    tmp_path, tokenizer_folders, vocab, merges, message
):
    folder = _broken_copy(tmp_path, tokenizer_folders["sd1-vocab-merges"], vocab, merges)
    with pytest.raises(PackageError, match=message):
        CLIPTokenizer.from_pretrained(folder)


def test_a_vocabulary_without_the_special_tokens_is_refused(tmp_path, tokenizer_folders):
    import json

    source = tokenizer_folders["sd1-vocab-merges"]
    vocab = json.loads((source / "vocab.json").read_text())
    del vocab["<|endoftext|>"]
    folder = _broken_copy(tmp_path, source, json.dumps(vocab))
    with pytest.raises(PackageError, match=r"eos_token '<\|endoftext\|>' is not in the vocabulary"):
        CLIPTokenizer.from_pretrained(folder)

"""diffrt's T5 tokenizer gives the ids and masks transformers' T5TokenizerFast gives, as diffusers' CogVideoX
pipelines ask for them, on a T5-style tokenizer.json built offline (tests/fixtures/tiny_cogvideox.py)."""

import json
import logging
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
from fixtures.tiny_cogvideox import CORPUS, build_t5_tokenizer
from transformers import T5TokenizerFast

from diffrt.runtime.errors import ConfigError, PackageError
from diffrt.runtime.t5_tokenizer import T5Tokenizer

HANDWRITTEN = [
    "",
    " ",
    "a cat",
    "a photograph of an astronaut riding a horse on the moon",
    "A Photograph Of An ASTRONAUT",
    "  leading and trailing spaces  ",
    "many      spaces     between   words",
    "tabs\tand\nnewlines\r\nand\u00a0no-break\u2003em spaces",
    "astronauts riding horses, walking robots, flowing rivers",  # unseen words: word + suffix pieces
    "\ufb01ne \uff21\uff42\uff43 \u2460 wait\u2026",  # folded by the SentencePiece character map
    "caf\u00e9 r\u00e9sum\u00e9 na\u00efve",
    "\u6771\u4eac\u30bf\u30ef\u30fc\u306e\u591c\u666f",
    "\u043a\u0440\u0430\u0441\u0438\u0432\u044b\u0439 \u043f\u0435\u0439\u0437\u0430\u0436",
    "\U0001f431 a cat \U0001f436 a dog \U0001f680\U0001f680",
    "\U0001f469\u200d\U0001f680 astronaut with ZWJ",
    "hello </s> world <pad> and <unk>",
    "</s></s>",
    "<PAD> is not special",
    "numbers 0123456789 and 3.14159",
    "punctuation!!! ... --- ((( ))) ;;; ::: ???",
    "snake_case and kebab-case and CamelCase",
    "https://example.com/path?q=1&r=2#frag",
    "\u200b zero width space \u200b",
]
LONG = [
    "a cat " * 200,
    "a very long prompt about a robot walking through a neon city at night, " * 20,
    "x" * 500,
    "\U0001f600" * 300,
]


def random_prompts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = " ".join(CORPUS).split() + ["zebra", "quantum", "\u00e9t\u00e9", "\u2026", "\ufb01", "<pad>", "</s>"]
    glue = [" ", "  ", "", ", ", "\t", "!", "\u00a0"]
    return ["".join(rng.choice(words) + rng.choice(glue) for _ in range(rng.randint(0, 60))) for _ in range(count)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_t5_tokenizer(tmp_path_factory.mktemp("t5") / "tokenizer")


@pytest.fixture(scope="module")
def reference(folder):
    return T5TokenizerFast.from_pretrained(folder)  # what diffusers' CogVideoX pipelines load


@pytest.fixture(scope="module")
def tokenizer(folder):
    return T5Tokenizer.from_pretrained(folder)


def expected(reference, prompts, length):
    out = reference(
        prompts,
        padding="max_length",
        max_length=length,
        truncation=True,
        add_special_tokens=True,
        return_tensors="np",
    )
    return out.input_ids.astype(np.int64), out.attention_mask.astype(np.int64)


@pytest.mark.parametrize("length", [226, 16, 2])
def test_ids_and_masks_match_transformers(tokenizer, reference, length):
    prompts = HANDWRITTEN + LONG + random_prompts(200)
    got = tokenizer(prompts, max_length=length)
    ids, mask = expected(reference, prompts, length)
    assert got.input_ids.dtype == np.int64 and got.input_ids.shape == (len(prompts), length)
    np.testing.assert_array_equal(got.input_ids, ids)
    np.testing.assert_array_equal(got.attention_mask, mask)


def test_each_prompt_alone_matches_and_unpadded_ids_match(tokenizer, reference):
    for prompt in HANDWRITTEN + LONG:
        ids, _ = expected(reference, prompt, 226)
        np.testing.assert_array_equal(tokenizer(prompt).input_ids, ids, err_msg=repr(prompt))  # default: 226
        assert tokenizer.encode(prompt) == reference(prompt).input_ids, repr(prompt)
        assert (
            tokenizer.encode(prompt, add_special_tokens=False) == reference(prompt, add_special_tokens=False).input_ids
        )


def test_longest_padding_without_truncation_matches_diffusers_untruncated_ids(tokenizer, reference):
    prompts = HANDWRITTEN + LONG
    got = tokenizer(prompts, padding="longest", truncation=False)
    want = reference(prompts, padding="longest", return_tensors="np")
    np.testing.assert_array_equal(got.input_ids, want.input_ids)
    np.testing.assert_array_equal(got.attention_mask, want.attention_mask)
    assert not got.truncated.any()


def test_without_special_tokens(tokenizer, reference):
    prompts = HANDWRITTEN + LONG
    got = tokenizer(prompts, max_length=12, add_special_tokens=False)
    want = reference(
        prompts, padding="max_length", max_length=12, truncation=True, add_special_tokens=False, return_tensors="np"
    )
    np.testing.assert_array_equal(got.input_ids, want.input_ids)


def test_truncation_is_reported_and_warned_with_the_text_diffusers_names(tokenizer, reference, caplog):
    length = 24
    prompts = ["a cat", LONG[1], "a dog on a sofa", LONG[0]]
    with caplog.at_level(logging.WARNING, logger="diffrt.tokenizer"):
        got = tokenizer(prompts, max_length=length)
    assert got.truncated.tolist() == [False, True, False, True]
    # diffusers: batch_decode(untruncated_ids[:, max_sequence_length - 1 : -1]) on the truncated rows
    untruncated = reference(prompts, padding="longest", return_tensors="np").input_ids
    removed = reference.batch_decode(untruncated[:, length - 1 : -1])
    for row in (1, 3):
        kept = untruncated[row][untruncated[row] != reference.pad_token_id]
        assert got.removed_text[row] == reference.decode(kept[length - 1 : -1])
        assert got.removed_text[row].split() == removed[row].replace("</s>", " ").replace("<pad>", " ").split()
    assert got.removed_text[0] is None and got.removed_text[2] is None
    assert got.input_ids[1, -1] == tokenizer.eos_token_id == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "diffrt.tokenizer"]
    assert len(messages) == 1 and "`max_sequence_length` is set to 24 tokens" in messages[0]
    assert got.removed_text[1] in messages[0] and got.removed_text[3] in messages[0]


def test_a_prompt_exactly_at_the_length_is_not_truncated(tokenizer, caplog):
    ids = tokenizer.encode("a cat " * 200)[:15]  # 15 text tokens + </s> = 16
    text = tokenizer.decode(ids)
    assert len(tokenizer.encode(text)) == 16
    with caplog.at_level(logging.WARNING, logger="diffrt.tokenizer"):
        got = tokenizer(text, max_length=16)
    assert not got.truncated.any() and got.attention_mask.sum() == 16
    assert not [r for r in caplog.records if r.name == "diffrt.tokenizer"]


def test_special_tokens_and_their_ids(tokenizer, reference):
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer.vocab_size == len(reference)
    assert tokenizer("").input_ids[0, :2].tolist() == [1, 0]  # the empty prompt is </s> then padding
    assert tokenizer.decode(tokenizer.encode("a cat on a sofa"), skip_special_tokens=True) == "a cat on a sofa"


def test_sentinel_tokens_from_extra_ids(tmp_path):
    folder = build_t5_tokenizer(tmp_path / "with_extra_ids", extra_ids=3)
    reference = T5TokenizerFast.from_pretrained(folder)
    tokenizer = T5Tokenizer.from_pretrained(folder)
    prompts = ["a cat <extra_id_1> on<extra_id_2>sofa <extra_id_9>", "<extra_id_0>"] + HANDWRITTEN
    np.testing.assert_array_equal(tokenizer(prompts, max_length=40).input_ids, expected(reference, prompts, 40)[0])
    assert tokenizer.vocab_size == len(reference)


def test_loads_from_a_package_folder_and_with_a_special_tokens_map(folder, tmp_path, reference):
    package = tmp_path / "package"
    shutil.copytree(folder, package / "tokenizer")
    (package / "tokenizer" / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"})
    )
    config = json.loads((package / "tokenizer" / "tokenizer_config.json").read_text())
    config.pop("model_max_length")
    (package / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = T5Tokenizer.from_pretrained(package)
    assert tokenizer.model_max_length == 226
    np.testing.assert_array_equal(tokenizer(HANDWRITTEN).input_ids, expected(reference, HANDWRITTEN, 226)[0])
    only_json = tmp_path / "only_json"
    only_json.mkdir()
    shutil.copy(folder / "tokenizer.json", only_json)
    np.testing.assert_array_equal(
        T5Tokenizer.from_pretrained(only_json)(HANDWRITTEN).input_ids, expected(reference, HANDWRITTEN, 226)[0]
    )


def test_missing_tokenizer_json_is_one_clear_error(tmp_path):
    with pytest.raises(PackageError, match="does not exist"):
        T5Tokenizer.from_pretrained(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PackageError) as error:
        T5Tokenizer.from_pretrained(empty)
    message = str(error.value)
    assert str(empty) in message and "no tokenizer.json" in message and "accepted: a T5 tokenizer.json" in message
    assert "spiece.model" not in message
    (empty / "spiece.model").write_bytes(b"\x00sentencepiece")
    (empty / "tokenizer_config.json").write_text("{}")
    with pytest.raises(PackageError, match=r"spiece\.model alone is not supported"):
        T5Tokenizer.from_pretrained(empty)


def test_unreadable_or_foreign_tokenizer_json_errors(folder, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.json").write_text("{not json")
    with pytest.raises(PackageError, match="not valid JSON"):
        T5Tokenizer.from_pretrained(bad)
    (bad / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}))
    with pytest.raises(PackageError, match="a BPE model, not a Unigram vocabulary"):
        T5Tokenizer.from_pretrained(bad)
    data = json.loads((folder / "tokenizer.json").read_text())
    data["model"]["vocab"][5] = ["piece-without-score"]
    (bad / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(PackageError, match=r"vocabulary entry 5 .* is not a \[piece, score\] pair"):
        T5Tokenizer.from_pretrained(bad)
    shutil.copy(folder / "tokenizer.json", bad / "tokenizer.json")
    (bad / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<nothing>"}))
    with pytest.raises(PackageError, match="pad_token '<nothing>' is not in the vocabulary"):
        T5Tokenizer.from_pretrained(bad)


def test_bad_call_arguments(tokenizer):
    with pytest.raises(ConfigError, match="padding='do_not_pad' is not supported"):
        tokenizer("a cat", padding="do_not_pad")
    with pytest.raises(ConfigError, match="prompt=3 is not supported"):
        tokenizer(3)
    with pytest.raises(ConfigError, match="max_length=1 leaves no room"):
        tokenizer("a cat", max_length=1)


def test_imports_neither_torch_nor_transformers(folder):
    code = (
        "import sys; from diffrt.runtime.t5_tokenizer import T5Tokenizer; "
        f"T5Tokenizer.from_pretrained({str(folder)!r})('a cat'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'diffusers')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"

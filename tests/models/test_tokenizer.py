"""The corpus tokenizer has T5's layout and behaves like the real T5 tokenizer through transformers."""

from __future__ import annotations

import json
import random

import pytest
from transformers import AutoTokenizer

from pixart_lab.models.tokenizer import build_tokenizer, sentinel_ids, unknown_words, warn_unknown_words

SHAPES = ["circle", "square", "triangle", "star", "hexagon"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white"]
SIZES = ["small", "large"]
RELATIONS = ["left of", "right of", "above", "below"]
BACKGROUNDS = ["grey", "black", "white"]
QUALITIES = ["sharp", "noisy", "blurry"]
COUNTS = {2: "two", 3: "three", 4: "four"}


def corpus_captions(n: int, seed: int = 0) -> list[str]:
    """Dense, count and sparse captions shaped like the embedded corpus's."""
    r = random.Random(seed)

    def obj() -> str:
        return f"{r.choice(SIZES)} {r.choice(COLOURS)} {r.choice(SHAPES)}"

    out = []
    for _ in range(n):
        kind = r.random()
        if kind < 0.2:
            out.append(f"{r.choice(COLOURS)} {r.choice(SHAPES)}")
        elif kind < 0.4:
            out.append(
                f"a {r.choice(QUALITIES)} image of {COUNTS[r.choice([2, 3, 4])]} {obj()}s "
                f"on a {r.choice(BACKGROUNDS)} background"
            )
        else:
            a, b = obj(), obj()
            s = f"a {r.choice(QUALITIES)} image of a {a} {r.choice(RELATIONS)} a {b}"
            if r.random() < 0.5:
                s += f", and a {obj()} {r.choice(RELATIONS)} the {' '.join(b.split()[1:])}"
            out.append(s + f" on a {r.choice(BACKGROUNDS)} background")
    return out


@pytest.fixture(scope="module")
def captions() -> list[str]:
    return corpus_captions(2000)


@pytest.fixture(scope="module")
def tok(captions):
    return build_tokenizer(captions)


def test_special_token_ids_follow_t5(tok):
    assert (tok.pad_token, tok.pad_token_id) == ("<pad>", 0)
    assert (tok.eos_token, tok.eos_token_id) == ("</s>", 1)
    assert (tok.unk_token, tok.unk_token_id) == ("<unk>", 2)
    # T5: sentinels are the last 100 ids, <extra_id_0> the highest.
    assert tok.convert_tokens_to_ids("<extra_id_0>") == len(tok) - 1
    assert tok.convert_tokens_to_ids("<extra_id_99>") == len(tok) - 100
    assert sentinel_ids(tok) == [len(tok) - 1 - k for k in range(100)]
    assert tok("red circle <extra_id_3>").input_ids[-2:] == [len(tok) - 4, 1]


def test_every_caption_word_is_one_piece(tok, captions):
    words = {w.strip(",") for c in captions for w in c.split()}
    split = {w: tok.tokenize(w) for w in words if len(tok.tokenize(w)) != 1}
    assert not split, f"words not learned as single pieces: {split}"
    # So a caption costs one token per word, one per comma, and </s>.
    for caption in captions[:300]:
        assert len(tok(caption).input_ids) == len(caption.split()) + caption.count(",") + 1


def test_round_trip_and_eos(tok, captions):
    for caption in captions[:300]:
        ids = tok(caption).input_ids
        assert ids[-1] == tok.eos_token_id and ids.count(tok.eos_token_id) == 1
        assert tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == caption


def test_case_and_whitespace_are_normalised(tok):
    assert tok("A  Red   Circle").input_ids == tok("a red circle").input_ids


def test_autotokenizer_reload_is_identical(tok, captions, tmp_path):
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert type(again).__name__ in {"T5Tokenizer", "T5TokenizerFast"}
    assert again.model_max_length == 120
    assert len(again) == len(tok)
    assert again.get_vocab() == tok.get_vocab()
    assert again(captions[:200]).input_ids == tok(captions[:200]).input_ids
    assert (again.pad_token_id, again.eos_token_id, again.unk_token_id) == (0, 1, 2)


def test_long_caption_is_truncated_to_120_with_eos_last(tok):
    long_caption = " ".join(["red circle"] * 100)  # 200 tokens
    assert len(tok(long_caption).input_ids) == 201
    batch = tok([long_caption, "red circle"], padding="max_length", truncation=True, max_length=120)
    assert [len(x) for x in batch.input_ids] == [120, 120]
    assert batch.input_ids[0][-1] == tok.eos_token_id
    assert batch.input_ids[1][3:] == [tok.pad_token_id] * 117
    assert batch.attention_mask[1] == [1, 1, 1] + [0] * 117


def test_deterministic_for_the_same_captions(tok, captions):
    again = build_tokenizer(captions)
    assert again.get_vocab() == tok.get_vocab()
    # Compare the serialised pipeline, not the padding state the last call left on the backend.
    fields = ("model", "normalizer", "pre_tokenizer", "post_processor", "decoder", "added_tokens")
    mine, theirs = json.loads(tok.backend_tokenizer.to_str()), json.loads(again.backend_tokenizer.to_str())
    assert {k: mine[k] for k in fields} == {k: theirs[k] for k in fields}


def test_vocab_size_adapts_to_a_small_corpus(caplog):
    small = build_tokenizer(corpus_captions(50, seed=1), vocab_size=512)
    assert len(small) - 100 < 512
    tiny = build_tokenizer(["red circle", "blue square"], vocab_size=4)
    assert "below the" in caplog.text
    assert tiny("red circle").input_ids[-1] == 1
    assert tiny.decode(tiny("blue circle").input_ids, skip_special_tokens=True) == "blue circle"


def test_words_with_unseen_characters_are_named_in_a_warning(tok, caplog):
    assert unknown_words(tok, ["a big red circle in the middle"]) == []  # unseen words split into known pieces
    with caplog.at_level("WARNING", logger="pixart_lab.models.tokenizer"):
        found = warn_unknown_words(tok, ["a red circle", "7 crème squares", "a red circle"])
    assert found == ["7", "crème"]
    assert "2 word(s)" in caplog.text and "7, crème" in caplog.text and "<unk>" in caplog.text

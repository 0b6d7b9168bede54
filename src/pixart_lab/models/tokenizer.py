"""A T5-format SentencePiece-unigram tokenizer trained offline on the corpus captions.

PixArt-alpha conditions on T5 (Raffel et al., 2020), whose vocabulary is a SentencePiece unigram
model (Kudo, 2018; T5 paper Section 2.2): ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2, then the
learned pieces, then 100 sentinels ``<extra_id_99>`` .. ``<extra_id_0>`` (``<extra_id_0>`` has the
highest id), and ``</s>`` appended to every sequence. :func:`build_tokenizer` reproduces that
layout at corpus scale and returns a ``transformers`` T5 tokenizer (a ``tokenizers`` Unigram model
with the Metaspace pre-tokenizer) that round-trips through ``save_pretrained`` /
``AutoTokenizer.from_pretrained`` like the real T5 tokenizer.
"""

from __future__ import annotations

import io
import logging
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
SPACE = "\u2581"  # SentencePiece's "▁", which marks a word start
MAX_PIECE_LENGTH = 16  # SentencePiece's default max_sentencepiece_length


def _seed_pieces(words: Counter[str]) -> Counter[str]:
    """Candidate pieces for unigram EM: every substring of every word, scored by frequency x length.

    This is the seeding SentencePiece's unigram trainer intends (Kudo, 2018, Section 3.2). We pass it
    explicitly because both SentencePiece and ``tokenizers.trainers.UnigramTrainer`` build their
    suffix array over *distinct* words, so a word that is not a substring of another distinct word
    is never a candidate. On this corpus's closed ~60-word vocabulary that dropped "▁yellow",
    "▁red", "▁of", ... and spelled them letter by letter (measured: 62 tokens per dense caption
    with ``UnigramTrainer``, 17 with these seeds, every caption word one piece).
    """
    seeds: Counter[str] = Counter()
    for word, count in words.items():
        for i in range(len(word)):
            for j in range(i + 1, min(len(word), i + MAX_PIECE_LENGTH) + 1):
                piece = word[i:j]
                if piece == SPACE or SPACE in piece[1:]:  # "▁" only as a word prefix
                    continue
                seeds[piece] += count * len(piece)
    return seeds


def build_tokenizer(
    captions: Iterable[str],
    vocab_size: int = 512,
    extra_ids: int = 100,
    model_max_length: int = 120,
) -> PreTrainedTokenizerBase:
    """Train a T5-layout unigram tokenizer on ``captions``.

    ``vocab_size`` counts the SentencePiece part (pad, eos, unk and the learned pieces), as T5's
    32000; the ``extra_ids`` sentinels come on top (T5: 32000 + 100 = 32100 = ``len(tokenizer)``).
    It is an upper bound: when the corpus has fewer useful pieces (the caption language has ~60
    words) the vocabulary shrinks to what unigram EM keeps, so ``len(tokenizer)`` may be smaller.
    Text is NFKC-normalised and case-folded (SentencePiece's ``nmt_nfkc_cf`` rule, stored in
    ``tokenizer.json`` as a precompiled charsmap) so "A Red Circle" encodes like "a red circle".
    Deterministic: the same captions give the same vocabulary, scores and ids.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2
    from transformers import T5Tokenizer

    sentences = [" ".join(str(c).split()) for c in captions]
    sentences = [s for s in sentences if s]
    if not sentences:
        raise ValueError("build_tokenizer: no non-empty captions to train on")

    # Seeds are built from case-folded words, as the trainer sees the normalised text.
    words = Counter(SPACE + w for s in sentences for w in s.casefold().split())
    n_chars = len({ch for w in words for ch in w})
    min_size = n_chars + 3  # every character must stay a piece (character_coverage=1), plus specials
    if vocab_size < min_size:
        log.warning(
            "build_tokenizer: vocab_size=%d is below the %d characters + 3 specials of the captions; using %d",
            vocab_size, n_chars, min_size,
        )
        vocab_size = min_size

    model = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="spm-seeds-") as tmp:
        seeds_file = Path(tmp) / "seeds.tsv"
        ranked = sorted(_seed_pieces(words).items(), key=lambda kv: (-kv[1], kv[0]))
        seeds_file.write_text("".join(f"{p}\t{n}\n" for p, n in ranked), encoding="utf-8")
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            model_type="unigram",
            vocab_size=vocab_size,
            hard_vocab_limit=False,  # a soft cap: adapt to a small corpus instead of failing
            seed_sentencepieces_file=str(seeds_file),
            max_sentencepiece_length=MAX_PIECE_LENGTH,
            normalization_rule_name="nmt_nfkc_cf",
            character_coverage=1.0,
            byte_fallback=False,
            pad_id=0, eos_id=1, unk_id=2, bos_id=-1,  # T5's ids; T5 has no BOS
            pad_piece=PAD, eos_piece=EOS, unk_piece=UNK,
            input_sentence_size=0, shuffle_input_sentence=False,  # use every caption, in order
            num_threads=1,
            minloglevel=2,
        )

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.getvalue())
    vocab = [(p.piece, float(p.score)) for p in proto.pieces]
    if [p for p, _ in vocab[:3]] != [PAD, EOS, UNK]:
        raise RuntimeError(f"build_tokenizer: expected {PAD}, {EOS}, {UNK} as ids 0-2, got {vocab[:3]}")
    # Sentinels sit after the pieces in reverse, as in T5's spiece.model + extra_ids layout.
    vocab += [(f"<extra_id_{i}>", 0.0) for i in reversed(range(extra_ids))]

    # transformers 5's T5Tokenizer rebuilds its backend from the vocabulary on load, with its own
    # fixed pre-tokenizer and decoder and only a Precompiled normalizer: a tokenizers.normalizers
    # pipeline (e.g. Lowercase) set here would be silently dropped by save/load, the SentencePiece
    # charsmap survives it.
    tokenizer = T5Tokenizer(
        vocab=vocab,
        extra_ids=extra_ids,
        model_max_length=model_max_length,
        _spm_precompiled_charsmap=proto.normalizer_spec.precompiled_charsmap,
    )
    log.info(
        "build_tokenizer: %d pieces + %d sentinels from %d captions (%d distinct words)",
        len(vocab) - extra_ids, extra_ids, len(sentences), len(words),
    )
    return tokenizer


def sentinel_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of ``<extra_id_0>``, ``<extra_id_1>``, ... in order: the k-th corrupted span gets the k-th."""
    ids = []
    for k in range(len(tokenizer)):
        token = f"<extra_id_{k}>"
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            break
        ids.append(token_id)
    if not ids:
        raise ValueError(f"{type(tokenizer).__name__} has no <extra_id_k> sentinel tokens (T5 has 100)")
    return ids


def unknown_words(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str]) -> list[str]:
    """The words of ``texts`` the tokenizer can only encode with its unknown token (sorted, unique).

    The embedded tokenizer knows the corpus captions' characters: a word it never saw splits into
    known pieces, but a character it never saw (a capital, a digit outside the captions, an accent)
    becomes ``<unk>``, and the text encoder then reads no meaning there.
    """
    unk = tokenizer.unk_token_id
    if unk is None:
        return []
    words = sorted({word for text in texts for word in text.split()})
    return [w for w in words if unk in tokenizer(w, add_special_tokens=False)["input_ids"]]


def warn_unknown_words(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str]) -> list[str]:
    """Log a warning naming the words that map to the unknown token; returns them."""
    found = unknown_words(tokenizer, texts)
    if found:
        log.warning(
            "%d word(s) contain characters the tokenizer never saw and are read as %s: %s "
            "(the embedded vocabulary is lower-case corpus words)",
            len(found), tokenizer.unk_token, ", ".join(found[:10]),
        )  # fmt: skip
    return found

"""The DreamBooth identifier: a token sequence with a weak prior that the frozen text encoder can see.

DreamBooth (Ruiz et al., 2022, Sec. 3.2) names the subject "[identifier] [class noun]" and picks the
identifier among rare tokens, so fine-tuning need not first unlearn a strong meaning. The embedded
tokenizer is a unigram model trained on the corpus captions alone: every caption word is one piece
(``▁circle``), single characters are pieces only because character coverage keeps them, and a
character no caption contains maps to ``<unk>``. Hence:

* ``sks`` splits into ``▁ s k s``: pieces that exist (each has its own T5 embedding) but never occur
  in a tokenised caption, because the words around them always win as whole pieces. That is the
  weak prior DreamBooth asks for, and the default.
* ``zwx`` holds ``<unk>`` (no caption contains "z"): every such identifier would collapse onto the one
  untrained ``<unk>`` embedding, so different identifiers, or an identifier and a typo, would be the
  same prompt to T5. :func:`identifier_pieces` refuses it.
* A caption word such as ``red`` would carry the corpus' meaning into the subject; use a word only
  on purpose (DreamBooth's "existing rare word" variant).
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


class IdentifierError(ValueError):
    """An identifier the text encoder cannot tell apart, or cannot read."""


def _pieces(tokenizer: PreTrainedTokenizerBase, text: str) -> list[str]:
    """The pieces the model receives (``tokenize`` alone keeps unknown characters as strings)."""
    ids = tokenizer(text.strip(), add_special_tokens=False)["input_ids"]
    return tokenizer.convert_ids_to_tokens(ids)


def identifier_pieces(tokenizer: PreTrainedTokenizerBase, identifier: str, class_noun: str) -> list[str]:
    """The tokenizer's pieces for ``identifier``; raise :class:`IdentifierError` if it is unusable.

    Unusable: empty, containing ``<unk>``, or tokenised exactly like the class noun (then the
    identifier prompt would be the class prompt with a repeated word, not a new name).
    """
    pieces = _pieces(tokenizer, identifier)
    if not pieces:
        raise IdentifierError("the identifier is empty")
    if tokenizer.unk_token in pieces:
        raise IdentifierError(
            f"identifier {identifier!r} tokenises to {pieces}: {tokenizer.unk_token} means characters the tokenizer never "
            "saw; every such identifier shares one untrained embedding. Use characters of the training captions (e.g. 'sks')"
        )
    noun = _pieces(tokenizer, class_noun)
    if tokenizer.unk_token in noun:
        raise IdentifierError(f"class noun {class_noun!r} tokenises to {noun}; it should be a word the text encoder knows")
    if pieces == noun:
        raise IdentifierError(f"identifier {identifier!r} tokenises like the class noun {class_noun!r} ({pieces})")
    return pieces

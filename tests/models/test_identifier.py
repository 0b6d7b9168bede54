"""The DreamBooth identifier against the corpus tokenizer: rare pieces, never <unk>, seen by T5."""

from __future__ import annotations

import pytest
import torch

from pixart_lab.models.identifier import IdentifierError, identifier_pieces


def test_sks_splits_into_known_pieces_that_no_tokenised_caption_uses(tiny_text_encoder, tiny_corpus):
    from pixart_lab.data.readers import PixArtInfoReader

    tokenizer = tiny_text_encoder.tokenizer
    pieces = identifier_pieces(tokenizer, "sks", "circle")
    assert pieces == ["▁", "s", "k", "s"]
    captions = [r.dense_caption for r in PixArtInfoReader(tiny_corpus / "train" / "data_info.json").records()]
    used = {piece for caption in captions for piece in tokenizer.tokenize(caption)}
    assert "▁circle" in used and not {"▁", "s", "k"} & used  # caption words are whole pieces: a weak prior


def test_identifier_prompt_and_class_prompt_encode_differently(tiny_text_encoder):
    identifier_prompt = "a sharp image of a large sks circle in the centre on a white background"
    class_prompt = "a sharp image of a large circle in the centre on a white background"
    emb, mask = tiny_text_encoder.encode([identifier_prompt, class_prompt], pad_to_max_length=False)
    lengths = mask.sum(1).tolist()
    assert lengths[0] == lengths[1] + 4  # "▁ s k s"
    # The shared words before the identifier encode alike only up to attention: T5 is bidirectional,
    # so even "a sharp image" differs, and "circle" itself is read in another context.
    circle_id = tiny_text_encoder.tokenizer.convert_tokens_to_ids("▁circle")
    ids = [tiny_text_encoder.tokenizer(p)["input_ids"] for p in (identifier_prompt, class_prompt)]
    circle_identifier, circle_class = emb[0, ids[0].index(circle_id)], emb[1, ids[1].index(circle_id)]
    assert (circle_identifier - circle_class).norm() > 1e-3 * circle_class.norm()
    assert not torch.allclose(emb[0, :6], emb[1, :6])


def test_unusable_identifiers_are_refused_with_the_reason(tiny_text_encoder):
    tokenizer = tiny_text_encoder.tokenizer
    with pytest.raises(IdentifierError, match=r"'zwx' tokenises to .*<unk>"):
        identifier_pieces(tokenizer, "zwx", "circle")  # no caption contains "z"
    with pytest.raises(IdentifierError, match="tokenises like the class noun"):
        identifier_pieces(tokenizer, "circle", "circle")
    with pytest.raises(IdentifierError, match="class noun 'zigzag'"):
        identifier_pieces(tokenizer, "sks", "zigzag")
    with pytest.raises(IdentifierError, match="empty"):
        identifier_pieces(tokenizer, "  ", "circle")

"""A tiny BLIP captioner built here (WordPiece tokenizer, image processor, random weights), saved in the
layout ``AutoProcessor`` / ``AutoModelForImageTextToText`` load, as a stand-in for LLaVA / BLIP-2."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import BertTokenizerFast, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
WORDS = "a an the of on with image photo large small red green blue yellow circle square triangle star".split()


def build_tiny_captioner(folder: Path, seed: int = 0) -> Path:
    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS)}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    backend.decoder = decoders.WordPiece()
    tokenizer = BertTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
        mask_token="[MASK]", bos_token="[DEC]",
    )  # fmt: skip
    ids = dict(bos_token_id=vocab["[DEC]"], sep_token_id=vocab["[SEP]"], eos_token_id=vocab["[SEP]"], pad_token_id=vocab["[PAD]"])
    config = BlipConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64, initializer_range=0.5, **ids),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8, initializer_range=0.5),
        projection_dim=32, image_text_hidden_size=32,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    with torch.no_grad():  # random weights would mostly emit special tokens: let it speak words only
        model.text_decoder.cls.predictions.bias[: len(SPECIAL)] = -1e4
    model.save_pretrained(folder)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer).save_pretrained(folder)
    return folder

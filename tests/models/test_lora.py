"""LoRA on PixArt: diffusers' file layout, exact round trips, and a base model that LoRA leaves untouched."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from diffusers import PixArtTransformer2DModel
from diffusers.loaders import PeftAdapterMixin
from safetensors import safe_open
from safetensors.torch import save_file
from tiny_models import BACKBONE, tiny_pixart

from pixart_lab.models.lora import (
    PIXART_LORA_TARGETS,
    WEIGHT_NAME,
    LoraFormatError,
    add_lora,
    lora_config,
    lora_layers,
    load_lora,
    save_lora,
    set_lora_enabled,
    unload_lora,
)
from pixart_lab.training.checkpoints import WEIGHTS_FILE

CAPTION_CHANNELS = 32


def outputs(transformer) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x, emb = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 5, CAPTION_CHANNELS, generator=g)
    with torch.no_grad():
        return transformer(x, encoder_hidden_states=emb, encoder_attention_mask=torch.ones(2, 5), timestep=torch.tensor([10, 500]),
                           added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample  # fmt: skip


def base() -> PixArtTransformer2DModel:
    return tiny_pixart(CAPTION_CHANNELS).eval()


@pytest.fixture()
def trained_lora():
    """A LoRA with alpha != rank (so a loader that ignored alpha would scale wrongly) and non-zero B."""
    model = add_lora(base(), lora_config(rank=4, alpha=12, target_modules=PIXART_LORA_TARGETS))
    torch.manual_seed(3)
    for layer in lora_layers(model):
        torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.05)
    return model


def test_fresh_adapters_start_at_the_base_model_and_only_they_train():
    reference = outputs(base())
    model = add_lora(base(), lora_config(rank=4, alpha=4, target_modules=PIXART_LORA_TARGETS))
    assert torch.equal(outputs(model), reference)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # 2 blocks x (8 attention + 2 feed-forward) + 2 caption projection + proj_out, each with A and B
    assert len(lora_layers(model)) == 2 * 10 + 3 and len(trainable) == 2 * (2 * 10 + 3)


def test_saved_file_has_diffusers_layout_and_round_trips_exactly(trained_lora, tmp_path):
    expected = outputs(trained_lora)
    assert not torch.equal(expected, outputs(base()))
    path = save_lora(trained_lora, tmp_path)
    assert path == tmp_path / WEIGHT_NAME
    with safe_open(str(path), framework="pt") as f:
        keys, metadata = list(f.keys()), json.loads(f.metadata()["lora_adapter_metadata"])
        a = f.get_tensor("transformer.transformer_blocks.0.attn2.to_k.lora_A.weight")
    assert all(k.startswith("transformer.") and (".lora_A." in k or ".lora_B." in k) for k in keys)
    assert a.shape == (4, 48) and metadata["transformer.r"] == 4 and metadata["transformer.lora_alpha"] == 12
    assert "to_out.0" in metadata["transformer.target_modules"]

    fresh = load_lora(base(), tmp_path)
    assert torch.equal(outputs(fresh), expected)


def test_diffusers_own_lora_loader_reads_the_file(trained_lora, tmp_path):
    """The day PixArt's transformer gains PeftAdapterMixin, diffusers' load_lora_adapter reads this file as is."""

    class PeftPixArt(PixArtTransformer2DModel, PeftAdapterMixin):
        pass

    torch.manual_seed(0)
    model = PeftPixArt(**BACKBONE, sample_size=16, interpolation_scale=1, cross_attention_dim=48,
                       caption_channels=CAPTION_CHANNELS, norm_eps=1e-6).eval()  # fmt: skip
    assert torch.equal(outputs(model), outputs(base()))
    save_lora(trained_lora, tmp_path)
    model.load_lora_adapter(str(tmp_path), prefix="transformer", weight_name=WEIGHT_NAME)
    assert torch.equal(outputs(model), outputs(trained_lora))


def test_plain_peft_loading_as_the_readme_shows(trained_lora, tmp_path):
    """The README's recipe for a plain diffusers PixArt pipeline: peft's public functions, no project code."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    save_lora(trained_lora, tmp_path)
    transformer = base()  # pipe.transformer
    with safe_open(str(tmp_path / "pytorch_lora_weights.safetensors"), "pt") as f:
        config = {k.removeprefix("transformer."): v for k, v in json.loads(f.metadata()["lora_adapter_metadata"]).items()}
        weights = {k.removeprefix("transformer."): f.get_tensor(k) for k in f.keys()}
    inject_adapter_in_model(LoraConfig(**config), transformer)
    set_peft_model_state_dict(transformer, weights)
    assert torch.equal(outputs(transformer), outputs(trained_lora))


def test_disabling_or_unloading_gives_back_the_base_model_exactly(trained_lora):
    reference, adapted = outputs(base()), outputs(trained_lora)
    set_lora_enabled(trained_lora, False)
    assert torch.equal(outputs(trained_lora), reference)
    set_lora_enabled(trained_lora, True)
    assert torch.equal(outputs(trained_lora), adapted)

    merged = unload_lora(copy.deepcopy(trained_lora), merge=True)
    assert not lora_layers(merged) and not hasattr(merged, "peft_config")
    torch.testing.assert_close(outputs(merged), adapted, atol=1e-5, rtol=0)
    unloaded = unload_lora(trained_lora)
    assert torch.equal(outputs(unloaded), reference)
    assert unloaded.state_dict().keys() == base().state_dict().keys()


def test_merged_model_saves_as_a_plain_diffusers_transformer(trained_lora, tmp_path):
    adapted = outputs(trained_lora)
    unload_lora(trained_lora, merge=True).save_pretrained(tmp_path)
    reloaded = PixArtTransformer2DModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(outputs(reloaded), adapted, atol=1e-5, rtol=0)
    assert (tmp_path / WEIGHTS_FILE).is_file()


def test_bad_targets_and_files_are_refused_with_their_names(tmp_path):
    with pytest.raises(ValueError, match=r"\['to_qkv'\] match no linear layer of PixArtTransformer2DModel"):
        add_lora(base(), lora_config(rank=4, alpha=4, target_modules=["to_q", "to_qkv"]))
    with pytest.raises(ValueError, match="holds no LoRA layers"):
        save_lora(base(), tmp_path)
    save_file({"transformer.proj_out.lora_A.weight": torch.zeros(4, 48)}, str(tmp_path / WEIGHT_NAME))
    with pytest.raises(LoraFormatError, match="no 'lora_adapter_metadata' metadata"):
        load_lora(base(), tmp_path)
    with pytest.raises(FileNotFoundError, match="no LoRA weights at"):
        load_lora(base(), tmp_path / "missing")


def test_lora_file_is_a_small_fraction_of_the_transformer(trained_lora, tmp_path):
    lora_bytes = save_lora(trained_lora, tmp_path / "lora").stat().st_size
    base().save_pretrained(tmp_path / "full")
    full_bytes = (tmp_path / "full" / WEIGHTS_FILE).stat().st_size
    adapter = sum(p.numel() for n, p in trained_lora.named_parameters() if "lora_" in n)
    assert adapter * 4 < lora_bytes < adapter * 4 + 16_384  # float32 tensors + header and metadata
    assert lora_bytes < full_bytes / 3

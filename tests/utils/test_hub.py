"""One missing-weights error for every pretrained component: what was tried, why it failed, what to do."""

import pytest

from pixart_lab.models.vae import load_vae
from pixart_lab.utils.hub import MissingWeightsError, hub_offline, is_local, load_pretrained


@pytest.mark.parametrize(
    "name, local",
    [("google/t5-v1_1-xxl", False), ("openai/clip-vit-large-patch14", False), ("/abs/model", True),
     ("./relative", True), ("~/models/vae", True), ("models/vae/sd", True)],
)  # fmt: skip
def test_paths_and_hub_names_are_told_apart(name, local):
    assert is_local(name) is local


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_either_offline_variable_keeps_hub_names_in_the_cache(variable, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert not hub_offline()
    monkeypatch.setenv(variable, "1")
    calls = []
    assert load_pretrained("Thing", "owner/thing", "Fix it.", lambda local_only: calls.append(local_only) or "loaded") == "loaded"
    assert hub_offline() and calls == [True]


def test_a_folder_that_is_there_but_unreadable_keeps_the_librarys_reason(tmp_path):
    (tmp_path / "vae").mkdir()  # no config.json, no weights
    with pytest.raises(MissingWeightsError) as err:
        load_vae(str(tmp_path / "vae"))
    message = str(err.value)
    assert message.startswith(f"VAE '{tmp_path / 'vae'}' is not available: it could not be read (OSError: ")
    assert message.endswith(
        "Check vae.pretrained, or download the weights once where there is network access "
        "(`hf download stabilityai/sd-vae-ft-ema`) and set vae.pretrained to the downloaded folder."
    )
    assert isinstance(err.value.__cause__, OSError)

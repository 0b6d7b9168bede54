"""Stage initialisation and conversion from official checkpoints: ``.pth``, transformer and pipeline folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import PixArtTransformer2DModel

from pixart_lab.models.official_checkpoint import (
    config_from_original,
    load_original_checkpoint,
    original_to_diffusers,
    read_original_checkpoint,
    write_original_checkpoint,
)
from pixart_lab.training.checkpoints import (
    ORIGINAL_BUFFERS_FILE,
    export_original_checkpoint,
    import_original_checkpoint,
    initialise_from,
    resolve_init,
)
from pixart_lab.utils.hub import MissingWeightsError

from original_layout import CAPTION, GRID, WIDTH, pixart_position_table, tiny_original

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def official_pth(tmp_path):
    """A tiny PixArt (no micro-conditions) in the original layout, at 512 px's lewei_scale 1."""
    return write_original_checkpoint(tiny_original(ms=False, seed=3), tmp_path / "PixArt-tiny.pth")


def fresh_model(original, **overrides) -> PixArtTransformer2DModel:
    torch.manual_seed(9)
    return PixArtTransformer2DModel(**{**config_from_original(original), **overrides})


def test_init_from_an_official_pth_loads_every_weight(official_pth, tmp_path):
    assert resolve_init(str(official_pth), tmp_path / "checkpoints") == official_pth
    original = read_original_checkpoint(official_pth)
    model = fresh_model(original)
    report = initialise_from(model, official_pth)
    expected, _ = original_to_diffusers(original)
    assert report["new"] == [] and len(report["loaded"]) == len(expected)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())


def test_init_of_a_micro_conditioned_model_from_a_512_pth_starts_its_new_embedders_as_no_ops(official_pth):
    model = fresh_model(read_original_checkpoint(official_pth), use_additional_conditions=True)
    report = initialise_from(model, official_pth)
    assert len(report["new"]) == 8  # resolution and aspect-ratio embedders, two linears each, weight + bias
    assert torch.count_nonzero(model.adaln_single.emb.resolution_embedder.linear_2.weight) == 0


def test_init_from_a_pipeline_folder_and_from_sharded_weights(official_pth, tmp_path):
    imported = load_original_checkpoint(official_pth).transformer
    imported.save_pretrained(tmp_path / "pipe" / "transformer", max_shard_size="100KB")
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    assert (tmp_path / "pipe" / "transformer" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    folder = resolve_init(str(tmp_path / "pipe"), tmp_path / "checkpoints")
    assert folder == tmp_path / "pipe" / "transformer"
    model = fresh_model(read_original_checkpoint(official_pth))
    initialise_from(model, folder)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in imported.state_dict().items())


def test_a_missing_init_names_what_it_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"init='stage9': no transformer weights \(diffusion_pytorch_model.safetensors, "):
        resolve_init("stage9", tmp_path / "checkpoints")
    with pytest.raises(MissingWeightsError, match=r"PixArt checkpoint '.*nowhere.pth' is not available: no such file"):
        resolve_init(str(tmp_path / "nowhere.pth"), tmp_path / "checkpoints")


def test_a_model_trained_here_exports_to_the_original_layout(official_pth, tmp_path):
    model = load_original_checkpoint(official_pth).transformer
    model.save_pretrained(tmp_path / "run" / "transformer")  # as a stage exports it: no original buffers
    null_caption = torch.randn(120, CAPTION)
    with pytest.raises(ValueError, match=f"has no {ORIGINAL_BUFFERS_FILE}: give the null caption"):
        export_original_checkpoint(tmp_path / "run" / "transformer", tmp_path / "out.pth")
    exported = read_original_checkpoint(export_original_checkpoint(tmp_path / "run" / "transformer", tmp_path / "out.pth", null_caption))
    assert torch.equal(exported["y_embedder.y_embedding"], null_caption)
    torch.testing.assert_close(exported["pos_embed"], pixart_position_table(WIDTH, GRID, 1.0), atol=1e-6, rtol=0)
    original = read_original_checkpoint(official_pth)
    assert all(torch.equal(exported[k], original[k]) for k in original if k not in ("pos_embed", "y_embedder.y_embedding"))


def run_convert(tmp_path, source, out):
    """The convert_checkpoint entry point's work on its composed config (``source=... out=...``)."""
    from hydra import compose, initialize_config_dir

    from pixart_lab.cli.convert_checkpoint import convert

    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("convert_checkpoint", [f"source={source}", f"out={out}",
                                             f"paths.checkpoints_dir={tmp_path}/checkpoints"])  # fmt: skip
    return convert(cfg)


def test_convert_round_trip_pth_to_folder_to_pth_is_exact(official_pth, tmp_path):
    assert run_convert(tmp_path, official_pth, tmp_path / "folder") == tmp_path / "folder"
    assert (tmp_path / "folder" / "config.json").is_file() and (tmp_path / "folder" / ORIGINAL_BUFFERS_FILE).is_file()
    run_convert(tmp_path, tmp_path / "folder", tmp_path / "back.pth")
    original, back = read_original_checkpoint(official_pth), read_original_checkpoint(tmp_path / "back.pth")
    assert set(back) == set(original) and all(torch.equal(back[k], original[k]) for k in original)
    # The imported folder is a plain diffusers model.
    assert PixArtTransformer2DModel.from_pretrained(tmp_path / "folder").config.interpolation_scale == 1.0


def test_convert_exports_a_run_with_its_text_encoders_null_caption(official_pth, tiny_text_encoder, tmp_path):
    run = tmp_path / "checkpoints" / "stage2" / "transformer"
    load_original_checkpoint(official_pth).transformer.save_pretrained(run)
    tiny_text_encoder.save_pretrained(tmp_path / "te")
    from hydra import compose, initialize_config_dir

    from pixart_lab.cli.convert_checkpoint import convert

    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("convert_checkpoint", ["source=stage2", f"out={tmp_path}/stage2.pth",
                                             f"paths.checkpoints_dir={tmp_path}/checkpoints", f"text_encoder.pretrained={tmp_path}/te"])  # fmt: skip
    exported = read_original_checkpoint(convert(cfg))
    emb, mask = tiny_text_encoder.encode([""])  # padded to 120 tokens: "</s>" then pad-token states
    assert int(mask.sum()) == 1 and exported["y_embedder.y_embedding"].shape == (120, tiny_text_encoder.hidden_size)
    torch.testing.assert_close(exported["y_embedder.y_embedding"], emb[0])


def test_import_then_export_in_process_is_exact(tmp_path):
    pth = write_original_checkpoint(tiny_original(ms=True, scale=2.0), tmp_path / "ms.pth")
    folder = import_original_checkpoint(pth, tmp_path / "ms")
    back = read_original_checkpoint(export_original_checkpoint(folder, tmp_path / "ms_back.pth"))
    original = read_original_checkpoint(pth)
    assert set(back) == set(original) and all(torch.equal(back[k], original[k]) for k in original)


def test_an_official_pth_is_evaluated_like_its_converted_folder(official_pth, tiny_vae, tiny_text_encoder, tmp_path):
    """What ``evaluate source=<.pth>`` samples: the .pth resolves and assembles into the same pipeline."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from pixart_lab.diffusion.sampling import generate, load_pipeline, resolve_source

    tiny_vae.save_pretrained(tmp_path / "vae")
    tiny_text_encoder.save_pretrained(tmp_path / "te")
    components = dict(vae={"pretrained": str(tmp_path / "vae")}, text_encoder={"pretrained": str(tmp_path / "te"), "max_length": 120})
    scheduler = instantiate(OmegaConf.load(REPO_ROOT / "conf" / "sampler" / "dpm_solver.yaml").scheduler)
    import_original_checkpoint(official_pth, tmp_path / "converted")
    images = {}
    for name, source in (("pth", official_pth), ("folder", tmp_path / "converted")):
        pipeline = load_pipeline(resolve_source(str(source), tmp_path / "checkpoints"), scheduler, **components)
        images[name] = generate(pipeline, ["a red circle"], steps=3, seed=4, height=64, width=64)
    assert images["pth"].shape == (1, 3, 64, 64) and torch.equal(images["pth"], images["folder"])

"""Edge detectors (the control signal) and the control feature cache joined with the image features."""

import numpy as np
import pytest
import torch

from pixart_lab.data.control_features import ControlFeatureDataModule, ControlFeatureDataset
from pixart_lab.data.edges import CannyEdges, HedEdges, binary_edges, control_image
from pixart_lab.models.hed import HedNetwork


def square_image(top=20, left=24, side=16, noise=0.0, seed=0):
    image = np.full((64, 64, 3), 200, dtype=np.float32)
    image[top : top + side, left : left + side] = (200, 30, 30)
    image += np.random.default_rng(seed).normal(0, noise, image.shape)
    return torch.from_numpy(image.clip(0, 255).astype(np.uint8)).permute(2, 0, 1)[None]


def test_canny_draws_the_outline_of_a_square_and_nothing_else():
    edges = binary_edges(CannyEdges()(square_image()))[0]
    ys, xs = torch.nonzero(edges, as_tuple=True)
    on_outline = ((ys - 20).abs() <= 1) | ((ys - 35).abs() <= 1) | ((xs - 24).abs() <= 1) | ((xs - 39).abs() <= 1)
    assert len(ys) >= 4 * 14 and on_outline.all()
    assert ys.min() >= 19 and ys.max() <= 36 and xs.min() >= 23 and xs.max() <= 40


def test_the_blur_keeps_noise_from_drawing_edges():
    noisy = square_image(noise=12.0)
    with_blur = binary_edges(CannyEdges(blur_kernel=3)(noisy)).float().mean()
    without = binary_edges(CannyEdges(blur_kernel=0)(noisy)).float().mean()
    clean = binary_edges(CannyEdges()(square_image())).float().mean()
    assert without > 3 * clean and with_blur < 1.5 * clean


def test_detectors_refuse_bad_input_and_settings():
    with pytest.raises(ValueError, match="uint8 RGB images N x 3 x H x W; got torch.float32"):
        CannyEdges()(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="low <= high"):
        CannyEdges(low=200, high=100)


def test_hed_without_local_weights_says_where_to_put_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"HED weights not found at .*ControlNetHED.pth: place ControlNetHED.pth"):
        HedEdges(tmp_path)


def test_hed_loads_a_controlnet_hed_state_dict_and_gives_soft_edges(tmp_path):
    torch.manual_seed(0)
    stand_in = HedNetwork()
    assert stand_in.block5.convs[2].weight.shape == (512, 512, 3, 3) and stand_in.norm.shape == (1, 3, 1, 1)
    torch.save(stand_in.state_dict(), tmp_path / "ControlNetHED.pth")
    edges = HedEdges(tmp_path)(square_image())
    assert edges.shape == (1, 1, 64, 64) and edges.dtype == torch.uint8
    with torch.no_grad():
        expected = stand_in(square_image().float())
    torch.testing.assert_close(edges.float() / 255, expected, atol=1 / 255, rtol=0)

    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a ControlNet HED state dict"):
        HedEdges(tmp_path / "other.pth")


def test_control_image_is_white_edges_on_black_in_the_vae_range():
    edges = torch.zeros(1, 1, 4, 4, dtype=torch.uint8)
    edges[0, 0, 1, 2] = 255
    image = control_image(edges)
    assert image.shape == (1, 3, 4, 4) and image[0, :, 1, 2].tolist() == [1.0, 1.0, 1.0]
    assert image.min() == -1 and (image == 1).sum() == 3


def test_control_dataset_joins_control_latents_by_key(tiny_features, tiny_control_features):
    dataset = ControlFeatureDataset(tiny_features / "train", tiny_control_features / "train", scaling_factor=2.0)
    assert len(dataset) == 24 and dataset.keys[0].startswith("train/")
    item = dataset[5]
    shard, row = dataset.control_rows[5]
    assert item["control"].shape == item["latent_mean"].shape == (4, 16, 16)
    torch.testing.assert_close(item["control"], dataset.control[shard][row] * 2.0)

    data = ControlFeatureDataModule(tiny_features, tiny_control_features, train_split="train", val_split="heldout", batch_size=4)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    assert batch["control"].shape == (4, 4, 16, 16) and batch["latent_mean"].shape == (4, 4, 16, 16)


def test_control_dataset_names_missing_keys(tiny_features, tiny_control_features):
    with pytest.raises(ValueError, match=r"no control latent for 24 of 24 examples .* re-run extract_control"):
        ControlFeatureDataset(tiny_features / "train", tiny_control_features / "heldout", scaling_factor=2.0)
    with pytest.raises(FileNotFoundError, match="run the extract_control stage"):
        ControlFeatureDataModule(tiny_features, tiny_features / "nowhere", batch_size=4).make_dataset("train")

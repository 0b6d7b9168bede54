"""clean-fid on image folders (the real-data FID path), checked offline with a stand-in feature extractor."""

import pytest
import torch
from cleanfid.downloads_helper import inception_url

from pixart_lab.evaluation.clip_model import EvaluatorMissingError
from pixart_lab.evaluation.metrics import clean_fid, save_images


def mean_colour(x: torch.Tensor) -> torch.Tensor:
    """Stand-in for Inception: the mean colour of each clean-resized image."""
    return x.mean(dim=(2, 3))


def test_clean_fid_of_folders_is_the_frechet_distance_of_their_features(tmp_path):
    # Solid colours survive clean-fid's resizing, so the features are known exactly: shifting every
    # channel of every image by 30 moves the mean by 30 per channel and keeps the covariance.
    colours = torch.randint(60, 200, (60, 3, 1, 1), generator=torch.Generator().manual_seed(0))
    images = colours.expand(-1, -1, 16, 16).to(torch.uint8)
    x, y = save_images(images, tmp_path / "x"), save_images(images + 30, tmp_path / "y")
    assert clean_fid(x, x, feature_extractor=mean_colour) == pytest.approx(0.0, abs=1e-2)
    assert clean_fid(x, y, feature_extractor=mean_colour) == pytest.approx(3 * 30**2, rel=1e-3)


def test_missing_inception_weights_offline_name_the_file_and_url(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    save_images(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), tmp_path / "x")
    with pytest.raises(EvaluatorMissingError) as err:
        clean_fid(tmp_path / "x", tmp_path / "x", inception_dir=tmp_path / "inception")
    assert str(err.value) == (
        f"clean-fid Inception '{tmp_path / 'inception' / 'inception-2015-12-05.pt'}' is not available: no such file "
        f"or folder. Download {inception_url} into {tmp_path / 'inception'} (eval.fid.inception_dir), or run once "
        "with network access."
    )

"""A workspace of tiny features and models for the command-line training tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def workspace(tiny_features, saved_tiny_models, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("workspace")
    (root / "features").symlink_to(tiny_features)
    (root / "models").symlink_to(saved_tiny_models)
    return root

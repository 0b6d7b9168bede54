"""The dreambooth entry point's config: LoRA by default, full fine-tuning by one choice, smoke sizes."""

from __future__ import annotations

from pathlib import Path

import pytest

CONF = Path(__file__).resolve().parents[2] / "conf"


def compose_config(overrides: list[str]):
    import pixart_lab.config  # noqa: F401  (resolvers)
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(CONF), version_base="1.3"):
        return hydra_compose("dreambooth", overrides=overrides)


def compose(overrides: list[str]) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(compose_config(overrides), resolve=True)


@pytest.mark.parametrize(
    "overrides, expected",
    [([], ["run_name: dreambooth", "_target_: pixart_lab.training.dreambooth.LoraFineTune", "rank: 8", "- to_out.0",
           "out_dir: checkpoints/dreambooth/instance", "metrics: metrics/dreambooth.json", "max_steps: 1000",
           "sectors: 2", "prior_target: base"]),
     (["finetune=full"], ["run_name: dreambooth_full", "_target_: pixart_lab.training.dreambooth.FullFineTune",
                          "metrics: metrics/dreambooth_full.json", "features_dir: checkpoints/dreambooth_full/features"]),
     (["profile=smoke"], ["max_steps: 4", "per_prompt: 1", "images_per_prompt: 1"]),
     (["subject=folder", "subject.root=/my/subject"], ["_target_: pixart_lab.data.readers.FolderReader", "root: /my/subject"])],
)  # fmt: skip
def test_dreambooth_config_composes_each_choice(overrides, expected):
    text = compose(overrides)
    for line in expected:
        assert line in text, line


def test_subject_poses_separate_background_from_position_and_evaluation_poses_are_unseen():
    cfg = compose_config([])
    poses = [(p.row, p.col, p.background) for p in cfg.subject.poses]
    cells_per_background = {b: {(r, c) for r, c, bg in poses if bg == b} for _, _, b in poses}
    assert all(len(cells) >= 2 for cells in cells_per_background.values()), cells_per_background
    assert not {(p.row, p.col, p.background) for p in cfg.evaluation.poses} & set(poses)


def test_class_images_are_unguided_samples_and_evaluation_uses_the_curriculum_sampler():
    cfg = compose_config([])
    assert cfg.class_images.guidance_scale == 1.0
    assert cfg.sampler.guidance_scale == 4.5

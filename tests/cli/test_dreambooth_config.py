"""The dreambooth entry point's config: LoRA by default, full fine-tuning by one choice, smoke sizes."""

from __future__ import annotations

from pathlib import Path

import pytest

CONF = Path(__file__).resolve().parents[2] / "conf"


def compose(overrides: list[str]) -> str:
    import pixart_lab.config  # noqa: F401  (resolvers)
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(CONF), version_base="1.3"):
        return OmegaConf.to_yaml(hydra_compose("dreambooth", overrides=overrides), resolve=True)


@pytest.mark.parametrize(
    "overrides, expected",
    [([], ["run_name: dreambooth", "_target_: pixart_lab.training.dreambooth.LoraFineTune", "rank: 8", "- to_out.0",
           "out_dir: checkpoints/dreambooth/instance", "metrics: metrics/dreambooth.json", "max_steps: 400"]),
     (["finetune=full"], ["run_name: dreambooth_full", "_target_: pixart_lab.training.dreambooth.FullFineTune",
                          "metrics: metrics/dreambooth_full.json", "features_dir: checkpoints/dreambooth_full/features"]),
     (["profile=smoke"], ["max_steps: 4", "per_prompt: 1", "images_per_prompt: 1"]),
     (["subject=folder", "subject.root=/my/subject"], ["_target_: pixart_lab.data.readers.FolderReader", "root: /my/subject"])],
)  # fmt: skip
def test_dreambooth_config_composes_each_choice(overrides, expected):
    text = compose(overrides)
    for line in expected:
        assert line in text, line

import subprocess
import sys
from pathlib import Path

import pytest

from pixart_lab.cli.main import STAGES


def test_unknown_stage_prints_the_stage_list(monkeypatch, capsys):
    from pixart_lab.cli import main as entry

    monkeypatch.setattr(sys, "argv", ["pixart-lab", "nope"])
    with pytest.raises(SystemExit) as e:
        entry.main()
    usage, listed = str(e.value).split("\nstages: ")
    assert usage == "usage: pixart-lab <stage> [key=value ...]"
    assert listed.split(", ") == list(STAGES)
    assert {"corpus", "train_stage", "evaluate", "report", "train_controlnet"} <= set(STAGES)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_composes_its_config(stage):
    out = subprocess.run(
        [sys.executable, "-m", STAGES[stage], "--cfg", "job", "--resolve"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    # train_stage names its run after the stage it trains, evaluate after what it evaluates (default: stage 2)
    expected = {"train_stage": "stage2", "evaluate": "eval_stage2"}.get(stage, stage)
    assert f"task_name: {expected}" in out.stdout


@pytest.mark.parametrize(
    "overrides, expected",
    [(["stage=1_pixel"], ["task_name: stage1", "_target_: diffusers.DiTTransformer2DModel", "init: scratch"]),
     (["stage=2_alignment"], ["_target_: diffusers.PixArtTransformer2DModel", "init: reparam", "caption: dense"]),
     (["stage=2_alignment", "caption=sparse", "init=scratch", "run_name=ablation"],
      ["caption: sparse", "init: scratch", "dirpath: checkpoints/ablation"]),
     (["stage=3_aesthetic"], ["use_additional_conditions: true", "sample_size: 128", "interpolation_scale: 10.666666666666666",
                              "min_aesthetic: 5.0", "train_split: aesthetic"])],
)  # fmt: skip
def test_stage_choices_compose_the_paper_components(overrides, expected):
    import pixart_lab.config  # noqa: F401  (resolvers)
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(Path(__file__).resolve().parents[2] / "conf"), version_base="1.3"):
        text = OmegaConf.to_yaml(compose("train_stage", overrides=overrides), resolve=True)
    for line in expected:
        assert line in text, line


def test_smoke_profile_overrides_sizes():
    out = subprocess.run(
        [sys.executable, "-m", STAGES["train_vae"], "profile=smoke", "--cfg", "job", "--resolve"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "max_steps: 4" in out.stdout and "n_train: 256" in out.stdout


@pytest.mark.parametrize(
    "stage, choice, message",
    [("train_vae", "vae=sd_vae_ft_ema", "train_vae trains the embedded VAE only"),
     ("train_text_encoder", "text_encoder=t5_v1_1_xxl", "train_text_encoder builds the embedded T5 only")],
)  # fmt: skip
def test_training_a_pretrained_choice_is_refused_in_one_line(stage, choice, message, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", STAGES[stage], choice, f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1 and message in out.stderr
